//! TCP connect health from eBPF raw tracepoints: the connect-health programs of faultline's BPF
//! object (agent-ebpf/src/tcp.rs), loaded and attached for as long as a [`TcpHealth`] lives, and
//! the per-destination totals read from their maps.
//!
//! Per remote address and port: connects started, established, and failed by cause (refused,
//! timed out, other), connect latency as a log2 histogram, and retransmits. The kernel keeps
//! the counts per CPU in an LRU-bounded map ([`MAX_DESTINATIONS`] destinations); nothing is sent
//! to userspace per connect. A connect still pending is neither a success nor a failure.
//! Retransmits count only for destinations the host has connected to since the programs were
//! attached: the programs do not track accepted connections.
//!
//! The programs read the socket a tracepoint passes them at offsets of `struct sock` and
//! `struct inet_sock`, which change between kernel versions and builds: they are computed from
//! the running kernel's BTF ([`crate::kernel::btf`]) when the programs load, and so is which
//! arguments each tracepoint passes. Raw tracepoints attach through the bpf() syscall
//! (BPF_RAW_TRACEPOINT_OPEN), not perf_event_open: neither tracefs nor
//! `kernel.perf_event_paranoid` has a say.

use std::{
    collections::BTreeMap,
    error::Error as StdError,
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use aya::{
    maps::{MapData, MapError, PerCpuHashMap},
    programs::{ProgramError, RawTracePoint},
    Ebpf, EbpfError, EbpfLoader,
};
use faultline_common::{
    TcpDestKey, TcpDestStats, TcpHealthConfig, AF_INET, AF_INET6, FIELD_ABSENT, TCP_LATENCY_BUCKETS,
};
use serde::{Deserialize, Deserializer, Serialize};
use thiserror::Error;

use crate::kernel::{
    bpf::EBPF_OBJECT,
    btf::{Btf, BtfError},
};

/// Destinations counted at once; the least recently active one makes room for a new one.
pub(crate) const MAX_DESTINATIONS: u32 = 4096;
/// Connects pending at once that can be followed to their outcome; beyond that the oldest is
/// forgotten (its attempt stays counted, its outcome is not).
pub(crate) const MAX_PENDING: u32 = 16384;
/// Recent errors and failures kept for matching an error report with its close.
const MAX_RECENT: u32 = 4096;

const CONFIG_MAP: &str = "TCP_CONFIG";
const DESTS_MAP: &str = "TCP_DESTS";

/// One attached program: its name in the object, the tracepoint it serves, and how many of the
/// tracepoint's arguments it reads.
struct Attachment {
    program: &'static str,
    tracepoint: &'static str,
    args: usize,
}

const SET_STATE: Attachment = Attachment {
    program: "faultline_state",
    tracepoint: "inet_sock_set_state",
    args: 3,
};
const RECEIVE_RESET: Attachment = Attachment {
    program: "faultline_reset",
    tracepoint: "tcp_receive_reset",
    args: 1,
};
const ERROR_REPORT: Attachment = Attachment {
    program: "faultline_error",
    tracepoint: "inet_sk_error_report",
    args: 1,
};
/// The kernel function that sets a connect's error before closing its socket (Linux 6.10+).
const ERROR_BEFORE_CLOSE: &str = "tcp_done_with_error";

/// tcp_retransmit_skb(sk, skb) before Linux 6.13.
const RETRANSMIT: Attachment = Attachment {
    program: "faultline_retx",
    tracepoint: "tcp_retransmit_skb",
    args: 2,
};
/// tcp_retransmit_skb(sk, skb, err) since Linux 6.13.
const RETRANSMIT_ERR: Attachment = Attachment {
    program: "faultline_retx_err",
    tracepoint: "tcp_retransmit_skb",
    args: 3,
};

#[derive(Debug, Error)]
pub(crate) enum TcpHealthError {
    #[error("{0}; connect health reads sockets at offsets from the kernel's BTF, and needs Linux 5.6 or later")]
    Btf(#[from] BtfError),
    #[error("the kernel's {member} lies at byte {offset} of the socket, beyond the {max} the programs can address")]
    MemberTooFar {
        member: String,
        offset: u32,
        max: u16,
    },
    #[error("the raw tracepoint {tracepoint} passes {found} arguments on this kernel; {program} reads {expected}")]
    TracepointArgs {
        tracepoint: &'static str,
        program: &'static str,
        expected: usize,
        found: usize,
    },
    #[error(
        "not permitted to {step} (connect health needs root, or CAP_BPF and CAP_PERFMON): {detail}"
    )]
    Permission { step: &'static str, detail: String },
    #[error("cannot load faultline's eBPF object: {0}")]
    Load(#[source] EbpfError),
    #[error("faultline's eBPF object lacks {0} (the agent binary is broken)")]
    Missing(&'static str),
    #[error("the kernel refused the eBPF program {program}: {source}")]
    Program {
        program: &'static str,
        #[source]
        source: Box<ProgramError>,
    },
    #[error("the kernel's verifier refused the eBPF program {program} ({error}); it ended with: {tail} (the whole log is in the agent's log)")]
    Verifier {
        program: &'static str,
        error: io::Error,
        tail: String,
    },
    #[error("cannot attach {program} to the raw tracepoint {tracepoint}: {source}")]
    Attach {
        program: &'static str,
        tracepoint: &'static str,
        #[source]
        source: Box<ProgramError>,
    },
    #[error("cannot use the connect-health map {map}: {source}")]
    Map {
        map: &'static str,
        #[source]
        source: MapError,
    },
}

/// One destination's totals, summed over CPUs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct DestHealth {
    pub(crate) addr: IpAddr,
    pub(crate) port: u16,
    pub(crate) attempts: u64,
    pub(crate) successes: u64,
    pub(crate) refused: u64,
    pub(crate) timed_out: u64,
    pub(crate) other_failures: u64,
    pub(crate) retransmits: u64,
    pub(crate) syn_retransmits: u64,
    /// (upper bound in seconds, count in that bucket) for each log2 bucket, ascending, not
    /// cumulative. A bucket holds latencies below its bound and at or above the previous one;
    /// the last bound is infinite (JSON has no infinity: it is written as null and read back).
    #[serde(deserialize_with = "infinite_bounds")]
    pub(crate) latency_buckets: Vec<(f64, u64)>,
    pub(crate) latency_sum_seconds: f64,
}

/// Reads the null that serde_json writes for the last, infinite bucket bound.
fn infinite_bounds<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<(f64, u64)>, D::Error> {
    let buckets: Vec<(Option<f64>, u64)> = Vec::deserialize(d)?;
    Ok(buckets
        .into_iter()
        .map(|(bound, count)| (bound.unwrap_or(f64::INFINITY), count))
        .collect())
}

/// The connect-health programs, attached; dropping it detaches them and frees their maps.
pub(crate) struct TcpHealth {
    ebpf: Ebpf,
}

impl std::fmt::Debug for TcpHealth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpHealth").finish_non_exhaustive()
    }
}

