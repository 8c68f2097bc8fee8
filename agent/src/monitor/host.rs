//! Host metrics read from procfs: CPU time, load, memory, block device I/O, network interface
//! traffic and the kernel's TCP counters, taken together as one [`HostSnapshot`].
//!
//! Everything here is a counter or gauge the kernel already keeps; a snapshot only reads them,
//! converted to base units (seconds, bytes). Rates are left to whoever compares two snapshots
//! (or to the Prometheus server scraping [`super::exposition`]).
//!
//! /proc/net/* describes the network namespace of the process that reads it, so interfaces and
//! TCP counters are those of the agent's namespace: the host's when the agent runs in the host
//! namespace, as it must to inject faults there.

use std::{
    collections::HashMap,
    fs, io,
    os::unix::fs::FileExt as _,
    sync::Mutex,
    time::{SystemTime, UNIX_EPOCH},
};

use procfs::{net::InterfaceDeviceStatus, DiskStat, DiskStats, FromRead as _, Meminfo};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// /proc/diskstats counts sectors of 512 bytes whatever the device's own sector size
/// (the block layer's `SECTOR_SHIFT` is 9 for every device).
const DISKSTATS_SECTOR: u64 = 512;

#[derive(Debug, Error)]
pub(crate) enum HostError {
    #[error("cannot read {file}: {source}")]
    Proc {
        file: &'static str,
        #[source]
        source: procfs::ProcError,
    },
    #[error("cannot read {file}: {source}")]
    Io {
        file: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("unexpected content in {file}: {detail}")]
    Format { file: &'static str, detail: String },
}

fn proc_error(file: &'static str) -> impl FnOnce(procfs::ProcError) -> HostError {
    move |source| HostError::Proc { file, source }
}

/// The procfs files a snapshot reads, in [`Files`]' order.
const FILES: [&str; 7] = [
    "/proc/stat",
    "/proc/loadavg",
    "/proc/meminfo",
    "/proc/diskstats",
    "/proc/net/dev",
    "/proc/net/snmp",
    "/proc/net/netstat",
];

/// The procfs files of [`FILES`], opened once and read again from offset 0 at each snapshot: a
/// seq_file read at offset 0 starts over, so the content is as fresh as a new open's, without
/// the path walk through /proc that an open costs (the largest single cost of a scrape,
/// measured with perf: about a tenth of the agent's time in it). procfs, the crate, opens each
/// file anew; its parsers still read the text. /proc/net/* stays bound to the namespace the
/// agent had when it first read them, which is the one it runs in.
#[derive(Default)]
pub(crate) struct Files {
    open: Mutex<[Option<fs::File>; FILES.len()]>,
}

impl Files {
    /// The text of `FILES[index]` now.
    fn read(open: &mut [Option<fs::File>; FILES.len()], index: usize) -> Result<String, HostError> {
        let file = FILES[index];
        let error = |source| HostError::Io { file, source };
        if open[index].is_none() {
            open[index] = Some(fs::File::open(file).map_err(error)?);
        }
        let handle = open[index].as_ref().expect("opened above");
        let mut buf = Vec::with_capacity(4 << 10);
        let mut chunk = [0u8; 16 << 10];
        loop {
            match handle.read_at(&mut chunk, buf.len() as u64) {
                Ok(0) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // Opened afresh next time, should the file itself have gone bad.
                    open[index] = None;
                    return Err(error(e));
                }
            }
        }
        String::from_utf8(buf).map_err(|e| HostError::Format {
            file,
            detail: format!("not UTF-8: {e}"),
        })
    }
}

/// Everything [`read`] gathers, at one instant (to within the few milliseconds the reads take).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct HostSnapshot {
    pub(crate) taken_at_unix_ms: u64,
    /// All CPUs together (the `cpu` line of /proc/stat).
    pub(crate) cpu_total: CpuTimes,
    /// One entry per online CPU in CPU number order. /proc/stat leaves offline CPUs out, so the
    /// position equals the CPU number only while every CPU is online: [`CpuTimes::cpu`] is the
    /// number.
    pub(crate) cpus: Vec<CpuTimes>,
    /// The 1, 5 and 15 minute load averages.
    pub(crate) load: [f64; 3],
    pub(crate) memory: Memory,
    /// Block devices, as node_exporter selects them by default (see [`is_reported_disk`]).
    pub(crate) disks: Vec<DiskIo>,
    /// Every interface of the agent's network namespace, sorted by name.
    pub(crate) networks: Vec<NetIo>,
    pub(crate) tcp: TcpCounters,
}

