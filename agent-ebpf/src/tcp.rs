//! TCP connect health: per destination (remote address and port), the connects started,
//! established and failed by cause, their latency as a log2 histogram, and retransmits. Four
//! raw tracepoints feed per-CPU counters in `TCP_DESTS`; nothing goes to userspace per event.
//!
//! A connect is pending from CLOSE->SYN_SENT (`TCP_PENDING`, keyed by the socket) until
//! SYN_SENT->ESTABLISHED (a success, with its latency) or SYN_SENT->CLOSE (a failure). The
//! failure's cause:
//! - refused: tcp_receive_reset saw a reset on the pending socket before it closed, or the
//!   kernel reported ECONNREFUSED (an ICMP port unreachable);
//! - timed out: the kernel reported ETIMEDOUT (it gave up retransmitting the SYN);
//! - other: another error, or none (the application closed the socket, or the connect failed
//!   before it sent anything).
//!
//! Since Linux 6.10 (`tcp_done_with_error`; the agent looks for it in the kernel's BTF and says
//! so in `error_before_close`) the kernel sets the socket's error before it closes a failing
//! connect, for a reset, a timeout and an ICMP error alike, and wakes the application only after:
//! the close reads `sk_err` and knows the cause, and the agent attaches neither the reset nor the
//! error-report program (three of a loopback connect's nine tracepoint hits). On older kernels:
//!
//! inet_sk_error_report names the connection only by its addresses and ports, and fires before
//! the close on some kernels and paths (Linux 6.1's timeouts and ICMP errors) and after it on
//! others (since 6.10, `tcp_done_with_error`). So an error seen while the connect is pending is
//! kept by 4-tuple (`TCP_ERRORS`) for the close to find, and a close without a known cause is
//! counted as other at once and remembered (`TCP_CLOSED`), so that a report right after it moves
//! the count to the reported cause.
//!
//! Raw tracepoints rather than classic ones: a classic tracepoint builds its whole record (the
//! addresses of both ends, copied and v4-mapped) for every hit before the program can look at
//! it, and the four fire about nine times per loopback connect, accept and close. A raw
//! tracepoint hands the program the tracepoint's arguments as they are (inet_sock_set_state:
//! the socket, old and new state; tcp_receive_reset and inet_sk_error_report: the socket;
//! tcp_retransmit_skb: the socket, the segment and, since Linux 6.13, the error), so a program
//! returns after two register reads for the transitions it does not count, and reads the socket
//! with `bpf_probe_read_kernel` only for those it does: its first bytes (`struct sock_common`:
//! addresses, ports, family, state) in one copy, the few members beyond one by one. A connect's
//! start reads the socket; its success reads nothing more (`TCP_PENDING` keeps the destination).
//! The offsets come from the agent (`TCP_CONFIG`), which computes them from the running kernel's
//! BTF: they differ between kernel versions and builds.
//!
//! Measured on a loopback connect/accept/close loop (`connect_rate_with_and_without_programs` in
//! the agent's monitor::tcp), this halved the programs' cost: about 4 % fewer connects per second
//! with them attached, against 8 to 10 % with the classic tracepoints. What remains is the
//! tracepoints' dispatch and the map updates each connect needs.
//!
//! The maps are declared with one entry so that the tc faults, which load this same object, do
//! not pay for them; the agent sizes them when it loads the object for connect health.

use core::mem::size_of;

use aya_ebpf::{
    helpers::{bpf_ktime_get_ns, bpf_probe_read_kernel, bpf_probe_read_kernel_buf},
    macros::{map, raw_tracepoint},
    maps::{Array, LruHashMap, LruPerCpuHashMap, PerCpuArray},
    programs::RawTracePointContext,
};
use faultline_common::{
    TcpDestKey, TcpDestStats, TcpHealthConfig, AF_INET, AF_INET6, FIELD_ABSENT, L4_TCP,
    SOCK_HEAD_LEN, TCP_LATENCY_BUCKETS,
};

const TCP_ESTABLISHED: i32 = 1;
const TCP_SYN_SENT: i32 = 2;
const TCP_CLOSE: i32 = 7;

const ETIMEDOUT: i32 = 110;
const ECONNREFUSED: i32 = 111;

/// BPF_NOEXIST: insert only if absent, so that two CPUs creating the same destination's entry
/// at once do not wipe each other's first counts.
const NOEXIST: u64 = 1;

/// How long after a cause-less close an error report still explains it. The report that follows
/// a close comes from the same kernel function, microseconds later; the bound only keeps a stale
/// entry from explaining an unrelated later report on the same 4-tuple.
const REPORT_WINDOW_NS: u64 = 100_000_000;

