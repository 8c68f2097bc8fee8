//! The packet filter that every classifier applies before it acts: protocol, destination
//! ports and remote networks, read straight from the packet.

use core::mem::size_of;

use aya_ebpf::programs::TcContext;
use faultline_common::{PacketFilter, L4_ANY, L4_TCP, L4_UDP, MAX_CIDRS, MAX_PORT_RANGES};

// The `unrolled!` lists below name every slot: they must change with these.
const _: () = assert!(MAX_PORT_RANGES == 16 && MAX_CIDRS == 8);

/// TC_ACT_UNSPEC in cls_bpf direct-action mode and TCX_NEXT under TCX: "not my business, go on".
pub const NEXT: i32 = -1;

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;

/// `f(0) || f(1) || ...` written out: with constant indices every map access has a constant
/// offset. A loop compiles to a pointer that advances each pass, which older verifiers (Linux
/// 6.1) cannot bound and refuse ("invalid access to map value").
macro_rules! unrolled {
    ($f:ident, $($i:literal),+) => {
        false $(|| $f($i))+
    };
}

/// The `T` at `offset` bytes into the packet (from its link-layer header, in both directions):
/// read in place when it lies in the packet's linear part, as the headers do on nearly every
/// path, and copied by `bpf_skb_load_bytes` only when it does not (a head split across pages).
/// Reading every header through the helper (five calls a packet) made the loss classifier cost
/// 245 ns per untargeted packet; in place, 86 ns (kernel.bpf_stats_enabled, whose own clock
/// reads are in both figures; request/response traffic on a veth, Linux 6.18, 2-core AMD EPYC VM).
///
/// Callers keep `offset` provably small with masks (see `matches`) rather than with a compare
/// here: Linux 6.1's verifier follows a compare's impossible branch with bounds it cannot use,
/// and refuses the program.
#[inline(always)]
fn load<T: Copy>(ctx: &TcContext, offset: usize) -> Option<T> {
    let at = ctx.data() + offset;
    // At least two bytes: for one, LLVM rewrites `at + 1 <= end` as `at < end`, from which the
    // verifier learns no packet range. A byte that ends the packet is copied instead.
    if at + size_of::<T>().max(2) <= ctx.data_end() {
        // SAFETY: inside the packet's linear data, as just checked (and as the verifier checks
        // again); headers need not be aligned there.
        return Some(unsafe { (at as *const T).read_unaligned() });
    }
    ctx.load(offset).ok()
}

/// Whether the packet is one the fault targets; `None` when it is too short to tell.
///
/// Lists are checked entry by entry with constant indices (see `unrolled!`), and every
/// comparison is on whole words: that keeps the number of paths the verifier walks small.
#[inline(always)]
pub fn matches(ctx: &TcContext, filter: &PacketFilter) -> Option<bool> {
    // 0 or 14 (the agent refuses other link types); the mask tells the verifier so, which it
    // needs to accept packet pointers moved by offsets computed from it.
    let l3 = (filter.l2_len as usize) & 0xff;
    let ingress = filter.ingress != 0;
    // Only IP packets are subject to the fault; ARP and other link-layer traffic passes.
    let (proto, l4, first_fragment) = match u16::from_be(ctx.skb.protocol() as u16) {
        ETH_P_IP => {
            let version_ihl: u8 = load(ctx, l3)?;
            if version_ihl >> 4 != 4 {
                return Some(false);
            }
            let addr: u32 = load(ctx, l3 + if ingress { 12 } else { 16 })?;
            if !v4_matches(filter, addr) {
                return Some(false);
            }
            let ihl = ((version_ihl & 0x0f) as usize) * 4;
            let fragment: u16 = u16::from_be(load(ctx, l3 + 6)?);
            let proto: u8 = load(ctx, l3 + 9)?;
            (proto, l3 + ihl, fragment & 0x1fff == 0)
        }
        ETH_P_IPV6 => {
            let addr: [u64; 2] = load(ctx, l3 + if ingress { 8 } else { 24 })?;
            if !v6_matches(filter, addr) {
                return Some(false);
            }
            // The next header is taken as the transport: packets with extension headers
            // do not match a protocol or port filter.
            let proto: u8 = load(ctx, l3 + 6)?;
            (proto, l3 + 40, true)
        }
        _ => return Some(false),
    };
    if filter.l4 != L4_ANY && proto != filter.l4 {
        return Some(false);
    }
    let n_ports = filter.n_ports as usize;
    if n_ports == 0 {
        return Some(true);
    }
    if !first_fragment || (proto != L4_TCP && proto != L4_UDP) {
        return Some(false);
    }
    // TCP and UDP both keep the destination port two bytes into their header.
    let dport = u16::from_be(load::<u16>(ctx, l4 + 2)?);
    let port_in = |i: usize| {
        let range = &filter.ports[i];
        i < n_ports && range.first <= dport && dport <= range.last
    };
    Some(unrolled!(
        port_in, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15
    ))
}

#[inline(always)]
fn v4_matches(filter: &PacketFilter, addr: u32) -> bool {
    let n = filter.n_v4 as usize;
    if n == 0 {
        // With only IPv6 networks named, no IPv4 packet is targeted.
        return filter.n_v6 == 0;
    }
    let net_has = |i: usize| {
        let net = &filter.v4[i];
        i < n && addr & net.mask == net.addr
    };
    unrolled!(net_has, 0, 1, 2, 3, 4, 5, 6, 7)
}

#[inline(always)]
fn v6_matches(filter: &PacketFilter, addr: [u64; 2]) -> bool {
    let n = filter.n_v6 as usize;
    if n == 0 {
        return filter.n_v4 == 0;
    }
    let net_has = |i: usize| {
        let net = &filter.v6[i];
        i < n
            && ((addr[0] & net.mask[0]) ^ net.addr[0]) | ((addr[1] & net.mask[1]) ^ net.addr[1])
                == 0
    };
    unrolled!(net_has, 0, 1, 2, 3, 4, 5, 6, 7)
}