/// Time a CPU (or all of them) spent in each mode since boot, in seconds. As in /proc/stat,
/// `user` and `nice` include the time spent running guests.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct CpuTimes {
    /// The CPU number; `None` for the all-CPU total.
    pub(crate) cpu: Option<u32>,
    pub(crate) user: f64,
    pub(crate) nice: f64,
    pub(crate) system: f64,
    pub(crate) idle: f64,
    pub(crate) iowait: f64,
    pub(crate) irq: f64,
    pub(crate) softirq: f64,
    pub(crate) steal: f64,
}

/// From /proc/meminfo, in bytes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Memory {
    pub(crate) total: u64,
    pub(crate) free: u64,
    /// The kernel's estimate of what can be allocated without swapping.
    pub(crate) available: u64,
    pub(crate) buffers: u64,
    pub(crate) cached: u64,
    pub(crate) swap_total: u64,
    pub(crate) swap_free: u64,
}

/// One block device's counters from /proc/diskstats, since boot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct DiskIo {
    pub(crate) name: String,
    /// Reads completed.
    pub(crate) reads: u64,
    /// Writes completed.
    pub(crate) writes: u64,
    pub(crate) read_bytes: u64,
    pub(crate) written_bytes: u64,
    /// Summed over requests, so it can grow faster than the wall clock.
    pub(crate) read_time_seconds: f64,
    pub(crate) write_time_seconds: f64,
    /// Time the device had at least one request in flight.
    pub(crate) io_time_seconds: f64,
    /// Requests in flight now.
    pub(crate) in_progress: u64,
}

/// One interface's counters from /proc/net/dev, since it was created.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct NetIo {
    pub(crate) name: String,
    pub(crate) rx_bytes: u64,
    pub(crate) rx_packets: u64,
    pub(crate) rx_errors: u64,
    /// /proc/net/dev's `drop` column: packets dropped plus those missed for lack of buffers.
    pub(crate) rx_drops: u64,
    pub(crate) tx_bytes: u64,
    pub(crate) tx_packets: u64,
    pub(crate) tx_errors: u64,
    pub(crate) tx_drops: u64,
}

/// IPv4 and IPv6 TCP counters from /proc/net/snmp (`Tcp:`) and /proc/net/netstat (`TcpExt:`);
/// the kernel counts both families together in these.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct TcpCounters {
    pub(crate) active_opens: u64,
    pub(crate) passive_opens: u64,
    pub(crate) attempt_fails: u64,
    pub(crate) estab_resets: u64,
    /// Connections in ESTABLISHED or CLOSE-WAIT now: a gauge, unlike the rest.
    pub(crate) curr_estab: u64,
    pub(crate) in_segs: u64,
    pub(crate) out_segs: u64,
    pub(crate) retrans_segs: u64,
    pub(crate) in_errs: u64,
    pub(crate) out_rsts: u64,
    pub(crate) listen_overflows: u64,
    pub(crate) listen_drops: u64,
    /// SYN and SYN-ACK retransmissions (`TCPSynRetrans`).
    pub(crate) syn_retrans: u64,
    /// Retransmission timer expiries (`TCPTimeouts`).
    pub(crate) timeouts: u64,
}

/// Reads every counter of a [`HostSnapshot`] from procfs.
pub(crate) fn read(files: &Files) -> Result<HostSnapshot, HostError> {
    // A clock set before 1970 reads as 0 rather than failing the snapshot.
    let taken_at_unix_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let mut open = files.open.lock().unwrap_or_else(|e| e.into_inner());
    let mut text = |index: usize| Files::read(&mut open, index);
    let (cpu_total, cpus) = parse_stat(&text(0)?, procfs::ticks_per_second())?;
    let load = parse_loadavg(&text(1)?)?;
    let memory =
        memory(&Meminfo::from_read(text(2)?.as_bytes()).map_err(proc_error("/proc/meminfo"))?)?;
    let disks = DiskStats::from_read(text(3)?.as_bytes())
        .map_err(proc_error("/proc/diskstats"))?
        .0
        .iter()
        .filter(|d| is_reported_disk(&d.name))
        .map(disk_io)
        .collect();
    let mut networks: Vec<NetIo> = InterfaceDeviceStatus::from_read(text(4)?.as_bytes())
        .map_err(proc_error("/proc/net/dev"))?
        .0
        .into_values()
        .map(|d| NetIo {
            name: d.name,
            rx_bytes: d.recv_bytes,
            rx_packets: d.recv_packets,
            rx_errors: d.recv_errs,
            rx_drops: d.recv_drop,
            tx_bytes: d.sent_bytes,
            tx_packets: d.sent_packets,
            tx_errors: d.sent_errs,
            tx_drops: d.sent_drop,
        })
        .collect();
    networks.sort_by(|a, b| a.name.cmp(&b.name));
    let tcp = tcp_counters(&text(5)?, &text(6)?)?;
    Ok(HostSnapshot {
        taken_at_unix_ms,
        cpu_total,
        cpus,
        load,
        memory,
        disks,
        networks,
        tcp,
    })
}

