//! The `#[repr(C)]` records that faultline's eBPF programs and the agent exchange through maps.
//! Both sides compile this one definition, so the layout cannot drift between them.
#![no_std]

/// Most destination-port ranges one loss fault can name.
pub const MAX_PORT_RANGES: usize = 16;
/// Most IPv4 and, separately, IPv6 networks one loss fault can name.
pub const MAX_CIDRS: usize = 8;

/// `LossConfig::l4` values: the IP protocol numbers, and 0 for any protocol.
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

/// What the loss classifier drops, in the single entry of its `CONFIG` map.
///
/// A packet is dropped when it matches every non-empty filter and a fresh random `u32` is
/// below `threshold`; `threshold` is a `u64` so that 100 % (2^32) drops every packet.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LossConfig {
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) value after which nothing is dropped any more,
    /// so the loss ends on time even when the agent that set it is gone.
    pub deadline_ns: u64,
    pub threshold: u64,
    /// Bytes before the IP header: 14 on Ethernet-like devices, 0 on raw IP devices.
    pub l2_len: u16,
    /// 1 when attached on ingress: the remote address is then the packet's source.
    pub ingress: u8,
    /// One of `L4_ANY`, `L4_TCP`, `L4_UDP`.
    pub l4: u8,
    pub n_ports: u8,
    pub n_v4: u8,
    pub n_v6: u8,
    /// 1: drop by consuming the packet (`TC_ACT_STOLEN`), so the sender sees a successful
    /// send, as on a real network; only cls_bpf honours it. 0: `TC_ACT_SHOT`.
    pub consume: u8,
    pub ports: [PortRange; MAX_PORT_RANGES],
    pub v4: [Cidr4; MAX_CIDRS],
    pub v6: [Cidr6; MAX_CIDRS],
}

impl LossConfig {
    pub const EMPTY: Self = Self {
        deadline_ns: 0,
        threshold: 0,
        l2_len: 14,
        ingress: 0,
        l4: L4_ANY,
        n_ports: 0,
        n_v4: 0,
        n_v6: 0,
        consume: 0,
        ports: [PortRange { first: 0, last: 0 }; MAX_PORT_RANGES],
        v4: [Cidr4 { addr: 0, mask: 0 }; MAX_CIDRS],
        v6: [Cidr6 {
            addr: [0; 2],
            mask: [0; 2],
        }; MAX_CIDRS],
    };
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
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;

    #[test]
    fn layout_has_no_hidden_padding() {
        let fields = 8 + 8 + 2 + 1 + 1 + 4 + MAX_PORT_RANGES * 4 + MAX_CIDRS * 8 + MAX_CIDRS * 32;
        assert_eq!(core::mem::size_of::<LossConfig>(), fields);
        assert_eq!(core::mem::size_of::<LossStats>(), 16);
    }
}
