//! Whether each family can work on this host, asked without a request in hand: what
//! `faultline doctor` shows, one line a family. Each family answers in its own module
//! (`impl Ready`); `families!` makes every family answer.

use super::Host;
use crate::kernel::{
    caps::{Capabilities, Capability},
    preflight::{Cap, Privileges},
};

/// What a family may look at to say whether it would work.
pub(crate) struct Preflight<'a> {
    pub(crate) caps: &'a Capabilities,
    /// The privileges of the process that would apply faults (the agent).
    pub(crate) privileges: &'a Privileges,
    pub(crate) host: Host<'a>,
}

/// One family's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Readiness {
    /// Works; the detail says with what, and any limit (one direction only, ...).
    Works(String),
    DoesNot {
        because: String,
        /// What works instead, or how to make this family work.
        instead: String,
    },
}

impl Readiness {
    /// Works when `capability` is available; else does not, because of it.
    pub(crate) fn from_capability(
        name: &str,
        capability: &Capability,
        instead: impl Into<String>,
    ) -> Self {
        if capability.available {
            Readiness::Works(format!("{name}: {}", capability.detail))
        } else {
            Readiness::DoesNot {
                because: format!("{name}: {}", capability.detail),
                instead: instead.into(),
            }
        }
    }

    /// Does not, when the agent lacks one of `caps`; `None` when it holds them all.
    pub(crate) fn lacking(privileges: &Privileges, caps: &[Cap]) -> Option<Self> {
        privileges.lacking(caps).map(|cap| Readiness::DoesNot {
            because: format!("the agent runs without {}", cap.name()),
            instead: format!(
                "grant {} (the shipped systemd unit does), or run the agent as root",
                cap.name()
            ),
        })
    }

    /// Does not, when the agent may not load eBPF programs.
    pub(crate) fn lacking_bpf(privileges: &Privileges) -> Option<Self> {
        (!privileges.may_bpf()).then(|| Readiness::DoesNot {
            because: "the agent runs without CAP_BPF (or CAP_SYS_ADMIN)".to_owned(),
            instead: "grant CAP_BPF (the shipped systemd unit does), or run the agent as root"
                .to_owned(),
        })
    }
}

/// A family's answer to "would you work here?".
pub(crate) trait Ready {
    fn readiness(preflight: &Preflight<'_>) -> Readiness;
}