/// The CPU lines of /proc/stat. Parsed here rather than by procfs's `KernelStats`, which drops
/// the CPU number and so cannot say which CPU a line is once one has gone offline.
fn parse_stat(text: &str, ticks_per_second: u64) -> Result<(CpuTimes, Vec<CpuTimes>), HostError> {
    const FILE: &str = "/proc/stat";
    let format = |detail: String| HostError::Format { file: FILE, detail };
    if ticks_per_second == 0 {
        return Err(format("USER_HZ is 0".to_owned()));
    }
    let mut total = None;
    let mut cpus = Vec::new();
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        let Some(cpu) = fields.next().and_then(|f| f.strip_prefix("cpu")) else {
            continue;
        };
        let cpu = if cpu.is_empty() {
            None
        } else {
            Some(
                cpu.parse::<u32>()
                    .map_err(|_| format(format!("bad CPU name in {line:?}")))?,
            )
        };
        let mut ticks = [0u64; 8];
        for tick in &mut ticks {
            // Kernels since 2.6.11 print all eight; a missing one is a malformed line.
            *tick = fields
                .next()
                .and_then(|f| f.parse().ok())
                .ok_or_else(|| format(format!("fewer than 8 counters in {line:?}")))?;
        }
        let seconds = |i: usize| ticks[i] as f64 / ticks_per_second as f64;
        let times = CpuTimes {
            cpu,
            user: seconds(0),
            nice: seconds(1),
            system: seconds(2),
            idle: seconds(3),
            iowait: seconds(4),
            irq: seconds(5),
            softirq: seconds(6),
            steal: seconds(7),
        };
        match cpu {
            None => total = Some(times),
            Some(_) => cpus.push(times),
        }
    }
    let total = total.ok_or_else(|| format("no aggregate cpu line".to_owned()))?;
    cpus.sort_by_key(|c| c.cpu);
    Ok((total, cpus))
}

/// /proc/loadavg, read here because procfs parses the averages into `f32`, which turns the
/// kernel's `0.15` into 0.15000000596.
fn parse_loadavg(text: &str) -> Result<[f64; 3], HostError> {
    let mut fields = text.split_whitespace();
    let mut load = [0.0; 3];
    for value in &mut load {
        *value = fields
            .next()
            .and_then(|f| f.parse().ok())
            .ok_or_else(|| HostError::Format {
                file: "/proc/loadavg",
                detail: format!("expected three load averages in {text:?}"),
            })?;
    }
    Ok(load)
}

fn memory(info: &Meminfo) -> Result<Memory, HostError> {
    Ok(Memory {
        total: info.mem_total,
        free: info.mem_free,
        // Present since Linux 3.14, long before the eBPF features the agent needs.
        available: info.mem_available.ok_or_else(|| HostError::Format {
            file: "/proc/meminfo",
            detail: "no MemAvailable line".to_owned(),
        })?,
        buffers: info.buffers,
        cached: info.cached,
        swap_total: info.swap_total,
        swap_free: info.swap_free,
    })
}

fn disk_io(d: &DiskStat) -> DiskIo {
    DiskIo {
        name: d.name.clone(),
        reads: d.reads,
        writes: d.writes,
        read_bytes: d.sectors_read.saturating_mul(DISKSTATS_SECTOR),
        written_bytes: d.sectors_written.saturating_mul(DISKSTATS_SECTOR),
        read_time_seconds: d.time_reading as f64 / 1000.0,
        write_time_seconds: d.time_writing as f64 / 1000.0,
        io_time_seconds: d.time_in_progress as f64 / 1000.0,
        in_progress: d.in_progress,
    }
}

/// Whether a /proc/diskstats device is reported: node_exporter's default selection, so that
/// dashboards built for it read the same devices. Its exclusion pattern is
/// `^(z?ram|loop|fd|(h|s|v|xv)d[a-z]|nvme\d+n\d+p)\d+$`: RAM disks and zram (memory, not
/// disk), loop devices (their I/O lands again on the disk under the file), floppies, and
/// partitions of hd/sd/vd/xvd and NVMe disks (their I/O is counted again on the whole disk).
/// Whole disks, device-mapper (`dm-*`), md arrays and every other name are reported, including
/// partitions the pattern does not know (`mmcblk0p1`).
///
/// Every alternative ends in a non-digit, so the `\d+` is the name's whole trailing run of
/// digits, and matching reduces to checking what precedes it.
pub(crate) fn is_reported_disk(name: &str) -> bool {
    let stem = name.trim_end_matches(|c: char| c.is_ascii_digit());
    if stem.len() == name.len() {
        return true;
    }
    let excluded = match stem {
        "ram" | "zram" | "loop" | "fd" => true,
        _ => is_lettered_disk(stem) || is_nvme_partition_stem(stem),
    };
    !excluded
}