#[map]
static TCP_CONFIG: Array<TcpHealthConfig> = Array::with_max_entries(1, 0);

/// Where each program copies the start of the socket it looks at (see `Sock`).
#[map]
static TCP_SOCK_HEAD: PerCpuArray<[u8; SOCK_HEAD_LEN]> = PerCpuArray::with_max_entries(1, 0);

/// The counters, per destination and CPU; least recently used destinations make room.
#[map]
static TCP_DESTS: LruPerCpuHashMap<TcpDestKey, TcpDestStats> =
    LruPerCpuHashMap::with_max_entries(1, 0);

/// Never written: the zeroed value a new destination starts from. A map value rather than a
/// stack copy, which would take most of the program's 512-byte stack.
#[map]
static TCP_ZERO: Array<TcpDestStats> = Array::with_max_entries(1, 0);

/// Pending connects by socket address.
#[map]
static TCP_PENDING: LruHashMap<u64, Pending> = LruHashMap::with_max_entries(1, 0);

/// The last error the kernel reported on each 4-tuple, for the close that follows it.
#[map]
static TCP_ERRORS: LruHashMap<ConnTuple, Reported> = LruHashMap::with_max_entries(1, 0);

/// Connects that just failed, for an error report that follows the close.
#[map]
static TCP_CLOSED: LruHashMap<ConnTuple, Closed> = LruHashMap::with_max_entries(1, 0);

#[repr(C)]
#[derive(Clone, Copy)]
struct Pending {
    start_ns: u64,
    /// 1 once a reset arrived on the pending socket.
    reset: u32,
    /// Where the connect goes, kept so that its success costs no read of the socket.
    dest: TcpDestKey,
}

