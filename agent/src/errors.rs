//! The agent library's typed errors. Each variant carries what a caller needs to act on it:
//! which field was wrong and what is accepted, which fault holds a contested kernel object,
//! which kernel feature is missing. The gRPC edge maps them to status codes in one place
//! (`api::status`).

use std::path::PathBuf;

use thiserror::Error;

use crate::kernel::netdev::{BadDevice, LinkTypeError};
pub(crate) use crate::kernel::KernelError;

/// A request that is wrong in itself: refused before anything touches the kernel.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
#[error("{field}: {reason}")]
pub(crate) struct InvalidSpec {
    /// The request field, named as the CLI flag / proto field a user wrote (`port`, `cidr`).
    pub(crate) field: String,
    /// What was wrong and what would be accepted.
    pub(crate) reason: String,
}

impl InvalidSpec {
    pub(crate) fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

impl From<BadDevice> for InvalidSpec {
    fn from(e: BadDevice) -> Self {
        InvalidSpec::new("dev", e.0)
    }
}

impl From<LinkTypeError> for InvalidSpec {
    fn from(e: LinkTypeError) -> Self {
        InvalidSpec::new("dev", e.to_string())
    }
}

#[derive(Debug, Error)]
pub(crate) enum JournalError {
    #[error("cannot create the journal directory {path}: {source}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write journal entry {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot remove journal entry {path}: {source}")]
    Remove {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read the journal directory {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot encode journal entry for fault {id}: {source}")]
    Encode {
        id: String,
        source: serde_json::Error,
    },
}

#[derive(Debug, Error)]
pub(crate) enum EngineError {
    #[error(transparent)]
    Invalid(#[from] InvalidSpec),

    #[error("no fault with id {id:?} (faultline ls lists the faults)")]
    NotFound { id: String },

    #[error("conflicts with fault {other}: both need {object}; revert {other} first")]
    Conflict { other: String, object: String },

    #[error(
        "refused by the safety guard: the fault would cut {what}; narrow its target, or pass \
         --force (force: true) if that is what you want"
    )]
    Guarded { what: String },

    #[error("{feature} is not available on this host: {detail}")]
    Unsupported { feature: String, detail: String },

    #[error(transparent)]
    Journal(#[from] JournalError),

    #[error("applying fault {id} failed: {source}")]
    Apply {
        id: String,
        #[source]
        source: KernelError,
    },

    #[error("reverting fault {id} failed (it stays in the journal and is retried at start-up): {source}")]
    Revert {
        id: String,
        #[source]
        source: KernelError,
    },

    #[error("refused to keep the host safe: {detail}")]
    Reserve { detail: String },

    #[error(
        "refused: {detail}; active faults are still reverted on time. Free space there (or \
         lower the reserve) to apply again"
    )]
    StateSpace { detail: String },

    #[error("the agent is shutting down and takes no new faults")]
    ShuttingDown,
}