/// `(h|s|v|xv)d[a-z]`
fn is_lettered_disk(stem: &str) -> bool {
    let Some(prefix) = stem
        .strip_suffix(|c: char| c.is_ascii_lowercase())
        .and_then(|s| s.strip_suffix('d'))
    else {
        return false;
    };
    matches!(prefix, "h" | "s" | "v" | "xv")
}

/// `nvme\d+n\d+p`
fn is_nvme_partition_stem(stem: &str) -> bool {
    let digits = |s: &str| -> Option<usize> {
        let n = s.len() - s.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        (n > 0).then_some(n)
    };
    let Some(rest) = stem.strip_prefix("nvme") else {
        return false;
    };
    let Some(n) = digits(rest) else { return false };
    let Some(rest) = rest[n..].strip_prefix('n') else {
        return false;
    };
    let Some(n) = digits(rest) else { return false };
    &rest[n..] == "p"
}

/// The `Prefix: names` / `Prefix: values` line pairs of /proc/net/snmp and /proc/net/netstat,
/// keyed `Prefix:Name`. Parsed here rather than with procfs: it has no reader for
/// /proc/net/netstat, and its /proc/net/snmp reader insists on every field of every protocol,
/// so a kernel that drops one (UDP-Lite is on its way out) would cost us the TCP counters.
/// The counters of the row `keep` names (`"Tcp:"`) in /proc/net/snmp or /proc/net/netstat, by
/// name, borrowed from the text: a scrape reads a few hundred counters and keeps fourteen.
/// Every row pair is checked, kept or not.
fn snmp_table<'a>(
    text: &'a str,
    file: &'static str,
    keep: &str,
) -> Result<HashMap<&'a str, &'a str>, HostError> {
    let mut table = HashMap::with_capacity(128);
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    while let Some(names) = lines.next() {
        let format = |detail: String| HostError::Format { file, detail };
        let values = lines
            .next()
            .ok_or_else(|| format(format!("no value line after {names:?}")))?;
        let mut names = names.split_whitespace();
        let mut values = values.split_whitespace();
        let (prefix, value_prefix) = (names.next(), values.next());
        let Some(prefix) = prefix.filter(|p| p.ends_with(':') && value_prefix == Some(*p)) else {
            return Err(format(format!(
                "header {prefix:?} followed by values for {value_prefix:?}"
            )));
        };
        let (mut named, mut valued) = (0usize, 0usize);
        loop {
            match (names.next(), values.next()) {
                (Some(name), Some(value)) => {
                    if prefix == keep {
                        table.insert(name, value);
                    }
                    named += 1;
                    valued += 1;
                }
                (Some(_), None) => named += 1,
                (None, Some(_)) => valued += 1,
                (None, None) => break,
            }
        }
        if named != valued {
            return Err(format(format!(
                "{prefix} has {named} names but {valued} values"
            )));
        }
    }
    Ok(table)
}

fn tcp_counters(snmp: &str, netstat: &str) -> Result<TcpCounters, HostError> {
    let snmp = snmp_table(snmp, "/proc/net/snmp", "Tcp:")?;
    let netstat = snmp_table(netstat, "/proc/net/netstat", "TcpExt:")?;
    let get = |table: &HashMap<&str, &str>, file: &'static str, prefix: &str, name: &str| {
        let value = table.get(name).ok_or_else(|| HostError::Format {
            file,
            detail: format!("no {prefix}{name} counter"),
        })?;
        value.parse::<u64>().map_err(|_| HostError::Format {
            file,
            detail: format!("{prefix}{name} is {value:?}, not a counter"),
        })
    };
    let tcp = |name: &str| get(&snmp, "/proc/net/snmp", "Tcp:", name);
    let ext = |name: &str| get(&netstat, "/proc/net/netstat", "TcpExt:", name);
    Ok(TcpCounters {
        active_opens: tcp("ActiveOpens")?,
        passive_opens: tcp("PassiveOpens")?,
        attempt_fails: tcp("AttemptFails")?,
        estab_resets: tcp("EstabResets")?,
        curr_estab: tcp("CurrEstab")?,
        in_segs: tcp("InSegs")?,
        out_segs: tcp("OutSegs")?,
        retrans_segs: tcp("RetransSegs")?,
        in_errs: tcp("InErrs")?,
        out_rsts: tcp("OutRsts")?,
        listen_overflows: ext("ListenOverflows")?,
        listen_drops: ext("ListenDrops")?,
        syn_retrans: ext("TCPSynRetrans")?,
        timeouts: ext("TCPTimeouts")?,
    })
}