impl TcpHealth {
    /// Loads and attaches the programs; a clear error naming what is missing (the kernel's BTF,
    /// a socket member, a tracepoint, BPF permission) otherwise.
    pub(crate) fn start() -> Result<Self, TcpHealthError> {
        let btf = Btf::vmlinux()?;
        let mut config = sock_offsets(&btf)?;
        // Since Linux 6.10 a failing connect's error is set before its socket closes, so the
        // close says why it failed; older kernels may report the error after, or let the
        // application take it first, and the reset and error-report tracepoints fill in. Three
        // of a loopback connect's nine tracepoint hits are theirs.
        config.error_before_close = u16::from(btf.has_function(ERROR_BEFORE_CLOSE));
        let mut attachments = vec![&SET_STATE];
        if config.error_before_close == 0 {
            attachments.extend([&RECEIVE_RESET, &ERROR_REPORT]);
        }
        attachments.push(match btf.tracepoint_args(RETRANSMIT.tracepoint)? {
            2 => &RETRANSMIT,
            _ => &RETRANSMIT_ERR,
        });
        for a in &attachments {
            let found = btf.tracepoint_args(a.tracepoint)?;
            if found < a.args {
                return Err(TcpHealthError::TracepointArgs {
                    tracepoint: a.tracepoint,
                    program: a.program,
                    expected: a.args,
                    found,
                });
            }
        }
        // The object declares these maps with one entry, so that the tc faults that load the same
        // object do not pay for them.
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(DESTS_MAP, MAX_DESTINATIONS)
            .map_max_entries("TCP_PENDING", MAX_PENDING)
            .map_max_entries("TCP_ERRORS", MAX_RECENT)
            .map_max_entries("TCP_CLOSED", MAX_RECENT)
            .load(EBPF_OBJECT)
            .map_err(|e| match denial(&e) {
                Some(detail) => TcpHealthError::Permission {
                    step: "create BPF maps",
                    detail,
                },
                None => TcpHealthError::Load(e),
            })?;
        let map_error = |source| TcpHealthError::Map {
            map: CONFIG_MAP,
            source,
        };
        let data = ebpf
            .map_mut(CONFIG_MAP)
            .ok_or(TcpHealthError::Missing(CONFIG_MAP))?;
        let mut array: aya::maps::Array<_, TcpHealthConfig> =
            aya::maps::Array::try_from(data).map_err(map_error)?;
        array.set(0, config, 0).map_err(map_error)?;

        for attachment in attachments {
            attach(&mut ebpf, attachment)?;
        }
        Ok(Self { ebpf })
    }

