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
    /// Only packets of sockets in this cgroup or below it (v2 id, the inode of its directory);
    /// 0: any.
    pub cgroup_id: u64,
    /// Class (major << 16 | minor) that matching packets are sent to in classify mode; the
    /// kernel keeps the minor and takes the major from the filter.
    pub classid: u32,
    /// `STEER_CLASSIFY` or `STEER_MATCH`.
    pub mode: u32,
    /// The depth of `cgroup_id`'s cgroup below the root (`/a/b` is 2): a socket's ancestor at
    /// this depth is compared, so that sockets of cgroups below it (a pod's containers, a
    /// unit's sub-cgroups) match too.
    pub cgroup_level: u32,
    pub _reserved: u32,
    pub filter: PacketFilter,
}

impl SteerConfig {
    pub const EMPTY: Self = Self {
        deadline_ns: 0,
        cgroup_id: 0,
        classid: 0,
        mode: STEER_CLASSIFY,
        cgroup_level: 0,
        _reserved: 0,
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

/// Log2 buckets of the connect-latency histogram: bucket 0 holds connects that took under a
/// microsecond, bucket `i` (1..=30) those of `2^(i-1)` to `2^i - 1` microseconds, and the last
/// one everything from `2^30` microseconds (about 18 minutes) up.
pub const TCP_LATENCY_BUCKETS: usize = 32;

/// `TcpDestKey::family` values: the kernel's address families (`skc_family`).
pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;

/// A TCP destination the connect-health programs count for: remote address and port.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct TcpDestKey {
    /// The address bytes in network order; an IPv4 address fills the first four, the rest are 0.
    pub addr: [u8; 16],
    /// Host byte order.
    pub port: u16,
    /// `AF_INET` or `AF_INET6`.
    pub family: u16,
}

/// What the connect-health programs counted for one destination on one CPU. The agent sums the
/// CPUs with wrapping additions: a failure whose cause the kernel reports only after the socket
/// closed moves from `other_failures` to its cause on whichever CPU the report runs, so one
/// CPU's `other_failures` can wrap below zero while the sum stays exact.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpDestStats {
    /// Connects that reached SYN_SENT.
    pub attempts: u64,
    /// Connects that reached ESTABLISHED.
    pub successes: u64,
    /// Failed: reset by the peer, or ECONNREFUSED (an ICMP port unreachable).
    pub refused: u64,
    /// Failed: the kernel gave up retransmitting the SYN (ETIMEDOUT).
    pub timed_out: u64,
    /// Failed otherwise: another error, or closed by the application while pending.
    pub other_failures: u64,
    /// Segments the kernel retransmitted to the destination (that left the host), SYNs included.
    pub retransmits: u64,
    /// Of those, SYNs of a pending connect.
    pub syn_retransmits: u64,
    /// Sum of the latencies of successful connects, in nanoseconds.
    pub latency_sum_ns: u64,
    /// Successful connects per log2-microsecond latency bucket (see `TCP_LATENCY_BUCKETS`).
    pub latency_us_log2: [u64; TCP_LATENCY_BUCKETS],
}

impl TcpDestStats {
    pub const ZERO: Self = Self {
        attempts: 0,
        successes: 0,
        refused: 0,
        timed_out: 0,
        other_failures: 0,
        retransmits: 0,
        syn_retransmits: 0,
        latency_sum_ns: 0,
        latency_us_log2: [0; TCP_LATENCY_BUCKETS],
    };
}

/// `TcpHealthConfig` offset of a member the running kernel's `struct sock` does not have.
pub const FIELD_ABSENT: u16 = u16::MAX;

/// Bytes of a socket's start (its `struct sock_common`: addresses, ports, family, state) that the
/// connect-health programs copy with one helper call; members beyond are read one by one.
pub const SOCK_HEAD_LEN: usize = 96;

/// Where the connect-health programs find what they read of a socket, in bytes from the start of
/// its `struct sock` (a `struct inet_sock` begins with it), and what the running kernel's
/// tracepoints pass. The layout of `struct sock` moves between kernel versions and builds, so the
/// agent computes the offsets from the kernel's BTF at load time; the programs read each member
/// with `bpf_probe_read_kernel`. This is the single entry of their `TCP_CONFIG` map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpHealthConfig {
    /// `unsigned short` `__sk_common.skc_family`: `AF_INET` or `AF_INET6`.
    pub family: u16,
    /// `u16` `sk_protocol`: the IP protocol.
    pub protocol: u16,
    /// `volatile unsigned char` `__sk_common.skc_state`: a TCP state (`TCP_SYN_SENT` = 2).
    pub state: u16,
    /// `int` `sk_err`: the socket's pending error, a positive errno.
    pub error: u16,
    /// `__be16` `inet_sock.inet_sport` and `__sk_common.skc_dport`, network byte order.
    pub sport: u16,
    pub dport: u16,
    /// `__be32` `inet_sock.inet_saddr` and `__sk_common.skc_daddr`, network order.
    pub saddr: u16,
    pub daddr: u16,
    /// `struct in6_addr` `__sk_common.skc_v6_rcv_saddr` and `skc_v6_daddr`; `FIELD_ABSENT` on a
    /// kernel without IPv6.
    pub saddr_v6: u16,
    pub daddr_v6: u16,
    /// 1 when the kernel sets a failing connect's error (`sk_err`) before it closes the socket
    /// (`tcp_done_with_error`, Linux 6.10 and later): the close alone then says why, and the
    /// reset and error-report tracepoints are not needed.
    pub error_before_close: u16,
    pub _pad: u16,
}

impl TcpHealthConfig {
    pub const ABSENT: Self = Self {
        family: FIELD_ABSENT,
        protocol: FIELD_ABSENT,
        state: FIELD_ABSENT,
        error: FIELD_ABSENT,
        sport: FIELD_ABSENT,
        dport: FIELD_ABSENT,
        saddr: FIELD_ABSENT,
        daddr: FIELD_ABSENT,
        saddr_v6: FIELD_ABSENT,
        daddr_v6: FIELD_ABSENT,
        error_before_close: 0,
        _pad: 0,
    };
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: all of these are `#[repr(C)]`, `Copy`, made only of integers and arrays of
    // integers, and have no padding the compiler could leave uninitialised.
    unsafe impl aya::Pod for super::LossConfig {}
    unsafe impl aya::Pod for super::LossStats {}
    unsafe impl aya::Pod for super::SteerConfig {}
    unsafe impl aya::Pod for super::SteerStats {}
    unsafe impl aya::Pod for super::TcpDestKey {}
    unsafe impl aya::Pod for super::TcpDestStats {}
    unsafe impl aya::Pod for super::TcpHealthConfig {}
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
        assert_eq!(
            core::mem::size_of::<SteerConfig>(),
            8 + 8 + 4 + 4 + 4 + 4 + filter
        );
        assert_eq!(core::mem::size_of::<SteerStats>(), 8);
        assert_eq!(core::mem::size_of::<LossStats>(), 16);
    }

    #[test]
    fn tcp_health_layout_has_no_hidden_padding() {
        assert_eq!(core::mem::size_of::<TcpDestKey>(), 16 + 2 + 2);
        assert_eq!(
            core::mem::size_of::<TcpDestStats>(),
            8 * 8 + TCP_LATENCY_BUCKETS * 8
        );
        assert_eq!(core::mem::size_of::<TcpHealthConfig>(), 12 * 2);
    }
}
