//! TCP connect health: per destination (remote address and port), the connects started,
//! established and failed by cause, their latency as a log2 histogram, and retransmits. Four
//! classic tracepoints feed per-CPU counters in `TCP_DESTS`; nothing goes to userspace per event.
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
//! inet_sk_error_report names the connection only by its addresses and ports, and fires before
//! the close on some kernels and paths (Linux 6.1's timeouts and ICMP errors) and after it on
//! others (since 6.10, `tcp_done_with_error`). So an error seen while the connect is pending is
//! kept by 4-tuple (`TCP_ERRORS`) for the close to find, and a close without a known cause is
//! counted as other at once and remembered (`TCP_CLOSED`), so that a report right after it moves
//! the count to the reported cause.
//!
//! Record field offsets come from the agent (`TCP_CONFIG`), which reads them from tracefs: they
//! differ between kernel versions. The maps are declared with one entry so that the tc faults,
//! which load this same object, do not pay for them; the agent sizes them when it loads the
//! object for connect health.

use core::mem::size_of;

use aya_ebpf::{
    helpers::{bpf_ktime_get_ns, bpf_probe_read_kernel_buf},
    macros::{map, tracepoint},
    maps::{Array, LruHashMap, LruPerCpuHashMap, PerCpuArray},
    programs::TracePointContext,
    EbpfContext as _,
};
use faultline_common::{
    TcpDestKey, TcpDestStats, TcpHealthConfig, TracepointFields, AF_INET, AF_INET6, FIELD_ABSENT,
    L4_TCP, TCP_LATENCY_BUCKETS, TCP_RECORD_LEN,
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

/// Where each program copies the start of its tracepoint's record (see `Record`).
#[map]
static TCP_RECORD: PerCpuArray<[u8; TCP_RECORD_LEN]> = PerCpuArray::with_max_entries(1, 0);

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
    _pad: u32,
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

/// sock:inet_sock_set_state: connects starting, succeeding and failing.
#[tracepoint]
pub fn faultline_state(ctx: TracePointContext) -> u32 {
    let _ = on_set_state(&ctx);
    0
}

/// tcp:tcp_receive_reset: a reset on a pending connect makes it refused.
#[tracepoint]
pub fn faultline_reset(ctx: TracePointContext) -> u32 {
    let _ = on_receive_reset(&ctx);
    0
}

/// sock:inet_sk_error_report: the error a failing connect ends with.
#[tracepoint]
pub fn faultline_error(ctx: TracePointContext) -> u32 {
    let _ = on_error_report(&ctx);
    0
}

/// tcp:tcp_retransmit_skb: retransmits to destinations connected to since the agent started.
#[tracepoint]
pub fn faultline_retx(ctx: TracePointContext) -> u32 {
    let _ = on_retransmit(&ctx);
    0
}

#[inline(always)]
fn on_set_state(ctx: &TracePointContext) -> Option<()> {
    let fields = &TCP_CONFIG.get(0)?.set_state;
    // States first: most transitions on a busy host are not about connects.
    let old: i32 = read(ctx, fields.oldstate)?;
    let new: i32 = read(ctx, fields.newstate)?;
    let starts = old == TCP_CLOSE && new == TCP_SYN_SENT;
    let ends = old == TCP_SYN_SENT && (new == TCP_ESTABLISHED || new == TCP_CLOSE);
    if !starts && !ends {
        return None;
    }
    let rec = Record::load(ctx)?;
    // The tracepoint fires for SCTP and MPTCP sockets too.
    if rec.get::<u16>(fields.protocol)? != L4_TCP as u16 {
        return None;
    }
    let sk: u64 = rec.get(fields.skaddr)?;
    let now = now_ns();
    if starts {
        // The source port may still be 0 here (the kernel picks it right after), so the socket,
        // not the 4-tuple, names the pending connect; the destination is already set.
        let dest = dest_key(&rec, fields)?;
        let pending = Pending {
            start_ns: now,
            reset: 0,
            _pad: 0,
        };
        let _ = TCP_PENDING.insert(sk, pending, 0);
        let stats = stats_for(&dest)?;
        // SAFETY: the per-CPU value belongs to this CPU while the program runs.
        unsafe { (*stats).attempts += 1 };
        return Some(());
    }
    // SAFETY: copied out at once; the entry is removed right after.
    let pending = *unsafe { TCP_PENDING.get(sk) }?;
    let _ = TCP_PENDING.remove(sk);
    if new == TCP_ESTABLISHED {
        let dest = dest_key(&rec, fields)?;
        let latency_ns = now.saturating_sub(pending.start_ns);
        let bucket = latency_bucket(latency_ns / 1_000);
        let stats = stats_for(&dest)?;
        // SAFETY: as above; `bucket` is below TCP_LATENCY_BUCKETS.
        unsafe {
            (*stats).successes += 1;
            (*stats).latency_sum_ns += latency_ns;
            (*stats).latency_us_log2[bucket] += 1;
        }
        return Some(());
    }
    let tuple = conn_tuple(&rec, fields)?;
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
    let stats = stats_for(&tuple_dest(&tuple))?;
    // SAFETY: as above.
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
fn on_receive_reset(ctx: &TracePointContext) -> Option<()> {
    let fields = &TCP_CONFIG.get(0)?.receive_reset;
    let sk: u64 = read(ctx, fields.skaddr)?;
    let pending = TCP_PENDING.get_ptr_mut(sk)?;
    // SAFETY: a map value; a racing writer could only set the same flag.
    unsafe { (*pending).reset = 1 };
    Some(())
}

#[inline(always)]
fn on_error_report(ctx: &TracePointContext) -> Option<()> {
    let fields = &TCP_CONFIG.get(0)?.error_report;
    let error: i32 = read(ctx, fields.error)?;
    // Only the errors that name a cause: any other makes the failure "other", which it is
    // without a report too. That skips the common reports (resets of established connections)
    // and those without an error (an ICMP error queued for IP_RECVERR readers, reported before
    // the socket error is set).
    let cause = Cause::of(error);
    if cause == Cause::Other {
        return None;
    }
    let rec = Record::load(ctx)?;
    if rec.get::<u16>(fields.protocol)? != L4_TCP as u16 {
        return None;
    }
    let tuple = conn_tuple(&rec, fields)?;
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
fn on_retransmit(ctx: &TracePointContext) -> Option<()> {
    let fields = &TCP_CONFIG.get(0)?.retransmit;
    // Since Linux 6.13 the tracepoint also fires for retransmits that failed to leave (a local
    // firewall drop, no route); older kernels trace only those sent. Counting the sent ones
    // keeps the numbers the same on both.
    let rec = Record::load(ctx)?;
    if fields.error != FIELD_ABSENT && rec.get::<i32>(fields.error)? != 0 {
        return None;
    }
    let dest = dest_key(&rec, fields)?;
    // Only destinations already counted: retransmits on accepted connections would otherwise
    // fill the map with clients' ephemeral ports.
    let stats = TCP_DESTS.get_ptr_mut(dest)?;
    let syn = rec.get::<i32>(fields.state)? == TCP_SYN_SENT;
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

/// The remote end of the connection a record names.
#[inline(always)]
fn dest_key(rec: &Record, fields: &TracepointFields) -> Option<TcpDestKey> {
    let family: u16 = rec.get(fields.family)?;
    let addr = remote_addr(rec, fields, family)?;
    Some(TcpDestKey {
        addr,
        port: rec.get(fields.dport)?,
        family,
    })
}

#[inline(always)]
fn conn_tuple(rec: &Record, fields: &TracepointFields) -> Option<ConnTuple> {
    let family: u16 = rec.get(fields.family)?;
    let mut saddr = [0u8; 16];
    if family == AF_INET {
        let v4: [u8; 4] = rec.get(fields.saddr)?;
        saddr[..4].copy_from_slice(&v4);
    } else {
        saddr = rec.get(fields.saddr_v6)?;
    }
    Some(ConnTuple {
        saddr,
        daddr: remote_addr(rec, fields, family)?,
        sport: rec.get(fields.sport)?,
        dport: rec.get(fields.dport)?,
        family,
        _pad: 0,
    })
}

#[inline(always)]
fn remote_addr(rec: &Record, fields: &TracepointFields, family: u16) -> Option<[u8; 16]> {
    let mut addr = [0u8; 16];
    match family {
        AF_INET => {
            let v4: [u8; 4] = rec.get(fields.daddr)?;
            addr[..4].copy_from_slice(&v4);
        }
        AF_INET6 => addr = rec.get(fields.daddr_v6)?,
        _ => return None,
    }
    Some(addr)
}

#[inline(always)]
fn tuple_dest(tuple: &ConnTuple) -> TcpDestKey {
    TcpDestKey {
        addr: tuple.daddr,
        port: tuple.dport,
        family: tuple.family,
    }
}

/// The start of a tracepoint's record, copied into `TCP_RECORD` with one helper call: cheaper
/// than a helper call per field once a program reads more than two or three of them.
struct Record(&'static [u8; TCP_RECORD_LEN]);

impl Record {
    #[inline(always)]
    fn load(ctx: &TracePointContext) -> Option<Self> {
        let buf = TCP_RECORD.get_ptr_mut(0)?;
        // SAFETY: the per-CPU buffer belongs to this CPU until the program ends, which the
        // reference does not outlive. The helper checks the read; bytes past the record's end
        // come from the rest of the kernel's trace buffer, and the agent checked that no field
        // offset points there.
        unsafe {
            bpf_probe_read_kernel_buf(ctx.as_ptr() as *const u8, &mut *buf).ok()?;
            Some(Self(&*buf))
        }
    }

    /// The field at `offset`; `None` when this kernel's tracepoint lacks it (`FIELD_ABSENT`).
    #[inline(always)]
    fn get<T: Copy>(&self, offset: u16) -> Option<T> {
        let offset = offset as usize;
        // Also what bounds the access for the verifier.
        if offset > TCP_RECORD_LEN - size_of::<T>() {
            return None;
        }
        // SAFETY: in bounds (just checked); fields need not be aligned in the record.
        Some(unsafe { self.0.as_ptr().add(offset).cast::<T>().read_unaligned() })
    }
}

/// A field of the record at the offset the agent found for it, read on its own; `None` when
/// this kernel's tracepoint lacks it.
#[inline(always)]
fn read<T>(ctx: &TracePointContext, offset: u16) -> Option<T> {
    if offset == FIELD_ABSENT {
        return None;
    }
    // SAFETY: the helper checks the read; the agent took the offset from the record's format.
    unsafe { ctx.read_at::<T>(offset as usize) }.ok()
}

#[inline(always)]
fn now_ns() -> u64 {
    // SAFETY: a helper without arguments.
    unsafe { bpf_ktime_get_ns() }
}
