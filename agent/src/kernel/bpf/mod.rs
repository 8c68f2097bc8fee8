//! faultline's eBPF tc classifiers (`faultline_loss` and `faultline_steer`, from agent-ebpf/):
//! the object they come in ([`object`]), the configuration each fault writes into them
//! ([`config`]), where a fault's pins live and what their names record ([`pins`]), and the
//! adapter that attaches, detaches and sweeps them ([`classifier`]).
//!
//! Two attach paths, chosen per direction:
//! - egress: always a cls_bpf filter in a clsact qdisc (netlink, direct action). A dropped packet
//!   is consumed (`TC_ACT_STOLEN`) and its sender is told the send succeeded, as with netem or a
//!   real network. Under TCX a drop can only be `TCX_DROP`, which hands the sender ENOBUFS: TCP
//!   would retry at once instead of losing the segment, and ping would resend.
//! - ingress: a TCX link on kernels that have TCX (6.6+), cls_bpf in clsact otherwise; the
//!   receiver never learns of a drop either way.
//!
//! Every fault's objects are pinned under `<pin dir>/<fault id>/` on the BPF filesystem: the
//! `CONFIG` and `STATS` maps, and the TCX link, whose pin alone keeps the program attached after
//! the agent exits or dies; a cls_bpf filter is held by its qdisc and the program is pinned only
//! to record that a filter must be removed. Pin names carry the interface and
//! direction (`tcx-egress-eth0`, `cls-ingress-eth0`), so a start-up sweep can undo an attachment
//! whose journal entry was lost. Filters and clsact qdiscs are added and removed through
//! `kernel::rtnl`; only the programs' loading and TCX links go through the eBPF library.

use std::{fmt, io, path::PathBuf};

use aya::{
    maps::MapError,
    pin::PinError,
    programs::{ProgramError, TcAttachType},
    EbpfError,
};
use thiserror::Error;

use crate::kernel::{netdev::LinkTypeError, rtnl::RtnlError};

pub(crate) mod classifier;
pub(crate) mod config;
pub(crate) mod object;
mod pins;
mod stats;

pub(crate) use classifier::Classifiers;
pub(crate) use object::{verifier_tail, EBPF_OBJECT};

#[derive(Debug, Error)]
pub(crate) enum BpfError {
    #[error("cannot read CLOCK_MONOTONIC: {0}")]
    Clock(#[source] nix::Error),
    #[error("cannot load faultline's eBPF object: {0}")]
    Load(#[source] EbpfError),
    #[error("faultline's eBPF object lacks {0} (the agent binary is broken)")]
    Missing(&'static str),
    #[error("the kernel refused a faultline eBPF program: {0}")]
    Program(#[source] ProgramError),
    #[error("the kernel's verifier refused a faultline eBPF program ({error}); it ended with: {tail} (the whole log is in the agent's log)")]
    Verifier { error: io::Error, tail: String },
    #[error("cannot attach the classifier to {device} ({direction}): {source}")]
    Attach {
        device: String,
        direction: TcDirection,
        #[source]
        source: ProgramError,
    },
    #[error("cannot write the classifier's configuration map: {0}")]
    Map(#[source] MapError),
    #[error("cannot read the classifier's counters at {path}: {source}")]
    Stats {
        path: PathBuf,
        #[source]
        source: MapError,
    },
    #[error("cannot pin {path}: {source}")]
    Pin {
        path: PathBuf,
        #[source]
        source: PinError,
    },
    #[error("cannot take hold of the TCX link {path}: {source}")]
    PinnedLink {
        path: PathBuf,
        #[source]
        source: aya::programs::links::LinkError,
    },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} is not on a BPF filesystem (mount -t bpf bpf /sys/fs/bpf, or choose a pin directory under it)")]
    NotBpfFs { path: PathBuf },
    #[error(transparent)]
    Rtnl(#[from] Box<RtnlError>),
    #[error(transparent)]
    LinkType(#[from] LinkTypeError),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TcDirection {
    Ingress,
    Egress,
}

impl TcDirection {
    pub(crate) fn attach_type(self) -> TcAttachType {
        match self {
            TcDirection::Ingress => TcAttachType::Ingress,
            TcDirection::Egress => TcAttachType::Egress,
        }
    }

    pub(crate) fn parse(text: &str) -> Option<Self> {
        match text {
            "ingress" => Some(Self::Ingress),
            "egress" => Some(Self::Egress),
            _ => None,
        }
    }
}

impl fmt::Display for TcDirection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TcDirection::Ingress => "ingress",
            TcDirection::Egress => "egress",
        })
    }
}

impl From<RtnlError> for BpfError {
    fn from(e: RtnlError) -> Self {
        BpfError::Rtnl(Box::new(e))
    }
}

impl TcDirection {
    /// The clsact hook of this direction, as a filter's parent.
    pub(crate) fn clsact_parent(self) -> u32 {
        match self {
            TcDirection::Ingress => crate::kernel::rtnl::CLSACT_INGRESS,
            TcDirection::Egress => crate::kernel::rtnl::CLSACT_EGRESS,
        }
    }
}