    /// Current per-destination totals, summed over CPUs, sorted by address then port.
    pub(crate) fn snapshot(&self) -> Result<Vec<DestHealth>, TcpHealthError> {
        let map_error = |source| TcpHealthError::Map {
            map: DESTS_MAP,
            source,
        };
        let data = self
            .ebpf
            .map(DESTS_MAP)
            .ok_or(TcpHealthError::Missing(DESTS_MAP))?;
        let dests: PerCpuHashMap<&MapData, TcpDestKey, TcpDestStats> =
            PerCpuHashMap::try_from(data).map_err(map_error)?;
        let mut totals: BTreeMap<(IpAddr, u16), TcpDestStats> = BTreeMap::new();
        for entry in dests.iter() {
            let (key, per_cpu) = entry.map_err(map_error)?;
            let Some(addr) = key_addr(&key) else {
                continue;
            };
            // An IPv6 socket connecting to an IPv4 address names it v4-mapped: the same
            // destination as an IPv4 socket's.
            let sum = totals
                .entry((addr.to_canonical(), key.port))
                .or_insert(TcpDestStats::ZERO);
            for cpu in per_cpu.iter() {
                add(sum, cpu);
            }
        }
        Ok(totals
            .into_iter()
            .map(|((addr, port), stats)| dest_health(addr, port, &stats))
            .collect())
    }
}

/// Adds one CPU's counters. Wrapping: a CPU's `other_failures` may be below zero (see
/// `TcpDestStats`), the sum is not.
fn add(sum: &mut TcpDestStats, cpu: &TcpDestStats) {
    sum.attempts = sum.attempts.wrapping_add(cpu.attempts);
    sum.successes = sum.successes.wrapping_add(cpu.successes);
    sum.refused = sum.refused.wrapping_add(cpu.refused);
    sum.timed_out = sum.timed_out.wrapping_add(cpu.timed_out);
    sum.other_failures = sum.other_failures.wrapping_add(cpu.other_failures);
    sum.retransmits = sum.retransmits.wrapping_add(cpu.retransmits);
    sum.syn_retransmits = sum.syn_retransmits.wrapping_add(cpu.syn_retransmits);
    sum.latency_sum_ns = sum.latency_sum_ns.wrapping_add(cpu.latency_sum_ns);
    for (total, count) in sum.latency_us_log2.iter_mut().zip(cpu.latency_us_log2) {
        *total = total.wrapping_add(count);
    }
}

fn key_addr(key: &TcpDestKey) -> Option<IpAddr> {
    match key.family {
        AF_INET => {
            let [a, b, c, d, ..] = key.addr;
            Some(IpAddr::V4(Ipv4Addr::new(a, b, c, d)))
        }
        AF_INET6 => Some(IpAddr::V6(Ipv6Addr::from(key.addr))),
        _ => None,
    }
}

fn dest_health(addr: IpAddr, port: u16, stats: &TcpDestStats) -> DestHealth {
    DestHealth {
        addr,
        port,
        attempts: stats.attempts,
        successes: stats.successes,
        refused: stats.refused,
        timed_out: stats.timed_out,
        other_failures: stats.other_failures,
        retransmits: stats.retransmits,
        syn_retransmits: stats.syn_retransmits,
        latency_buckets: stats
            .latency_us_log2
            .iter()
            .enumerate()
            .map(|(i, count)| (bucket_bound_seconds(i), *count))
            .collect(),
        latency_sum_seconds: stats.latency_sum_ns as f64 / 1e9,
    }
}

/// Upper bound of histogram bucket `i`: the kernel files a latency of `us` microseconds under
/// the bit length of `us`, so bucket `i` holds latencies below 2^i µs; the last one is open.
fn bucket_bound_seconds(i: usize) -> f64 {
    if i + 1 >= TCP_LATENCY_BUCKETS {
        f64::INFINITY
    } else {
        (1u64 << i) as f64 / 1e6
    }
}

