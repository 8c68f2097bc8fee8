//! faultline's qdisc trees: the reserved handles that make them recognisable, what an
//! interface's root held before a fault replaced it (and whether it may be replaced at all), and
//! the encoders of the leaf qdiscs' options (`netem`, `tbf`, `htb`, with `dist` for netem's delay
//! tables and `nla` for what they share). [`shaping`] is the adapter that owns the trees and IFB
//! devices on the host; the netlink messages go through `kernel::rtnl`.
//!
//! faultline's qdiscs carry handles from one reserved range (majors `fa00`-`fa0f`), so they are
//! always recognisable as its own. On egress a fault's tree is an htb root `fa00:` with a default
//! class `fa00:1` that leaves traffic alone and a class `fa00:2` whose leaf `fa01:` is the fault's
//! netem or tbf; faultline's steering classifier in the root picks the packets for `fa00:2`. On
//! ingress, the leaf is the root of the fault's own IFB device, to which the steering classifier
//! redirects the targeted packets (see `kernel::bpf`).
//!
//! The options are encoded by hand: `netlink-packet-route` has no option types for netem, tbf or
//! htb. The bytes mirror what iproute2's `tc` (6.1.0, Debian 12) sends, which is what the
//! kernel's parsers have been exercised with for years; the tests compare against payloads
//! captured from real `tc` invocations. Struct layouts come from the uapi `linux/pkt_sched.h`.

use rtnetlink::packet_route::tc::TcHandle;
use serde::{Deserialize, Serialize};

pub(crate) use crate::kernel::rtnl::{handle, show_handle, QdiscRecord};

mod dist;
#[cfg(test)]
mod golden;
pub(crate) mod htb;
pub(crate) mod netem;
mod nla;
pub(crate) mod shaping;
pub(crate) mod tbf;

/// The root of faultline's egress tree.
pub(crate) const ROOT_MAJOR: u16 = 0xfa00;
/// The fault's own qdisc (netem or tbf).
pub(crate) const LEAF_MAJOR: u16 = 0xfa01;
/// Class of the traffic the fault leaves alone (the htb default).
pub(crate) const DEFAULT_MINOR: u16 = 1;
/// Class of the traffic the fault applies to.
pub(crate) const TARGET_MINOR: u16 = 2;
const RESERVED_MAJORS: std::ops::RangeInclusive<u16> = 0xfa00..=0xfa0f;

/// Whether a qdisc handle is in faultline's reserved range.
pub(crate) fn is_ours(handle: u32) -> bool {
    RESERVED_MAJORS.contains(&((handle >> 16) as u16))
}

/// What an interface's root held before a fault replaced it, and so what revert puts back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "prior", rename_all = "snake_case")]
pub(crate) enum Prior {
    /// The kernel's own default (handle 0: noqueue, pfifo_fast, mq with its default children):
    /// deleting faultline's root brings it back.
    KernelDefault { kind: String },
    /// A qdisc somebody installed; it is put back with the same kind, handle and options.
    Installed(QdiscRecord),
}

/// Why an interface's root may not be replaced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// Another fault's tree is there already.
    Ours(QdiscRecord),
    /// Another tool's qdisc, which `force` may replace (it is restored on revert).
    Foreign(QdiscRecord),
    /// A tree faultline could not restore exactly (classes, child qdiscs); never replaced.
    Tree {
        root: QdiscRecord,
        children: Vec<QdiscRecord>,
    },
}

impl Refusal {
    /// What a request that would replace `device`'s root is told.
    pub(crate) fn message(&self, device: &str) -> String {
        match self {
            Refusal::Ours(root) => format!(
                "{device}'s root qdisc is faultline's own ({}) but no active fault holds it: \
             restart the agent to sweep it",
                root.describe()
            ),
            Refusal::Foreign(root) => format!(
            "{device}'s root qdisc {} was installed by another tool; pass --force (force: true) \
             to replace it for the fault's duration (it is restored exactly on revert)",
            root.describe()
        ),
            Refusal::Tree { root, children } => {
                let kids: Vec<String> = children.iter().map(|c| c.describe()).collect();
                format!(
                    "{device}'s root qdisc {} holds a tree (classes or child qdiscs{}{}) that \
                 faultline could not restore exactly, so it does not replace it, even with \
                 force; shape another interface, or remove that tree first",
                    root.describe(),
                    if kids.is_empty() { "" } else { ": " },
                    kids.join(", ")
                )
            }
        }
    }
}

/// Qdiscs whose whole state is the root's own options, so that kind, handle and options restore
/// them exactly. tbf's queue is an invisible default child that it recreates itself.
const RESTORABLE: &[&str] = &[
    "pfifo",
    "bfifo",
    "pfifo_head_drop",
    "pfifo_fast",
    "tbf",
    "sfq",
    "fq_codel",
    "codel",
    "fq",
    "fq_pie",
    "pie",
    "cake",
    "red",
    "choke",
    "netem",
    "noqueue",
];

