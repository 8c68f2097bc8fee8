//! faultline's qdiscs: the reserved handles that make them recognisable, what an interface's root
//! held before an older agent replaced it (see [`Prior`]), and the encoders of the leaf qdiscs'
//! options (`netem`, `tbf`, with `dist` for netem's delay tables and `nla` for what they share).
//! [`shaping`] is the adapter that owns the IFB devices and their qdiscs on the host; the netlink
//! messages go through `kernel::rtnl`.
//!
//! A shaping fault's qdisc (`fa01:`, its netem or tbf) is the root of the fault's own IFB device,
//! in either direction; faultline's steering classifier, in the interface's clsact hook,
//! redirects the targeted packets to that IFB (see `kernel::bpf`), and leaves the interface's
//! own root qdisc alone. Agents before this design replaced an interface's egress root with an
//! htb `fa00:`; the records of what those replaced are still read, so that such a fault is put
//! back exactly after an upgrade.
//!
//! The options are encoded by hand: `netlink-packet-route` has no option types for netem or
//! tbf. The bytes mirror what iproute2's `tc` (6.1.0, Debian 12) sends, which is what the
//! kernel's parsers have been exercised with for years; the tests compare against payloads
//! captured from real `tc` invocations. Struct layouts come from the uapi `linux/pkt_sched.h`.

use rtnetlink::packet_route::tc::TcHandle;
use serde::{Deserialize, Serialize};

pub(crate) use crate::kernel::rtnl::{handle, show_handle, QdiscRecord};

mod dist;
#[cfg(test)]
mod golden;
pub(crate) mod netem;
mod nla;
pub(crate) mod shaping;
pub(crate) mod tbf;

/// The fault's own qdisc (netem or tbf), the root of its IFB.
pub(crate) const LEAF_MAJOR: u16 = 0xfa01;
const RESERVED_MAJORS: std::ops::RangeInclusive<u16> = 0xfa00..=0xfa0f;

/// Whether a qdisc handle is in faultline's reserved range.
pub(crate) fn is_ours(handle: u32) -> bool {
    RESERVED_MAJORS.contains(&((handle >> 16) as u16))
}

/// What an interface's root held before a fault of an older agent replaced it with its htb, and
/// so what revert puts back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "prior", rename_all = "snake_case")]
pub(crate) enum Prior {
    /// The kernel's own default (handle 0: noqueue, pfifo_fast, mq with its default children):
    /// deleting faultline's root brings it back.
    KernelDefault { kind: String },
    /// A qdisc somebody installed; it is put back with the same kind, handle and options.
    Installed(QdiscRecord),
}

/// The root of an interface's egress tree among its qdiscs (the ingress and clsact qdiscs are
/// no part of it).
pub(crate) fn egress_root(qdiscs: Vec<QdiscRecord>) -> Option<QdiscRecord> {
    let root_id: u32 = TcHandle::ROOT.into();
    qdiscs.into_iter().find(|q| q.parent == root_id)
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
    fn the_egress_root_is_not_a_clsact_hook_nor_a_child() {
        let qdiscs = vec![
            q("clsact", 0xffff_0000, 0xffff_fff1),
            q("fq_codel", 0, 1),
            q("mq", 0, ROOT),
        ];
        assert_eq!(egress_root(qdiscs), Some(q("mq", 0, ROOT)));
        assert_eq!(
            egress_root(vec![q("clsact", 0xffff_0000, 0xffff_fff1)]),
            None
        );
    }

    #[test]
    fn handles_print_as_tc_prints_them() {
        assert_eq!(show_handle(0xfa00_0000), "fa00:");
        assert_eq!(show_handle(0xfa00_0002), "fa00:2");
        assert!(is_ours(handle(LEAF_MAJOR, 0)));
        assert!(!is_ours(0x8001_0000));
    }
}