/// Loads one program and attaches it to its raw tracepoint.
fn attach(ebpf: &mut Ebpf, a: &Attachment) -> Result<(), TcpHealthError> {
    let program_error = |source| TcpHealthError::Program {
        program: a.program,
        source: Box::new(source),
    };
    let program: &mut RawTracePoint = ebpf
        .program_mut(a.program)
        .ok_or(TcpHealthError::Missing(a.program))?
        .try_into()
        .map_err(program_error)?;
    program.load().map_err(|e| load_error(a.program, e))?;
    program
        .attach(a.tracepoint)
        .map_err(|source| match denial(&source) {
            Some(detail) => TcpHealthError::Permission {
                step: "attach to raw tracepoints",
                detail,
            },
            None => TcpHealthError::Attach {
                program: a.program,
                tracepoint: a.tracepoint,
                source: Box::new(source),
            },
        })?;
    Ok(())
}

/// A refusal with a verifier log is the verifier's: the agent logs the log whole and keeps its
/// last lines, which say what was refused. Without one it is a permission or syscall problem.
fn load_error(program: &'static str, e: ProgramError) -> TcpHealthError {
    if let Some(detail) = denial(&e) {
        return TcpHealthError::Permission {
            step: "load eBPF programs",
            detail,
        };
    }
    match e {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => TcpHealthError::Verifier {
            program,
            error: io_error,
            tail: crate::kernel::bpf::verifier_tail(program, &verifier_log.to_string()),
        },
        source => TcpHealthError::Program {
            program,
            source: Box::new(source),
        },
    }
}

/// The error's text, ending with the refusal, when a permission check refused it (EPERM
/// anywhere in its chain). Not EACCES: the verifier answers that for programs it rejects.
fn denial(e: &(dyn StdError + 'static)) -> Option<String> {
    let denied = std::iter::successors(Some(e), |&err| err.source())
        .filter_map(|err| err.downcast_ref::<io::Error>())
        .find(|io| io.raw_os_error() == Some(libc::EPERM))?;
    let (text, refusal) = (e.to_string(), denied.to_string());
    // aya's messages sometimes include their cause and sometimes not.
    Some(if text.ends_with(&refusal) {
        text
    } else {
        format!("{text}: {refusal}")
    })
}

/// A socket member a program reads: where it is in the kernel's structs, its size, and whether
/// the programs can do without it (`FIELD_ABSENT`).
struct Wanted {
    structure: &'static str,
    path: &'static [&'static str],
    size: u32,
    required: bool,
    slot: fn(&mut TcpHealthConfig) -> &mut u16,
}

const fn sock(
    path: &'static [&'static str],
    size: u32,
    slot: fn(&mut TcpHealthConfig) -> &mut u16,
) -> Wanted {
    Wanted {
        structure: "sock",
        path,
        size,
        required: true,
        slot,
    }
}

/// The members the tracepoints' own records are filled from (the `TP_fast_assign` of
/// inet_sock_set_state, inet_sk_error_report and tcp_retransmit_skb), which the programs read
/// from the socket directly. `struct inet_sock` begins with `struct sock`, so its offsets count
/// from the same pointer.
const SOCK_MEMBERS: [Wanted; 10] = [
    sock(&["__sk_common", "skc_family"], 2, |c| &mut c.family),
    // A bitfield before Linux 5.6, which the lookup refuses by name.
    sock(&["sk_protocol"], 2, |c| &mut c.protocol),
    sock(&["__sk_common", "skc_state"], 1, |c| &mut c.state),
    sock(&["sk_err"], 4, |c| &mut c.error),
    sock(&["__sk_common", "skc_dport"], 2, |c| &mut c.dport),
    sock(&["__sk_common", "skc_daddr"], 4, |c| &mut c.daddr),
    Wanted {
        structure: "inet_sock",
        path: &["inet_sport"],
        size: 2,
        required: true,
        slot: |c| &mut c.sport,
    },
    Wanted {
        structure: "inet_sock",
        path: &["inet_saddr"],
        size: 4,
        required: true,
        slot: |c| &mut c.saddr,
    },
    // Only in kernels built with IPv6, which then has no IPv6 sockets to count.
    Wanted {
        required: false,
        ..sock(&["__sk_common", "skc_v6_rcv_saddr"], 16, |c| {
            &mut c.saddr_v6
        })
    },
    Wanted {
        required: false,
        ..sock(&["__sk_common", "skc_v6_daddr"], 16, |c| &mut c.daddr_v6)
    },
];