#[cfg(test)]
mod tests {
    use std::{
        collections::{BTreeMap, BTreeSet},
        io::{Read, Write},
        net::{TcpListener, TcpStream},
        path::Path,
        process::{Child, Command, Stdio},
        thread,
        time::{Duration, Instant},
    };

    use super::*;

    #[test]
    fn stat_keeps_cpu_numbers_and_converts_ticks() {
        // cpu1 offline: /proc/stat leaves it out.
        let text = "cpu  1000 20 300 40000 50 6 7 8 9 10\n\
                    cpu0 500 10 150 20000 25 3 3 4 9 10\n\
                    cpu2 500 10 150 20000 25 3 4 4 0 0\n\
                    intr 12345 0 0\nctxt 99\nbtime 1700000000\n";
        let (total, cpus) = parse_stat(text, 100).expect("parse");
        assert_eq!(total.cpu, None);
        assert_eq!(total.user, 10.0);
        assert_eq!(total.idle, 400.0);
        assert_eq!(total.steal, 0.08);
        assert_eq!(
            cpus.iter().map(|c| c.cpu).collect::<Vec<_>>(),
            [Some(0), Some(2)]
        );
        assert_eq!(cpus[1].softirq, 0.04);
        // A kernel with USER_HZ 250 (not Linux on x86, but the divisor is the real one).
        let (total, _) = parse_stat(text, 250).expect("parse");
        assert_eq!(total.user, 4.0);
    }

    #[test]
    fn stat_refuses_short_lines_and_a_missing_total() {
        assert!(matches!(
            parse_stat("cpu  1 2 3 4\n", 100),
            Err(HostError::Format { .. })
        ));
        assert!(matches!(
            parse_stat("cpu0 1 2 3 4 5 6 7 8\n", 100),
            Err(HostError::Format { .. })
        ));
        assert!(matches!(
            parse_stat("cpux 1 2 3 4 5 6 7 8\n", 100),
            Err(HostError::Format { .. })
        ));
    }

    #[test]
    fn loadavg_keeps_the_kernels_decimals() {
        let load = parse_loadavg("0.15 0.30 12.05 2/345 6789\n").expect("parse");
        assert_eq!(load, [0.15, 0.30, 12.05]);
        assert!(parse_loadavg("0.15 0.30\n").is_err());
    }

    #[test]
    fn disk_selection_follows_node_exporter() {
        for name in [
            "sda",
            "sdaa1",
            "vda",
            "xvdb",
            "hdc",
            "nvme0n1",
            "nvme10n2",
            "dm-0",
            "dm-12",
            "md127",
            "mmcblk0",
            "mmcblk0p1",
            "sr0",
            "vd1",
            "nbd0",
            "rbd3",
        ] {
            assert!(is_reported_disk(name), "{name} should be reported");
        }
        for name in [
            "sda1",
            "sdz15",
            "vda2",
            "xvda1",
            "hdb3",
            "nvme0n1p1",
            "nvme12n3p10",
            "loop0",
            "loop17",
            "ram0",
            "zram0",
            "fd0",
        ] {
            assert!(!is_reported_disk(name), "{name} should be left out");
        }
    }

    #[test]
    fn diskstats_sectors_are_512_bytes_and_times_milliseconds() {
        let line = " 259       0 nvme0n1 100 5 2048 300 40 2 4096 500 1 700 800 0 0 0 0 10 20";
        let stat = DiskStat::from_line(line).expect("diskstats line");
        let io = disk_io(&stat);
        assert_eq!(io.name, "nvme0n1");
        assert_eq!((io.reads, io.writes), (100, 40));
        assert_eq!(io.read_bytes, 2048 * 512);
        assert_eq!(io.written_bytes, 4096 * 512);
        assert_eq!(io.read_time_seconds, 0.3);
        assert_eq!(io.write_time_seconds, 0.5);
        assert_eq!(io.io_time_seconds, 0.7);
        assert_eq!(io.in_progress, 1);
    }

    const SNMP: &str = "\
Ip: Forwarding DefaultTTL InReceives
Ip: 1 64 20593
IcmpMsg: InType3
IcmpMsg: 2
Tcp: RtoAlgorithm RtoMin RtoMax MaxConn ActiveOpens PassiveOpens AttemptFails EstabResets CurrEstab InSegs OutSegs RetransSegs InErrs OutRsts InCsumErrors
Tcp: 1 200 120000 -1 66 4 1 27 3 20455 11770 12 2 35 0
Udp: InDatagrams NoPorts
Udp: 136 0
";
    const NETSTAT: &str = "\
TcpExt: SyncookiesSent ListenOverflows ListenDrops TCPTimeouts TCPSynRetrans
TcpExt: 0 5 6 7 8
IpExt: InNoRoutes InOctets
IpExt: 0 123456789012
";

