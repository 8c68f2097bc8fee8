//! Engine errors as gRPC statuses: one mapping, so every interface reports a refusal the same
//! way and the CLI can turn the code into a stable exit status.

use tonic::{Code, Status};

use crate::errors::EngineError;

pub(crate) fn from_engine(e: EngineError) -> Status {
    let code = match &e {
        EngineError::Invalid(_) => Code::InvalidArgument,
        EngineError::NotFound { .. } => Code::NotFound,
        EngineError::Conflict { .. } => Code::AlreadyExists,
        EngineError::Guarded { .. }
        | EngineError::Unsupported { .. }
        | EngineError::Reserve { .. }
        | EngineError::StateSpace { .. } => Code::FailedPrecondition,
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
    Status::new(code, bounded(message))
}

/// gRPC carries the message in a header, and clients refuse headers beyond a few kilobytes
/// (the whole reply is lost, not just the text): keep the head and say where the rest is.
fn bounded(message: String) -> String {
    const LIMIT: usize = 2048;
    if message.len() <= LIMIT {
        return message;
    }
    let mut cut = LIMIT;
    while !message.is_char_boundary(cut) {
        cut -= 1;
    }
    format!(
        "{} ... ({} more bytes in the agent's log)",
        &message[..cut],
        message.len() - cut
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_messages_are_cut_to_fit_a_header() {
        let status = from_engine(EngineError::Reserve {
            detail: "x".repeat(10_000),
        });
        assert!(status.message().len() < 2200, "{}", status.message().len());
        assert!(status.message().ends_with("more bytes in the agent's log)"));
    }
}