/// The offsets of the socket members the programs read, from the kernel's BTF.
fn sock_offsets(btf: &Btf) -> Result<TcpHealthConfig, TcpHealthError> {
    let mut config = TcpHealthConfig::ABSENT;
    for w in &SOCK_MEMBERS {
        let member = match btf.member_sized(w.structure, w.path, w.size) {
            Ok(member) => member,
            Err(BtfError::NoMember { .. }) if !w.required => continue,
            Err(e) => return Err(e.into()),
        };
        // FIELD_ABSENT is u16::MAX: no member of a struct sock lies that far, but say so if one
        // ever does rather than read the wrong bytes.
        let offset = u16::try_from(member.offset)
            .ok()
            .filter(|&o| o != FIELD_ABSENT)
            .ok_or_else(|| TcpHealthError::MemberTooFar {
                member: format!("{}.{}", w.structure, w.path.join(".")),
                offset: member.offset,
                max: FIELD_ABSENT - 1,
            })?;
        *(w.slot)(&mut config) = offset;
    }
    Ok(config)
}

/// The totals for one destination, if it has any.
#[cfg(test)]
impl TcpHealth {
    pub(crate) fn dest(
        &self,
        addr: IpAddr,
        port: u16,
    ) -> Result<Option<DestHealth>, TcpHealthError> {
        let addr = addr.to_canonical();
        Ok(self
            .snapshot()?
            .into_iter()
            .find(|d| d.addr == addr && d.port == port))
    }
}

#[cfg(test)]
mod tests {
    use std::{
        io::Write as _,
        net::{SocketAddr, TcpListener, TcpStream},
        os::fd::{AsRawFd, OwnedFd},
        process::Command,
        thread,
        time::{Duration, Instant},
    };