    #[test]
    fn tcp_counters_from_snmp_and_netstat() {
        let tcp = tcp_counters(SNMP, NETSTAT).expect("parse");
        assert_eq!(
            tcp,
            TcpCounters {
                active_opens: 66,
                passive_opens: 4,
                attempt_fails: 1,
                estab_resets: 27,
                curr_estab: 3,
                in_segs: 20455,
                out_segs: 11770,
                retrans_segs: 12,
                in_errs: 2,
                out_rsts: 35,
                listen_overflows: 5,
                listen_drops: 6,
                syn_retrans: 8,
                timeouts: 7,
            }
        );
    }

    #[test]
    fn snmp_tables_refuse_mismatched_lines() {
        let err = snmp_table("Tcp: A B\nUdp: 1 2\n", "/proc/net/snmp", "Tcp:").unwrap_err();
        assert!(err.to_string().contains("Udp"), "{err}");
        let err = snmp_table("Tcp: A B\nTcp: 1\n", "/proc/net/snmp", "Tcp:").unwrap_err();
        assert!(err.to_string().contains("2 names but 1 values"), "{err}");
        assert!(snmp_table("Tcp: A B\n", "/proc/net/snmp", "Tcp:").is_err());
        let err = tcp_counters(SNMP, "TcpExt: ListenOverflows\nTcpExt: 1\n").unwrap_err();
        assert!(err.to_string().contains("TcpExt:ListenDrops"), "{err}");
    }

    #[test]
    fn reads_this_host() {
        let s = read(&Files::default()).expect("host snapshot");
        assert!(!s.cpus.is_empty());
        assert!(s.cpus.iter().all(|c| c.cpu.is_some()));
        let idle: f64 = s.cpus.iter().map(|c| c.idle).sum();
        // The aggregate line sums every possible CPU; the per-CPU lines only online ones.
        assert!(
            s.cpu_total.idle + 1.0 >= idle,
            "{} < {idle}",
            s.cpu_total.idle
        );
        assert!(s.memory.total > 0 && s.memory.available <= s.memory.total);
        assert!(s.networks.iter().any(|n| n.name == "lo"));
        assert!(s.disks.iter().all(|d| is_reported_disk(&d.name)));
        assert!(s.taken_at_unix_ms > 1_600_000_000_000);
        let json = serde_json::to_string(&s).expect("serialize");
        assert_eq!(
            serde_json::from_str::<HostSnapshot>(&json).expect("deserialize"),
            s
        );
    }

    #[test]
    fn files_kept_open_read_fresh_content() {
        let files = Files::default();
        let busy = |s: &HostSnapshot| s.cpu_total.user + s.cpu_total.system;
        let first = read(&files).expect("first snapshot");
        let lo_packets = |s: &HostSnapshot| {
            s.networks
                .iter()
                .find(|n| n.name == "lo")
                .map(|n| n.tx_packets)
                .expect("lo")
        };
        // Work the kernel can see: CPU time, and packets over loopback.
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let to = socket.local_addr().expect("addr");
        let started = std::time::Instant::now();
        while started.elapsed() < std::time::Duration::from_millis(300) {
            socket.send_to(b"x", to).expect("send");
        }
        let second = read(&files).expect("second snapshot, from the same open files");
        assert!(
            busy(&second) > busy(&first),
            "{:?} -> {:?}",
            first.cpu_total,
            second.cpu_total
        );
        assert!(lo_packets(&second) > lo_packets(&first));
    }

    const NODE_EXPORTER: &str = "/usr/bin/prometheus-node-exporter";
    /// node_exporter's current default (1.5, in Debian 12, did not yet leave out zram).
    const NODE_EXPORTER_DISK_EXCLUDE: &str = r"^(z?ram|loop|fd|(h|s|v|xv)d[a-z]|nvme\d+n\d+p)\d+$";

    /// Kills the exporter however the test ends.
    struct Exporter(Child);

    impl Drop for Exporter {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    fn http_get(port: u16, path: &str) -> Result<String, String> {
        let mut stream =
            TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect: {e}"))?;
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| e.to_string())?;
        write!(
            stream,
            "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n"
        )
        .map_err(|e| format!("send: {e}"))?;
        let mut response = String::new();
        stream
            .read_to_string(&mut response)
            .map_err(|e| format!("receive: {e}"))?;
        let (head, body) = response
            .split_once("\r\n\r\n")
            .ok_or_else(|| format!("no header end in {response:?}"))?;
        match head.split_whitespace().nth(1) {
            Some("200") => Ok(body.to_owned()),
            _ => Err(format!("answered {head:?}")),
        }
    }

    type Samples = BTreeMap<String, Vec<(BTreeMap<String, String>, f64)>>;