/// The qdiscs of one interface's egress tree: the root and every visible qdisc below it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Tree {
    pub(crate) root: Option<QdiscRecord>,
    pub(crate) children: Vec<QdiscRecord>,
}

impl Tree {
    /// What replacing the root would have to restore, or why it must not be replaced.
    pub(crate) fn prior(&self, force: bool) -> Result<Prior, Refusal> {
        let Some(root) = &self.root else {
            return Ok(Prior::KernelDefault {
                kind: "noqueue".to_owned(),
            });
        };
        if is_ours(root.handle) {
            return Err(Refusal::Ours(root.clone()));
        }
        // Children the kernel made have handle 0 too; a child with a handle was put there.
        let installed: Vec<QdiscRecord> = self
            .children
            .iter()
            .filter(|c| c.handle != 0)
            .cloned()
            .collect();
        if !installed.is_empty() || (root.handle != 0 && !RESTORABLE.contains(&root.kind.as_str()))
        {
            return Err(Refusal::Tree {
                root: root.clone(),
                children: installed,
            });
        }
        if root.handle == 0 {
            return Ok(Prior::KernelDefault {
                kind: root.kind.clone(),
            });
        }
        if !force {
            return Err(Refusal::Foreign(root.clone()));
        }
        Ok(Prior::Installed(root.clone()))
    }
}

impl Tree {
    /// The egress tree among the qdiscs of one interface: its root and every visible qdisc
    /// below it (the ingress and clsact qdiscs are no part of it).
    pub(crate) fn of(qdiscs: Vec<QdiscRecord>) -> Self {
        let root_id: u32 = TcHandle::ROOT.into();
        let ingress_id: u32 = TcHandle::INGRESS.into();
        let root = qdiscs.iter().find(|q| q.parent == root_id).cloned();
        let children = qdiscs
            .into_iter()
            .filter(|q| q.parent != root_id && q.parent != ingress_id)
            .collect();
        Self { root, children }
    }
}

/// A leaf qdisc: its kind and encoded `TCA_OPTIONS` (see [`netem`], [`tbf`]).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Leaf {
    pub(crate) kind: &'static str,
    pub(crate) options: Vec<u8>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(kind: &str, handle: u32, parent: u32) -> QdiscRecord {
        QdiscRecord {
            kind: kind.to_owned(),
            handle,
            parent,
            options: vec![1, 2, 3],
        }
    }

    const ROOT: u32 = 0xffff_ffff;

    #[test]
    fn kernel_defaults_are_restored_by_deleting() {
        let veth = Tree {
            root: Some(q("noqueue", 0, ROOT)),
            children: vec![],
        };
        assert_eq!(
            veth.prior(false),
            Ok(Prior::KernelDefault {
                kind: "noqueue".to_owned()
            })
        );
        let nic = Tree {
            root: Some(q("mq", 0, ROOT)),
            children: vec![q("fq_codel", 0, 1), q("fq_codel", 0, 2)],
        };
        assert!(matches!(nic.prior(false), Ok(Prior::KernelDefault { .. })));
    }

    #[test]
    fn another_tools_root_needs_force_and_is_recorded_whole() {
        let tbf = Tree {
            root: Some(q("tbf", 0x8001_0000, ROOT)),
            children: vec![],
        };
        assert!(matches!(tbf.prior(false), Err(Refusal::Foreign(_))));
        assert_eq!(
            tbf.prior(true),
            Ok(Prior::Installed(q("tbf", 0x8001_0000, ROOT)))
        );
    }

    #[test]
    fn trees_and_our_own_roots_are_never_replaced() {
        let htb = Tree {
            root: Some(q("htb", 0x0001_0000, ROOT)),
            children: vec![],
        };
        assert!(matches!(htb.prior(true), Err(Refusal::Tree { .. })));
        let changed_mq = Tree {
            root: Some(q("mq", 0, ROOT)),
            children: vec![q("fq", 0x8002_0000, 0x0000_0001)],
        };
        assert!(matches!(changed_mq.prior(true), Err(Refusal::Tree { .. })));
        let ours = Tree {
            root: Some(q("htb", 0xfa00_0000, ROOT)),
            children: vec![],
        };
        assert!(matches!(ours.prior(true), Err(Refusal::Ours(_))));
    }

    #[test]
    fn handles_print_as_tc_prints_them() {
        assert_eq!(show_handle(0xfa00_0000), "fa00:");
        assert_eq!(show_handle(0xfa00_0002), "fa00:2");
        assert!(is_ours(handle(LEAF_MAJOR, 0)));
        assert!(!is_ours(0x8001_0000));
    }
}
