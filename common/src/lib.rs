//! The `#[repr(C)]` records that faultline's eBPF programs and the agent exchange through maps.
//! Both sides compile this one definition, so the layout cannot drift between them.
#![no_std]

/// Most destination-port ranges one network fault can name.
pub const MAX_PORT_RANGES: usize = 16;
/// Most IPv4 and, separately, IPv6 networks one network fault can name.
pub const MAX_CIDRS: usize = 8;

/// `PacketFilter::l4` values: the IP protocol numbers, and 0 for any protocol.
pub const L4_ANY: u8 = 0;
pub const L4_TCP: u8 = 6;
pub const L4_UDP: u8 = 17;

/// An inclusive destination-port range, host byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

/// An IPv4 network. Both words hold the address bytes in packet order (`u32::from_ne_bytes` of
/// the octets), so the classifier compares them with the packet's bytes without swapping, and
/// in whole words: byte-by-byte comparisons multiply the paths the verifier has to walk.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cidr4 {
    pub addr: u32,
    pub mask: u32,
}

impl Cidr4 {
    pub fn new(octets: [u8; 4], mask: [u8; 4]) -> Self {
        Self {
            addr: u32::from_ne_bytes(octets),
            mask: u32::from_ne_bytes(mask),
        }
    }
}

/// An IPv6 network, as two words each in packet byte order (see [`Cidr4`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cidr6 {
    pub addr: [u64; 2],
    pub mask: [u64; 2],
}

impl Cidr6 {
    pub fn new(octets: [u8; 16], mask: [u8; 16]) -> Self {
        let words = |b: [u8; 16]| {
            let (hi, lo) = b.split_at(8);
            [
                u64::from_ne_bytes(hi.try_into().unwrap_or([0; 8])),
                u64::from_ne_bytes(lo.try_into().unwrap_or([0; 8])),
            ]
        };
        Self {
            addr: words(octets),
            mask: words(mask),
        }
    }
}

/// Which packets a classifier acts on: the filter part of every classifier's configuration.
///
/// A packet matches when it matches every non-empty list (and the protocol, unless `L4_ANY`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PacketFilter {
    /// Bytes before the IP header: 14 on Ethernet-like devices, 0 on raw IP devices.
    pub l2_len: u16,
    /// 1 when attached on ingress: the remote address is then the packet's source.
    pub ingress: u8,
    /// One of `L4_ANY`, `L4_TCP`, `L4_UDP`.
    pub l4: u8,
    pub n_ports: u8,
    pub n_v4: u8,
    pub n_v6: u8,
    /// Explicit, so that the layout has no padding the compiler could leave uninitialised.
    pub _pad: u8,
    pub ports: [PortRange; MAX_PORT_RANGES],
    pub v4: [Cidr4; MAX_CIDRS],
    pub v6: [Cidr6; MAX_CIDRS],
}

impl PacketFilter {
    /// Matches every IP packet.
    pub const ANY: Self = Self {
        l2_len: 14,
        ingress: 0,
        l4: L4_ANY,
        n_ports: 0,
        n_v4: 0,
        n_v6: 0,
        _pad: 0,
        ports: [PortRange { first: 0, last: 0 }; MAX_PORT_RANGES],
        v4: [Cidr4 { addr: 0, mask: 0 }; MAX_CIDRS],
        v6: [Cidr6 {
            addr: [0; 2],
            mask: [0; 2],
        }; MAX_CIDRS],
    };
}

/// What the loss classifier drops, in the single entry of its `CONFIG` map.
///
/// A packet is dropped when it matches the filter and a fresh random `u32` is below
/// `threshold`; `threshold` is a `u64` so that 100 % (2^32) drops every packet.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LossConfig {
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) value after which nothing is dropped any more,
    /// so the loss ends on time even when the agent that set it is gone.
    pub deadline_ns: u64,
    pub threshold: u64,
    /// 1: drop by consuming the packet (`TC_ACT_STOLEN`), so the sender sees a successful
    /// send, as on a real network; only cls_bpf honours it. 0: `TC_ACT_SHOT`.
    pub consume: u8,
    pub _pad: [u8; 7],
    pub filter: PacketFilter,
}

impl LossConfig {
    pub const EMPTY: Self = Self {
        deadline_ns: 0,
        threshold: 0,
        consume: 0,
        _pad: [0; 7],
        filter: PacketFilter::ANY,
    };
}

/// `SteerConfig::mode` values.
///
/// Classify: a direct-action filter in faultline's htb root; a matching packet gets the fault's
/// class (`TC_ACT_OK` with `tc_classid`), any other goes on (`TC_ACT_UNSPEC`) to the default.
pub const STEER_CLASSIFY: u32 = 0;
/// Match: a classic cls_bpf filter whose action does the work (a mirred redirect to the
/// fault's IFB); the program answers -1 (matched: run the action) or 0 (not matched).
pub const STEER_MATCH: u32 = 1;

/// What the steering classifier does, in the single entry of its `STEER` map: it picks the
/// packets a shaping fault (netem, rate) applies to and sends them where the fault's qdisc is.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SteerConfig {
    /// Past this `bpf_ktime_get_ns()` value nothing is steered: the fault's qdisc sees no more
    /// traffic, even when the agent that set it is gone.
    pub deadline_ns: u64,
    /// Only packets of sockets in this cgroup (v2 id, the inode of its directory); 0: any.
    pub cgroup_id: u64,
    /// Class (major << 16 | minor) that matching packets are sent to in classify mode; the
    /// kernel keeps the minor and takes the major from the filter.
    pub classid: u32,
    /// `STEER_CLASSIFY` or `STEER_MATCH`.
    pub mode: u32,
    pub filter: PacketFilter,
}

impl SteerConfig {
    pub const EMPTY: Self = Self {
        deadline_ns: 0,
        cgroup_id: 0,
        classid: 0,
        mode: STEER_CLASSIFY,
        filter: PacketFilter::ANY,
    };
}

/// Per-CPU counter of the steering classifier, in the single entry of its `STEER_STATS` map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SteerStats {
    /// Packets steered to the fault's qdisc.
    pub steered: u64,
}

/// Per-CPU counters of the loss classifier, in the single entry of its `STATS` map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LossStats {
    /// Packets that matched the fault's filters while it was live.
    pub matched: u64,
    /// Of those, the packets dropped.
    pub dropped: u64,
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: all of these are `#[repr(C)]`, `Copy`, made only of integers and arrays of
    // integers, and have no padding the compiler could leave uninitialised.
    unsafe impl aya::Pod for super::LossConfig {}
    unsafe impl aya::Pod for super::LossStats {}
    unsafe impl aya::Pod for super::SteerConfig {}
    unsafe impl aya::Pod for super::SteerStats {}
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;

    #[test]
    fn layout_has_no_hidden_padding() {
        let filter = 8 + MAX_PORT_RANGES * 4 + MAX_CIDRS * 8 + MAX_CIDRS * 32;
        assert_eq!(core::mem::size_of::<PacketFilter>(), filter);
        assert_eq!(core::mem::size_of::<LossConfig>(), 8 + 8 + 8 + filter);
        assert_eq!(core::mem::size_of::<SteerConfig>(), 8 + 8 + 4 + 4 + filter);
        assert_eq!(core::mem::size_of::<SteerStats>(), 8);
        assert_eq!(core::mem::size_of::<LossStats>(), 16);
    }
}