    /// A reader of the text format written for this test, independent of the writer in
    /// `exposition`.
    fn parse_samples(text: &str) -> Samples {
        let mut samples = Samples::new();
        for line in text
            .lines()
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
        {
            let name_end = line.find(['{', ' ']).expect("sample line");
            let name = &line[..name_end];
            let mut rest = &line[name_end..];
            let mut labels = BTreeMap::new();
            if let Some(inner) = rest.strip_prefix('{') {
                let mut chars = inner.char_indices();
                let mut label = String::new();
                let mut end = None;
                while let Some((i, c)) = chars.next() {
                    match c {
                        '}' => {
                            end = Some(i + 1);
                            break;
                        }
                        ',' => {}
                        '=' => {
                            assert_eq!(chars.next().map(|(_, c)| c), Some('"'), "{line}");
                            let mut value = String::new();
                            while let Some((_, c)) = chars.next() {
                                match c {
                                    '"' => break,
                                    '\\' => match chars.next().map(|(_, c)| c) {
                                        Some('n') => value.push('\n'),
                                        Some(c) => value.push(c),
                                        None => panic!("dangling escape in {line}"),
                                    },
                                    c => value.push(c),
                                }
                            }
                            labels.insert(std::mem::take(&mut label), value);
                        }
                        c => label.push(c),
                    }
                }
                rest = &inner[end.expect("closing brace")..];
            }
            let value = rest.split_whitespace().next().expect("value");
            let value: f64 = value.parse().unwrap_or_else(|_| panic!("value in {line}"));
            samples
                .entry(name.to_owned())
                .or_default()
                .push((labels, value));
        }
        samples
    }

    fn sample(samples: &Samples, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        samples.get(name)?.iter().find_map(|(l, v)| {
            (l.len() == labels.len()
                && labels
                    .iter()
                    .all(|(k, w)| l.get(*k).map(|s| s.as_str()) == Some(*w)))
            .then_some(*v)
        })
    }

    fn devices(samples: &Samples, name: &str) -> BTreeSet<String> {
        samples
            .get(name)
            .map(|s| {
                s.iter()
                    .filter_map(|(l, _)| l.get("device").cloned())
                    .collect()
            })
            .unwrap_or_default()
    }