    use nix::{
        errno::Errno,
        sched::{unshare, CloneFlags},
        sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, SockaddrStorage},
    };

    use super::*;

    // Every test has ports of its own: the tracepoints see the whole host, so each test only
    // looks at its own destinations.
    const PORT_REFUSED_V4: u16 = 47_301;
    const PORT_ACCEPTED_V4: u16 = 47_302;
    const PORT_REFUSED_V6: u16 = 47_303;
    const PORT_ACCEPTED_V6: u16 = 47_304;
    const PORT_SYN_DROPPED: u16 = 47_305;
    const PORT_TIMED_OUT: u16 = 47_306;
    const PORT_ICMP_REFUSED: u16 = 47_307;
    const PORT_RATE: u16 = 47_308;

    const LOCAL_V4: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
    const LOCAL_V6: IpAddr = IpAddr::V6(Ipv6Addr::LOCALHOST);

    /// Whether a root-only test can run; says so on stderr when it cannot.
    fn root(test: &str) -> bool {
        if nix::unistd::geteuid().is_root() {
            return true;
        }
        let _ = writeln!(
            io::stderr(),
            "SKIP {test}: needs root (BPF, network namespaces)"
        );
        false
    }

    /// Runs `f` on a thread of its own in a fresh network namespace whose loopback is up.
    /// `unshare` moves only the calling thread; processes it spawns (nft) start there too.
    fn in_netns<T: Send>(f: impl FnOnce() -> T + Send) -> T {
        thread::scope(|scope| {
            let thread = scope.spawn(|| {
                unshare(CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET)");
                loopback_up().expect("bring lo up");
                f()
            });
            match thread.join() {
                Ok(value) => value,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }

    fn loopback_up() -> io::Result<()> {
        let fd = socket(
            AddressFamily::Inet,
            SockType::Datagram,
            SockFlag::SOCK_CLOEXEC,
            None,
        )?;
        // SAFETY: ifreq is plain old data; all zeroes is a valid value.
        let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
        for (slot, byte) in request.ifr_name.iter_mut().zip(b"lo") {
            *slot = *byte as libc::c_char;
        }
        // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read and write the flags member of `request`.
        unsafe {
            if libc::ioctl(fd.as_raw_fd(), libc::SIOCGIFFLAGS, &mut request) < 0 {
                return Err(io::Error::last_os_error());
            }
            request.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            if libc::ioctl(fd.as_raw_fd(), libc::SIOCSIFFLAGS, &request) < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    }

    /// Drops (or rejects, with `verdict`) the SYNs that arrive for `port` in the calling thread's
    /// namespace. On input rather than output: a SYN dropped on output fails to leave, and
    /// kernels before 6.13 do not trace such retransmits at all.
    fn filter_syns(port: u16, verdict: &str) {
        let rule = format!("tcp dport {port} tcp flags syn {verdict}");
        for args in [
            vec!["add", "table", "inet", "t"],
            vec![
                "add",
                "chain",
                "inet",
                "t",
                "i",
                "{ type filter hook input priority 0; }",
            ],
            vec!["add", "rule", "inet", "t", "i", &rule],
        ] {
            let status = Command::new("nft").args(&args).status().expect("run nft");
            assert!(status.success(), "nft {args:?} failed");
        }
    }

    fn tcp_socket(addr: &SocketAddr, flags: SockFlag) -> OwnedFd {
        let family = match addr {
            SocketAddr::V4(_) => AddressFamily::Inet,
            SocketAddr::V6(_) => AddressFamily::Inet6,
        };
        socket(
            family,
            SockType::Stream,
            flags | SockFlag::SOCK_CLOEXEC,
            None,
        )
        .expect("socket")
    }

    fn set_syn_count(fd: &OwnedFd, count: libc::c_int) {
        // SAFETY: TCP_SYNCNT reads one int from the pointer, of the size passed.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_SYNCNT,
                (&count as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0, "TCP_SYNCNT: {}", io::Error::last_os_error());
    }

    /// The destination's totals once `done` holds for them, or after two seconds whatever they
    /// are: some counts land just after the connect returns (an error reported after the close).
    fn settled(
        health: &TcpHealth,
        addr: IpAddr,
        port: u16,
        done: impl Fn(&DestHealth) -> bool,
    ) -> DestHealth {
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            let dest = health.dest(addr, port).expect("snapshot");
            match dest {
                Some(d) if done(&d) || Instant::now() >= deadline => return d,
                None if Instant::now() >= deadline => {
                    panic!("no connect-health entry for {addr} port {port}")
                }
                _ => thread::sleep(Duration::from_millis(20)),
            }
        }
    }

    fn bucket_total(d: &DestHealth) -> u64 {
        d.latency_buckets.iter().map(|(_, n)| n).sum()
    }

    fn refused_connects(addr: IpAddr, port: u16, n: usize) {
        let target = SocketAddr::new(addr, port);
        for _ in 0..n {
            let e = TcpStream::connect(target).expect_err("nothing listens there");
            assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused, "{e}");
        }
    }

    fn accepted_connects(addr: IpAddr, port: u16, n: usize) {
        let target = SocketAddr::new(addr, port);
        let listener = TcpListener::bind(target).expect("listen");
        for _ in 0..n {
            drop(TcpStream::connect(target).expect("connect"));
        }
        drop(listener);
    }

    fn check_refused(health: &TcpHealth, addr: IpAddr, port: u16, n: u64) {
        let d = settled(health, addr, port, |d| d.refused >= n);
        eprintln!("{addr} port {port}: {d:?}");
        assert_eq!(
            (
                d.attempts,
                d.refused,
                d.successes,
                d.timed_out,
                d.other_failures
            ),
            (n, n, 0, 0, 0)
        );
        assert_eq!(bucket_total(&d), 0);
    }

    fn check_accepted(health: &TcpHealth, addr: IpAddr, port: u16, n: u64) {
        let d = settled(health, addr, port, |d| d.successes >= n);
        eprintln!("{addr} port {port}: {d:?}");
        assert_eq!(
            (
                d.attempts,
                d.successes,
                d.refused,
                d.timed_out,
                d.other_failures
            ),
            (n, n, 0, 0, 0)
        );
        assert_eq!(bucket_total(&d), n);
        assert!(d.latency_sum_seconds > 0.0);
        assert_eq!(d.latency_buckets.len(), TCP_LATENCY_BUCKETS);
        assert!(d.latency_buckets.windows(2).all(|w| w[0].0 < w[1].0));
    }

    #[test]
    fn connects_to_a_closed_port_count_as_refused() {
        if !root("connects_to_a_closed_port_count_as_refused") {
            return;
        }
        let health = TcpHealth::start().expect("start connect health");
        in_netns(|| refused_connects(LOCAL_V4, PORT_REFUSED_V4, 25));
        check_refused(&health, LOCAL_V4, PORT_REFUSED_V4, 25);
    }

    #[test]
    fn established_connects_count_with_their_latency() {
        if !root("established_connects_count_with_their_latency") {
            return;
        }
        let health = TcpHealth::start().expect("start connect health");
        in_netns(|| accepted_connects(LOCAL_V4, PORT_ACCEPTED_V4, 20));
        check_accepted(&health, LOCAL_V4, PORT_ACCEPTED_V4, 20);
    }

    #[test]
    fn ipv6_connects_count_like_ipv4_ones() {
        if !root("ipv6_connects_count_like_ipv4_ones") {
            return;
        }
        let health = TcpHealth::start().expect("start connect health");
        in_netns(|| {
            refused_connects(LOCAL_V6, PORT_REFUSED_V6, 25);
            accepted_connects(LOCAL_V6, PORT_ACCEPTED_V6, 20);
        });
        check_refused(&health, LOCAL_V6, PORT_REFUSED_V6, 25);
        check_accepted(&health, LOCAL_V6, PORT_ACCEPTED_V6, 20);
    }

    #[test]
    fn dropped_syns_are_retransmitted_and_a_pending_connect_is_no_failure() {
        if !root("dropped_syns_are_retransmitted_and_a_pending_connect_is_no_failure") {
            return;
        }
        let health = TcpHealth::start().expect("start connect health");
        let (pending, closed) = in_netns(|| {
            filter_syns(PORT_SYN_DROPPED, "drop");
            let target = SocketAddr::new(LOCAL_V4, PORT_SYN_DROPPED);
            let fd = tcp_socket(&target, SockFlag::SOCK_NONBLOCK);
            let e = connect(fd.as_raw_fd(), &SockaddrStorage::from(target));
            assert_eq!(e, Err(Errno::EINPROGRESS));
            // The kernel retransmits the SYN after 1 s and 3 s.
            thread::sleep(Duration::from_millis(3_500));
            let pending = health.dest(LOCAL_V4, PORT_SYN_DROPPED).expect("snapshot");
            drop(fd);
            let closed = settled(&health, LOCAL_V4, PORT_SYN_DROPPED, |d| {
                d.other_failures >= 1
            });
            (pending, closed)
        });
        let pending = pending.expect("an entry for the pending connect");
        eprintln!("pending: {pending:?}\nclosed: {closed:?}");
        assert_eq!(pending.attempts, 1);
        assert!(pending.syn_retransmits >= 2, "{pending:?}");
        assert!(pending.retransmits >= pending.syn_retransmits);
        assert_eq!(
            (
                pending.successes,
                pending.refused,
                pending.timed_out,
                pending.other_failures
            ),
            (0, 0, 0, 0)
        );
        assert_eq!(
            (
                closed.attempts,
                closed.successes,
                closed.refused,
                closed.timed_out
            ),
            (1, 0, 0, 0)
        );
        assert_eq!(closed.other_failures, 1);
    }

    #[test]
    fn a_syn_the_kernel_gives_up_on_counts_as_timed_out() {
        if !root("a_syn_the_kernel_gives_up_on_counts_as_timed_out") {
            return;
        }
        let health = TcpHealth::start().expect("start connect health");
        let started = Instant::now();
        in_netns(|| {
            filter_syns(PORT_TIMED_OUT, "drop");
            let target = SocketAddr::new(LOCAL_V4, PORT_TIMED_OUT);
            let fd = tcp_socket(&target, SockFlag::empty());
            // One SYN retransmit (at 1 s) before giving up (at 3 s), for this socket only.
            set_syn_count(&fd, 1);
            let e = connect(fd.as_raw_fd(), &SockaddrStorage::from(target));
            assert_eq!(e, Err(Errno::ETIMEDOUT));
        });
        let d = settled(&health, LOCAL_V4, PORT_TIMED_OUT, |d| d.timed_out >= 1);
        eprintln!("after {:?}: {d:?}", started.elapsed());
        assert_eq!(
            (
                d.attempts,
                d.timed_out,
                d.other_failures,
                d.refused,
                d.successes
            ),
            (1, 1, 0, 0, 0)
        );
        // 1 on older kernels; since 6.6 the first SYN retransmits are a second apart
        // (net.ipv4.tcp_syn_linear_timeouts), so 2 fit before the kernel gives up at 3 s.
        assert!(d.syn_retransmits >= 1, "{d:?}");
    }

    #[test]
    fn an_icmp_port_unreachable_counts_as_refused() {
        if !root("an_icmp_port_unreachable_counts_as_refused") {
            return;
        }
        let health = TcpHealth::start().expect("start connect health");
        in_netns(|| {
            filter_syns(PORT_ICMP_REFUSED, "reject with icmpx type port-unreachable");
            let target = SocketAddr::new(LOCAL_V4, PORT_ICMP_REFUSED);
            let e = TcpStream::connect(target).expect_err("rejected");
            assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused, "{e}");
        });
        let d = settled(&health, LOCAL_V4, PORT_ICMP_REFUSED, |d| d.refused >= 1);
        eprintln!("{d:?}");
        assert_eq!(
            (
                d.attempts,
                d.refused,
                d.other_failures,
                d.timed_out,
                d.successes
            ),
            (1, 1, 0, 0, 0)
        );
    }

    /// Connects per second of one loopback client for `time`. The same thread accepts each
    /// connection (a separate acceptor falls behind, the accept queue overflows and a dropped SYN
    /// costs a second), then closes both ends, the client's with a reset so that no port lingers
    /// in TIME_WAIT.
    fn connect_rate(listener: &TcpListener, time: Duration) -> f64 {
        let target = listener.local_addr().expect("listening address");
        let reset = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        let started = Instant::now();
        let mut n = 0u64;
        while started.elapsed() < time {
            for _ in 0..100 {
                let client = TcpStream::connect(target).expect("connect");
                let (server, _) = listener.accept().expect("accept");
                nix::sys::socket::setsockopt(&client, nix::sys::socket::sockopt::Linger, &reset)
                    .expect("SO_LINGER");
                drop(client);
                drop(server);
                n += 1;
            }
        }
        n as f64 / started.elapsed().as_secs_f64()
    }

    /// Not a check: prints the loopback connect rate with and without the programs attached,
    /// alternating, for the overhead figures. Run it alone:
    /// `cargo test -p faultline --lib connect_rate -- --ignored --nocapture`.
    #[test]
    #[ignore = "a measurement, not a check"]
    fn connect_rate_with_and_without_programs() {
        if !root("connect_rate_with_and_without_programs") {
            return;
        }
        in_netns(|| {
            let target = SocketAddr::new(LOCAL_V4, PORT_RATE);
            let listener = TcpListener::bind(target).expect("listen");
            let round = Duration::from_secs(3);
            connect_rate(&listener, Duration::from_secs(1));
            let (mut without, mut with) = (Vec::new(), Vec::new());
            for _ in 0..4 {
                without.push(connect_rate(&listener, round));
                let health = TcpHealth::start().expect("start connect health");
                with.push(connect_rate(&listener, round));
                let d = health.dest(LOCAL_V4, PORT_RATE).expect("snapshot");
                let counted = d.map(|d| (d.attempts, d.successes)).unwrap_or_default();
                let _ = writeln!(io::stderr(), "counted (attempts, successes): {counted:?}");
            }
            let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
            let _ = writeln!(
                io::stderr(),
                "connects/s without: {without:.0?} (mean {:.0}); with: {with:.0?} (mean {:.0})",
                mean(&without),
                mean(&with)
            );
        });
    }

    #[test]
    fn the_running_kernels_socket_layout_is_found() {
        let Ok(btf) = Btf::vmlinux() else {
            let _ = writeln!(io::stderr(), "SKIP: no readable kernel BTF");
            return;
        };
        let config = sock_offsets(&btf).expect("socket offsets");
        eprintln!("{config:?}");
        assert_eq!((config.daddr, config.dport, config.family), (0, 12, 16));
        for offset in [
            config.protocol,
            config.state,
            config.error,
            config.sport,
            config.saddr,
            config.saddr_v6,
            config.daddr_v6,
        ] {
            assert_ne!(offset, FIELD_ABSENT, "{config:?}");
        }
        // inet_sock's own members come after the struct sock it begins with.
        assert!(config.sport > config.protocol && config.saddr > config.protocol);
    }

    #[test]
    fn buckets_are_log2_microseconds_and_survive_json() {
        let mut stats = TcpDestStats::ZERO;
        stats.latency_us_log2[5] = 3;
        stats.latency_sum_ns = 50_000;
        let d = dest_health(LOCAL_V4, 80, &stats);
        assert_eq!(d.latency_buckets[0].0, 1e-6);
        assert_eq!(d.latency_buckets[5], (32e-6, 3));
        assert_eq!(d.latency_buckets[TCP_LATENCY_BUCKETS - 1].0, f64::INFINITY);
        assert_eq!(d.latency_sum_seconds, 50e-6);
        let json = serde_json::to_string(&d).expect("serialize");
        let back: DestHealth = serde_json::from_str(&json).expect("deserialize");
        assert_eq!(back, d);
    }

    #[test]
    fn cpu_sums_wrap_so_a_moved_failure_nets_out() {
        let mut one = TcpDestStats::ZERO;
        one.other_failures = 1;
        let mut two = TcpDestStats::ZERO;
        two.other_failures = u64::MAX;
        two.timed_out = 1;
        let mut sum = TcpDestStats::ZERO;
        add(&mut sum, &one);
        add(&mut sum, &two);
        assert_eq!((sum.other_failures, sum.timed_out), (0, 1));
    }
}