/// A connection as inet_sk_error_report and inet_sock_set_state both name it.
#[repr(C)]
#[derive(Clone, Copy)]
struct ConnTuple {
    saddr: [u8; 16],
    daddr: [u8; 16],
    sport: u16,
    dport: u16,
    family: u16,
    _pad: u16,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct Reported {
    at_ns: u64,
    error: i32,
    _pad: u32,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct Closed {
    at_ns: u64,
    /// 1 when the failure was counted as other for want of a cause, which a report may correct.
    provisional: u32,
    _pad: u32,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Cause {
    Refused,
    TimedOut,
    Other,
}

impl Cause {
    fn of(error: i32) -> Self {
        match error {
            ECONNREFUSED => Cause::Refused,
            ETIMEDOUT => Cause::TimedOut,
            _ => Cause::Other,
        }
    }
}

/// sock:inet_sock_set_state(sk, oldstate, newstate): connects starting, succeeding and failing.
#[raw_tracepoint(tracepoint = "inet_sock_set_state")]
pub fn faultline_state(ctx: RawTracePointContext) -> u32 {
    let _ = on_set_state(&ctx);
    0
}

/// tcp:tcp_receive_reset(sk): a reset on a pending connect makes it refused.
#[raw_tracepoint(tracepoint = "tcp_receive_reset")]
pub fn faultline_reset(ctx: RawTracePointContext) -> u32 {
    let _ = on_receive_reset(&ctx);
    0
}

/// sock:inet_sk_error_report(sk): the error a failing connect ends with.
#[raw_tracepoint(tracepoint = "inet_sk_error_report")]
pub fn faultline_error(ctx: RawTracePointContext) -> u32 {
    let _ = on_error_report(&ctx);
    0
}

/// tcp:tcp_retransmit_skb(sk, skb) before Linux 6.13: retransmits to destinations connected to
/// since the agent started.
#[raw_tracepoint(tracepoint = "tcp_retransmit_skb")]
pub fn faultline_retx(ctx: RawTracePointContext) -> u32 {
    let _ = on_retransmit(&ctx, false);
    0
}

/// tcp:tcp_retransmit_skb(sk, skb, err) since Linux 6.13. A program of its own: the kernel
/// refuses to attach a raw tracepoint program that reads past the tracepoint's last argument,
/// even on a path that never runs, so the agent attaches the one that fits the kernel.
#[raw_tracepoint(tracepoint = "tcp_retransmit_skb")]
pub fn faultline_retx_err(ctx: RawTracePointContext) -> u32 {
    let _ = on_retransmit(&ctx, true);
    0
}

#[inline(always)]
fn on_set_state(ctx: &RawTracePointContext) -> Option<()> {
    // States first, from the arguments themselves: most transitions on a busy host are not
    // about connects, and this is all they cost. The ints arrive zero-extended.
    let old = ctx.arg::<u64>(1) as i32;
    let new = ctx.arg::<u64>(2) as i32;
    let starts = old == TCP_CLOSE && new == TCP_SYN_SENT;
    let ends = old == TCP_SYN_SENT && (new == TCP_ESTABLISHED || new == TCP_CLOSE);
    if !starts && !ends {
        return None;
    }
    let sk = ctx.arg::<u64>(0);
    if ends {
        return on_connect_end(sk, new == TCP_ESTABLISHED);
    }
    let fields = TCP_CONFIG.get(0)?;
    // The tracepoint fires for SCTP and MPTCP sockets too.
    if read_member::<u16>(sk, fields.protocol)? != L4_TCP as u16 {
        return None;
    }
    // The source port may still be 0 here (the kernel picks it right after), so the socket, not
    // the 4-tuple, names the pending connect; the destination is already set.
    let dest = dest_key(&Sock::load(sk)?, fields)?;
    let pending = Pending {
        start_ns: now_ns(),
        reset: 0,
        dest,
    };
    let _ = TCP_PENDING.insert(sk, pending, 0);
    let stats = stats_for(&dest)?;
    // SAFETY: the per-CPU value belongs to this CPU while the program runs.
    unsafe { (*stats).attempts += 1 };
    Some(())
}

/// A pending connect on `sk` established, or failed.
#[inline(always)]
fn on_connect_end(sk: u64, established: bool) -> Option<()> {
    // Only the TCP connects seen starting are pending: the lookup is the filter, and it brings
    // the destination along.
    // SAFETY: copied out at once; the entry is removed right after.
    let pending = *unsafe { TCP_PENDING.get(sk) }?;
    let _ = TCP_PENDING.remove(sk);
    let now = now_ns();
    if established {
        let latency_ns = now.saturating_sub(pending.start_ns);
        let bucket = latency_bucket(latency_ns / 1_000);
        let stats = stats_for(&pending.dest)?;
        // SAFETY: the per-CPU value belongs to this CPU while the program runs; `bucket` is
        // below TCP_LATENCY_BUCKETS.
        unsafe {
            (*stats).successes += 1;
            (*stats).latency_sum_ns += latency_ns;
            (*stats).latency_us_log2[bucket] += 1;
        }
        return Some(());
    }
    let fields = TCP_CONFIG.get(0)?;
    if fields.error_before_close != 0 {
        // The kernel set the socket's error (or none, when the application closed it) before
        // closing it: the one read this failure needs.
        let cause = Cause::of(read_member::<i32>(sk, fields.error).unwrap_or(0));
        count_failure(&pending.dest, Some(cause))?;
        return Some(());
    }
    let sock = Sock::load(sk)?;
    let tuple = conn_tuple(&sock, fields)?;
    let cause = if pending.reset != 0 {
        Some(Cause::Refused)
    } else {
        recorded_error(&tuple, pending.start_ns).map(Cause::of)
    };
    let closed = Closed {
        at_ns: now,
        provisional: u32::from(cause.is_none()),
        _pad: 0,
    };
    // Written for every failure: an entry left by an earlier connect on the same 4-tuple must not
    // take the report that follows this one.
    let _ = TCP_CLOSED.insert(tuple, closed, 0);
    count_failure(&tuple_dest(&tuple), cause)
}

/// Counts a failed connect to `dest` under its cause, as other when it is not known (yet).
#[inline(always)]
fn count_failure(dest: &TcpDestKey, cause: Option<Cause>) -> Option<()> {
    let stats = stats_for(dest)?;
    // SAFETY: the per-CPU value belongs to this CPU while the program runs.
    unsafe {
        match cause {
            Some(Cause::Refused) => (*stats).refused += 1,
            Some(Cause::TimedOut) => (*stats).timed_out += 1,
            Some(Cause::Other) | None => (*stats).other_failures += 1,
        }
    }
    Some(())
}

/// The error reported on `tuple` since the connect started, taken out of `TCP_ERRORS`.
#[inline(always)]
fn recorded_error(tuple: &ConnTuple, since_ns: u64) -> Option<i32> {
    // SAFETY: as for `TCP_PENDING` above.
    let reported = *unsafe { TCP_ERRORS.get(tuple) }?;
    let _ = TCP_ERRORS.remove(tuple);
    (reported.at_ns >= since_ns).then_some(reported.error)
}

#[inline(always)]
fn on_receive_reset(ctx: &RawTracePointContext) -> Option<()> {
    let sk = ctx.arg::<u64>(0);
    let pending = TCP_PENDING.get_ptr_mut(sk)?;
    // SAFETY: a map value; a racing writer could only set the same flag.
    unsafe { (*pending).reset = 1 };
    Some(())
}

#[inline(always)]
fn on_error_report(ctx: &RawTracePointContext) -> Option<()> {
    let sk = ctx.arg::<u64>(0);
    let fields = TCP_CONFIG.get(0)?;
    let error: i32 = read_member(sk, fields.error)?;
    // Only the errors that name a cause: any other makes the failure "other", which it is
    // without a report too. That skips the common reports (resets of established connections)
    // and those without an error (an ICMP error queued for IP_RECVERR readers, reported before
    // the socket error is set).
    let cause = Cause::of(error);
    if cause == Cause::Other {
        return None;
    }
    if read_member::<u16>(sk, fields.protocol)? != L4_TCP as u16 {
        return None;
    }
    let sk = Sock::load(sk)?;
    let tuple = conn_tuple(&sk, fields)?;
    let now = now_ns();
    // SAFETY: copied out at once; the entry is removed right after.
    if let Some(closed) = unsafe { TCP_CLOSED.get(tuple) }.copied() {
        let _ = TCP_CLOSED.remove(tuple);
        if now.saturating_sub(closed.at_ns) < REPORT_WINDOW_NS {
            if closed.provisional != 0 {
                reclassify(&tuple_dest(&tuple), cause);
            }
            return Some(());
        }
    }
    let reported = Reported {
        at_ns: now,
        error,
        _pad: 0,
    };
    let _ = TCP_ERRORS.insert(tuple, reported, 0);
    Some(())
}

/// Moves one failure counted as other to `cause`. The decrement may land on another CPU than the
/// increment did: the agent's wrapping sum over CPUs is exact all the same.
#[inline(always)]
fn reclassify(dest: &TcpDestKey, cause: Cause) {
    let Some(stats) = TCP_DESTS.get_ptr_mut(dest) else {
        return;
    };
    // SAFETY: the per-CPU value belongs to this CPU while the program runs.
    unsafe {
        (*stats).other_failures = (*stats).other_failures.wrapping_sub(1);
        match cause {
            Cause::Refused => (*stats).refused += 1,
            Cause::TimedOut => (*stats).timed_out += 1,
            Cause::Other => (*stats).other_failures += 1,
        }
    }
}

#[inline(always)]
fn on_retransmit(ctx: &RawTracePointContext, has_error: bool) -> Option<()> {
    // Since Linux 6.13 the tracepoint also fires for retransmits that failed to leave (a local
    // firewall drop, no route); older kernels trace only those sent. Counting the sent ones
    // keeps the numbers the same on both.
    if has_error && ctx.arg::<u64>(2) as i32 != 0 {
        return None;
    }
    let fields = TCP_CONFIG.get(0)?;
    let sk = Sock::load(ctx.arg::<u64>(0))?;
    let dest = dest_key(&sk, fields)?;
    // Only destinations already counted: retransmits on accepted connections would otherwise
    // fill the map with clients' ephemeral ports.
    let stats = TCP_DESTS.get_ptr_mut(dest)?;
    let syn = i32::from(sk.get::<u8>(fields.state)?) == TCP_SYN_SENT;
    // SAFETY: the per-CPU value belongs to this CPU while the program runs.
    unsafe {
        (*stats).retransmits += 1;
        if syn {
            (*stats).syn_retransmits += 1;
        }
    }
    Some(())
}

/// This CPU's counters for `dest`, created zeroed the first time.
#[inline(always)]
fn stats_for(dest: &TcpDestKey) -> Option<*mut TcpDestStats> {
    if let Some(stats) = TCP_DESTS.get_ptr_mut(dest) {
        return Some(stats);
    }
    let zero = TCP_ZERO.get(0)?;
    let _ = TCP_DESTS.insert(dest, zero, NOEXIST);
    TCP_DESTS.get_ptr_mut(dest)
}

/// The histogram bucket of a latency in microseconds: the bit length of `us`, capped (see
/// `TCP_LATENCY_BUCKETS`). Binary search with constant shifts: no loop for the verifier.
#[inline(always)]
fn latency_bucket(us: u64) -> usize {
    let mut v = us;
    let mut bits = 0usize;
    if v >= 1 << 32 {
        v >>= 32;
        bits += 32;
    }
    if v >= 1 << 16 {
        v >>= 16;
        bits += 16;
    }
    if v >= 1 << 8 {
        v >>= 8;
        bits += 8;
    }
    if v >= 1 << 4 {
        v >>= 4;
        bits += 4;
    }
    if v >= 1 << 2 {
        v >>= 2;
        bits += 2;
    }
    if v >= 1 << 1 {
        v >>= 1;
        bits += 1;
    }
    bits += v as usize;
    // The mask keeps the index provably in bounds for the verifier.
    bits.min(TCP_LATENCY_BUCKETS - 1) & (TCP_LATENCY_BUCKETS - 1)
}

/// The remote end of the socket's connection.
#[inline(always)]
fn dest_key(sk: &Sock, fields: &TcpHealthConfig) -> Option<TcpDestKey> {
    let family: u16 = sk.get(fields.family)?;
    let addr = remote_addr(sk, fields, family)?;
    Some(TcpDestKey {
        addr,
        port: u16::from_be(sk.get(fields.dport)?),
        family,
    })
}

#[inline(always)]
fn conn_tuple(sk: &Sock, fields: &TcpHealthConfig) -> Option<ConnTuple> {
    let family: u16 = sk.get(fields.family)?;
    let saddr = if family == AF_INET {
        v4_in_16(sk.get(fields.saddr)?)
    } else {
        sk.get(fields.saddr_v6)?
    };
    Some(ConnTuple {
        saddr,
        daddr: remote_addr(sk, fields, family)?,
        sport: u16::from_be(sk.get(fields.sport)?),
        dport: u16::from_be(sk.get(fields.dport)?),
        family,
        _pad: 0,
    })
}

#[inline(always)]
fn remote_addr(sk: &Sock, fields: &TcpHealthConfig, family: u16) -> Option<[u8; 16]> {
    match family {
        AF_INET => Some(v4_in_16(sk.get(fields.daddr)?)),
        AF_INET6 => sk.get(fields.daddr_v6),
        _ => None,
    }
}

/// An IPv4 address (its bytes in network order, read as a word) in the first four of 16 bytes,
/// the rest zero: two stores, where zeroing an array and copying into it takes a byte-by-byte
/// memset loop. The object is built little-endian (bpfel), so the word's low bytes come first.
#[inline(always)]
fn v4_in_16(word: u32) -> [u8; 16] {
    u128::from(word).to_ne_bytes()
}

#[inline(always)]
fn tuple_dest(tuple: &ConnTuple) -> TcpDestKey {
    TcpDestKey {
        addr: tuple.daddr,
        port: tuple.dport,
        family: tuple.family,
    }
}

/// A kernel socket (`struct sock *`, the start of a `struct inet_sock` for TCP) as a tracepoint
/// passed it, with its first `SOCK_HEAD_LEN` bytes copied into `TCP_SOCK_HEAD`: one helper call
/// for the addresses, ports, family and state, rather than one per member.
struct Sock {
    addr: u64,
    head: &'static [u8; SOCK_HEAD_LEN],
}

impl Sock {
    #[inline(always)]
    fn load(addr: u64) -> Option<Self> {
        let buf = TCP_SOCK_HEAD.get_ptr_mut(0)?;
        // SAFETY: the per-CPU buffer belongs to this CPU until the program ends, which the
        // reference does not outlive. The helper checks the read; every socket is larger than
        // SOCK_HEAD_LEN bytes.
        unsafe {
            bpf_probe_read_kernel_buf(addr as *const u8, &mut *buf).ok()?;
            Some(Self { addr, head: &*buf })
        }
    }

    /// The member at `offset`, from the copied head when it lies there; `None` when this
    /// kernel's socket lacks it (`FIELD_ABSENT`).
    #[inline(always)]
    fn get<T: Copy>(&self, offset: u16) -> Option<T> {
        let at = offset as usize;
        // Also what bounds the access for the verifier.
        if at <= SOCK_HEAD_LEN - size_of::<T>() {
            // SAFETY: in bounds (just checked); members need not be aligned in the copy.
            return Some(unsafe { self.head.as_ptr().add(at).cast::<T>().read_unaligned() });
        }
        read_member(self.addr, offset)
    }
}

/// The member at `offset` of the socket at `sk` (the agent checked its size against `T`), read
/// on its own; `None` when this kernel's socket lacks it (`FIELD_ABSENT`) or the read fails.
#[inline(always)]
fn read_member<T>(sk: u64, offset: u16) -> Option<T> {
    if offset == FIELD_ABSENT {
        return None;
    }
    let at = sk.wrapping_add(u64::from(offset)) as *const T;
    // SAFETY: the helper checks the read and fails rather than fault.
    unsafe { bpf_probe_read_kernel(at) }.ok()
}

#[inline(always)]
fn now_ns() -> u64 {
    // SAFETY: a helper without arguments.
    unsafe { bpf_ktime_get_ns() }
}