    fn start_node_exporter() -> (Exporter, u16) {
        assert!(
            Path::new(NODE_EXPORTER).exists(),
            "{NODE_EXPORTER} is not installed: apt-get install prometheus-node-exporter"
        );
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let child = Command::new(NODE_EXPORTER)
            .args([
                "--collector.disable-defaults",
                "--collector.cpu",
                "--collector.diskstats",
                "--collector.netdev",
                "--collector.meminfo",
                &format!("--collector.diskstats.device-exclude={NODE_EXPORTER_DISK_EXCLUDE}"),
                // Debian's build leaves out lo by default; the snapshot has every interface.
                "--collector.netdev.device-exclude=^$",
                &format!("--web.listen-address=127.0.0.1:{port}"),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {NODE_EXPORTER} ({e}): apt-get install prometheus-node-exporter"
                )
            });
        let mut exporter = Exporter(child);
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(Some(status)) = exporter.0.try_wait() {
                let mut stderr = String::new();
                if let Some(mut pipe) = exporter.0.stderr.take() {
                    let _ = pipe.read_to_string(&mut stderr);
                }
                panic!("node_exporter exited with {status}: {stderr}");
            }
            match http_get(port, "/metrics") {
                Ok(_) => return (exporter, port),
                Err(e) if Instant::now() > deadline => {
                    panic!("node_exporter did not answer on port {port} in 15 s: {e}")
                }
                Err(_) => thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    /// The largest `after - theirs`, after checking `before <= theirs <= after`: the counters
    /// only grow, and node_exporter read them between our two snapshots. The tolerance is
    /// exactly what moved while it was being scraped, nothing more.
    fn bracketed<T>(
        what: &str,
        theirs: &Samples,
        metric: &str,
        before: &[T],
        after: &[T],
        name: impl Fn(&T) -> &str,
        value: impl Fn(&T) -> u64,
    ) -> (u64, String) {
        let mut worst = (0, "-".to_owned());
        for a in after {
            let device = name(a);
            let b = before
                .iter()
                .find(|b| name(b) == device)
                .unwrap_or_else(|| panic!("{what} {device} appeared during the test"));
            let t = sample(theirs, metric, &[("device", device)])
                .unwrap_or_else(|| panic!("node_exporter has no {metric} for {device}"));
            let (b, a) = (value(b), value(a));
            assert!(
                b as f64 <= t && t <= a as f64,
                "{metric}{{device={device:?}}}: node_exporter read {t}, outside our {b} ..= {a}"
            );
            let ahead = a - t as u64;
            if ahead > worst.0 {
                worst = (ahead, device.to_owned());
            }
        }
        worst
    }

    #[test]
    fn agrees_with_node_exporter() {
        let (_exporter, port) = start_node_exporter();
        let before = read(&Files::default()).expect("host snapshot");
        let text = http_get(port, "/metrics").expect("scrape node_exporter");
        let ours = read(&Files::default()).expect("host snapshot");
        let theirs = parse_samples(&text);

        // CPU: node_exporter divides the same ticks by USER_HZ; the two reads are some
        // milliseconds apart on CPUs that keep counting.
        let their_cpus: BTreeSet<String> = theirs["node_cpu_seconds_total"]
            .iter()
            .filter_map(|(l, _)| l.get("cpu").cloned())
            .collect();
        let our_cpus: BTreeSet<String> = ours
            .cpus
            .iter()
            .filter_map(|c| c.cpu.map(|n| n.to_string()))
            .collect();
        assert_eq!(our_cpus, their_cpus, "CPU sets differ");
        let mut cpu_worst = (0.0f64, "-".to_owned());
        for c in &ours.cpus {
            let cpu = c.cpu.expect("numbered").to_string();
            for (mode, value) in [
                ("user", c.user),
                ("nice", c.nice),
                ("system", c.system),
                ("idle", c.idle),
                ("iowait", c.iowait),
                ("irq", c.irq),
                ("softirq", c.softirq),
                ("steal", c.steal),
            ] {
                let t = sample(
                    &theirs,
                    "node_cpu_seconds_total",
                    &[("cpu", &cpu), ("mode", mode)],
                )
                .unwrap_or_else(|| panic!("no node_cpu_seconds_total for cpu {cpu} {mode}"));
                let diff = (value - t).abs();
                assert!(
                    diff <= 0.01 * t + 0.5,
                    "cpu {cpu} {mode}: ours {value} s, node_exporter {t} s"
                );
                if diff > cpu_worst.0 {
                    cpu_worst = (diff, format!("cpu {cpu} {mode}"));
                }
            }
        }

        let our_disks: BTreeSet<String> = ours.disks.iter().map(|d| d.name.clone()).collect();
        assert_eq!(
            our_disks,
            devices(&theirs, "node_disk_reads_completed_total"),
            "disk sets differ"
        );
        fn disk_name(d: &DiskIo) -> &str {
            &d.name
        }
        let disk_reads = bracketed(
            "disk",
            &theirs,
            "node_disk_reads_completed_total",
            &before.disks,
            &ours.disks,
            disk_name,
            |d| d.reads,
        );
        let disk_read_bytes = bracketed(
            "disk",
            &theirs,
            "node_disk_read_bytes_total",
            &before.disks,
            &ours.disks,
            disk_name,
            |d| d.read_bytes,
        );
        let disk_written_bytes = bracketed(
            "disk",
            &theirs,
            "node_disk_written_bytes_total",
            &before.disks,
            &ours.disks,
            disk_name,
            |d| d.written_bytes,
        );

        let our_links: BTreeSet<String> = ours.networks.iter().map(|n| n.name.clone()).collect();
        assert_eq!(
            our_links,
            devices(&theirs, "node_network_receive_bytes_total"),
            "interface sets differ (did another test add or remove one meanwhile?)"
        );
        fn link_name(n: &NetIo) -> &str {
            &n.name
        }
        let rx = bracketed(
            "interface",
            &theirs,
            "node_network_receive_bytes_total",
            &before.networks,
            &ours.networks,
            link_name,
            |n| n.rx_bytes,
        );
        let tx = bracketed(
            "interface",
            &theirs,
            "node_network_transmit_bytes_total",
            &before.networks,
            &ours.networks,
            link_name,
            |n| n.tx_bytes,
        );

        let mem_total = sample(&theirs, "node_memory_MemTotal_bytes", &[]).expect("MemTotal");
        assert_eq!(ours.memory.total as f64, mem_total, "MemTotal");

        let _ = writeln!(
            std::io::stderr(),
            "node_exporter agreement ({} CPUs, disks {:?}, interfaces {:?}); ours read right \
             after, ahead of node_exporter by at most: cpu {:.3} s ({}); disk reads {} ({}), \
             read {} B ({}), written {} B ({}); network rx {} B ({}), tx {} B ({}); \
             MemTotal equal ({} B)",
            our_cpus.len(),
            our_disks,
            our_links,
            cpu_worst.0,
            cpu_worst.1,
            disk_reads.0,
            disk_reads.1,
            disk_read_bytes.0,
            disk_read_bytes.1,
            disk_written_bytes.0,
            disk_written_bytes.1,
            rx.0,
            rx.1,
            tx.0,
            tx.1,
            ours.memory.total,
        );
    }
}
