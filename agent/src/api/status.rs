//! Engine errors as gRPC statuses: one mapping, so every interface reports a refusal the same
//! way and the CLI can turn the code into a stable exit status.

use tonic::{Code, Status};

use crate::errors::EngineError;

pub fn from_engine(e: EngineError) -> Status {
    let code = match &e {
        EngineError::Invalid(_) => Code::InvalidArgument,
        EngineError::NotFound { .. } => Code::NotFound,
        EngineError::Conflict { .. } => Code::AlreadyExists,
        EngineError::Guarded { .. }
        | EngineError::Unsupported { .. }
        | EngineError::Reserve { .. } => Code::FailedPrecondition,
        EngineError::ShuttingDown => Code::Unavailable,
        EngineError::Journal(_) | EngineError::Apply { .. } | EngineError::Revert { .. } => {
            Code::Internal
        }
    };
    // `{:#}`-style chain: the kernel's own words are what an operator needs on a failure.
    let mut message = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        let text = s.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = s.source();
    }
    Status::new(code, message)
}
