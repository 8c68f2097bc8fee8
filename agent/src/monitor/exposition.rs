//! The Prometheus text exposition format, version 0.0.4: a writer for metric families, and the
//! rendering of a [`HostSnapshot`] in it ([`host_metrics`]).
//!
//! A writer rather than a client library's registry: client libraries model in-process
//! instrumentation, counters the program itself increments and keeps between scrapes. What the
//! agent exposes is counted by the kernel; each scrape reads a fresh snapshot and renders it,
//! so there is no state to register, keep or reset, only text to write correctly.
//!
//! The writer checks what would make a scraper reject the whole page (names, label names,
//! a family written twice with different types) with `debug_assert`s: the names come from
//! this program's code, not from input, so the debug builds the tests run catch them.

use std::{collections::HashMap, fmt::Write as _};

use super::host::{CpuTimes, DiskIo, HostSnapshot, NetIo};

/// The `Content-Type` of a page [`Exposition::finish`] renders.
pub(crate) const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Label pairs of one sample.
type Labels<'a> = &'a [(&'a str, &'a str)];

/// One histogram series: its labels, its (upper bound, cumulative count) buckets in ascending
/// order of bound, the sum of the observations and their count.
pub(crate) type HistogramSeries<'a> = (&'a [(&'a str, &'a str)], &'a [(f64, u64)], f64, u64);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

#[derive(Debug)]
struct Family {
    name: String,
    help: String,
    kind: Kind,
    /// The rendered sample lines.
    samples: String,
}

/// One exposition page being written: families appear in the order they were first written,
/// each with one HELP and one TYPE line however many times it is written to.
#[derive(Debug, Default)]
pub(crate) struct Exposition {
    families: Vec<Family>,
    by_name: HashMap<String, usize>,
}

impl Exposition {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// A counter family; its name must end in `_total`, as Prometheus's naming conventions
    /// (and promtool's lint) require.
    pub(crate) fn counter(&mut self, name: &str, help: &str, samples: &[(&[(&str, &str)], f64)]) {
        debug_assert!(
            name.ends_with("_total"),
            "counter {name:?} must end in _total"
        );
        self.simple(Kind::Counter, name, help, samples);
    }

    pub(crate) fn gauge(&mut self, name: &str, help: &str, samples: &[(&[(&str, &str)], f64)]) {
        self.simple(Kind::Gauge, name, help, samples);
    }

    /// A histogram family. For each series, `buckets` holds (upper bound, cumulative count)
    /// in ascending order of bound; the `+Inf` bucket is written from `count` (a trailing
    /// `+Inf` bucket in `buckets` must equal it and is not written twice).
    pub(crate) fn histogram(&mut self, name: &str, help: &str, series: &[HistogramSeries<'_>]) {
        let Some(out) = self.family(Kind::Histogram, name, help) else {
            return;
        };
        for &(labels, buckets, sum, count) in series {
            debug_assert!(
                labels.iter().all(|(l, _)| *l != "le"),
                "{name}: `le` is the histogram's own label"
            );
            debug_assert!(
                buckets
                    .windows(2)
                    .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1),
                "{name}: buckets must ascend in bound and cumulative count"
            );
            let mut last = 0;
            for &(bound, cumulative) in buckets {
                if bound == f64::INFINITY {
                    // Written below from `count`; a second +Inf line would be a duplicate.
                    debug_assert_eq!(cumulative, count, "{name}: +Inf bucket is not the count");
                    continue;
                }
                debug_assert!(!bound.is_nan(), "{name}: NaN bucket bound");
                push_sample(out, name, "_bucket", labels, Some(bound), cumulative as f64);
                last = cumulative;
            }
            debug_assert!(last <= count, "{name}: a bucket holds more than the count");
            push_sample(
                out,
                name,
                "_bucket",
                labels,
                Some(f64::INFINITY),
                count as f64,
            );
            push_sample(out, name, "_sum", labels, None, sum);
            push_sample(out, name, "_count", labels, None, count as f64);
        }
    }

    /// The page. Families without samples are left out: a HELP and TYPE alone say nothing.
    pub(crate) fn finish(self) -> String {
        let size: usize = self
            .families
            .iter()
            .map(|f| f.samples.len() + f.help.len() + 2 * f.name.len() + 32)
            .sum();
        let mut out = String::with_capacity(size);
        for family in self.families.iter().filter(|f| !f.samples.is_empty()) {
            out.push_str("# HELP ");
            out.push_str(&family.name);
            out.push(' ');
            push_escaped(&mut out, &family.help, false);
            out.push_str("\n# TYPE ");
            out.push_str(&family.name);
            out.push(' ');
            out.push_str(family.kind.as_str());
            out.push('\n');
            out.push_str(&family.samples);
        }
        out
    }

    fn simple(&mut self, kind: Kind, name: &str, help: &str, samples: &[(Labels<'_>, f64)]) {
        let Some(out) = self.family(kind, name, help) else {
            return;
        };
        for &(labels, value) in samples {
            push_sample(out, name, "", labels, None, value);
        }
    }

    /// The sample buffer of family `name`, created on first use. `None` when the name was
    /// already written with another type: the scraper would reject the whole page over it,
    /// so those samples are dropped rather than written.
    fn family(&mut self, kind: Kind, name: &str, help: &str) -> Option<&mut String> {
        debug_assert!(is_metric_name(name), "invalid metric name {name:?}");
        let index = match self.by_name.get(name) {
            Some(&index) => {
                let existing = self.families[index].kind;
                if existing != kind {
                    debug_assert!(
                        false,
                        "{name} written as a {} and as a {}",
                        existing.as_str(),
                        kind.as_str()
                    );
                    return None;
                }
                index
            }
            None => {
                self.families.push(Family {
                    name: name.to_owned(),
                    help: help.to_owned(),
                    kind,
                    samples: String::new(),
                });
                self.by_name
                    .insert(name.to_owned(), self.families.len() - 1);
                self.families.len() - 1
            }
        };
        Some(&mut self.families[index].samples)
    }
}

fn push_sample(
    out: &mut String,
    name: &str,
    suffix: &str,
    labels: Labels<'_>,
    le: Option<f64>,
    value: f64,
) {
    out.push_str(name);
    out.push_str(suffix);
    if !labels.is_empty() || le.is_some() {
        out.push('{');
        for (i, (label, value)) in labels.iter().enumerate() {
            debug_assert!(is_label_name(label), "{name}: invalid label name {label:?}");
            debug_assert!(
                labels[..i].iter().all(|(l, _)| l != label),
                "{name}: label {label:?} given twice"
            );
            if i > 0 {
                out.push(',');
            }
            out.push_str(label);
            out.push_str("=\"");
            push_escaped(out, value, true);
            out.push('"');
        }
        if let Some(le) = le {
            if !labels.is_empty() {
                out.push(',');
            }
            out.push_str("le=\"");
            push_float(out, le);
            out.push('"');
        }
        out.push('}');
    }
    out.push(' ');
    push_float(out, value);
    out.push('\n');
}

/// Escapes as the format requires: backslash and newline everywhere, the double quote only
/// inside label values (HELP text is not quoted).
fn push_escaped(out: &mut String, text: &str, quoted: bool) {
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '"' if quoted => out.push_str("\\\""),
            c => out.push(c),
        }
    }
}

/// Writes a sample value or bucket bound as Prometheus parses it: `NaN`, `+Inf`, `-Inf`;
/// integral values as plain digits (a byte counter reads `1234567`, not Go's `1.234567e+06`);
/// everything else in the shortest form that reads back to the same `f64`, positional where
/// that stays short and with an exponent beyond.
fn push_float(out: &mut String, value: f64) {
    if value.is_nan() {
        out.push_str("NaN");
    } else if value == f64::INFINITY {
        out.push_str("+Inf");
    } else if value == f64::NEG_INFINITY {
        out.push_str("-Inf");
    } else if value == 0.0 {
        // Also -0.0, which is 0 to every reader.
        out.push('0');
    } else if value.fract() == 0.0 && value.abs() < 9_007_199_254_740_992.0 {
        // Exactly an integer (below 2^53 every integral f64 is one): integer formatting is the
        // same text as `Display`'s, and most samples (counters, bytes) take this path.
        let _ = write!(out, "{}", value as i64);
    } else if (1e-4..1e21).contains(&value.abs()) {
        // Rust's `Display` for f64 is the shortest round-trip form, never with an exponent,
        // and without a fraction for integral values.
        let _ = write!(out, "{value}");
    } else {
        let _ = write!(out, "{value:e}");
    }
}

/// `[a-zA-Z_:][a-zA-Z0-9_:]*`
fn is_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// `[a-zA-Z_][a-zA-Z0-9_]*`, without the `__` prefix Prometheus reserves for itself.
fn is_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.starts_with("__")
}

type Write = fn(&mut Exposition, &str, &str, &[(Labels<'_>, f64)]);

/// One family with a `device` label per disk or interface.
fn per_device<T>(
    e: &mut Exposition,
    write: Write,
    name: &str,
    help: &str,
    items: &[T],
    device: impl Fn(&T) -> &str,
    value: impl Fn(&T) -> f64,
) {
    let labels: Vec<[(&str, &str); 1]> = items.iter().map(|i| [("device", device(i))]).collect();
    let samples: Vec<(Labels<'_>, f64)> = labels
        .iter()
        .zip(items)
        .map(|(l, i)| (&l[..], value(i)))
        .collect();
    write(e, name, help, &samples);
}

type CpuMode = (&'static str, fn(&CpuTimes) -> f64);

const CPU_MODES: [CpuMode; 8] = [
    ("user", |c| c.user),
    ("nice", |c| c.nice),
    ("system", |c| c.system),
    ("idle", |c| c.idle),
    ("iowait", |c| c.iowait),
    ("irq", |c| c.irq),
    ("softirq", |c| c.softirq),
    ("steal", |c| c.steal),
];

type DiskCounter = (&'static str, &'static str, fn(&DiskIo) -> f64);

const DISK_COUNTERS: [DiskCounter; 7] = [
    (
        "faultline_disk_reads_completed_total",
        "Reads completed, from /proc/diskstats.",
        |d| d.reads as f64,
    ),
    (
        "faultline_disk_writes_completed_total",
        "Writes completed, from /proc/diskstats.",
        |d| d.writes as f64,
    ),
    (
        "faultline_disk_read_bytes_total",
        "Bytes read (512-byte sectors as /proc/diskstats counts them).",
        |d| d.read_bytes as f64,
    ),
    (
        "faultline_disk_written_bytes_total",
        "Bytes written (512-byte sectors as /proc/diskstats counts them).",
        |d| d.written_bytes as f64,
    ),
    (
        "faultline_disk_read_time_seconds_total",
        "Time spent on reads, summed over requests.",
        |d| d.read_time_seconds,
    ),
    (
        "faultline_disk_write_time_seconds_total",
        "Time spent on writes, summed over requests.",
        |d| d.write_time_seconds,
    ),
    (
        "faultline_disk_io_time_seconds_total",
        "Time the device had at least one request in flight.",
        |d| d.io_time_seconds,
    ),
];

type NetCounter = (&'static str, &'static str, fn(&NetIo) -> f64);

const NET_COUNTERS: [NetCounter; 8] = [
    (
        "faultline_network_receive_bytes_total",
        "Bytes received, from /proc/net/dev.",
        |n| n.rx_bytes as f64,
    ),
    (
        "faultline_network_receive_packets_total",
        "Packets received, from /proc/net/dev.",
        |n| n.rx_packets as f64,
    ),
    (
        "faultline_network_receive_errors_total",
        "Receive errors, from /proc/net/dev.",
        |n| n.rx_errors as f64,
    ),
    (
        "faultline_network_receive_drop_total",
        "Received packets dropped or missed, from /proc/net/dev.",
        |n| n.rx_drops as f64,
    ),
    (
        "faultline_network_transmit_bytes_total",
        "Bytes transmitted, from /proc/net/dev.",
        |n| n.tx_bytes as f64,
    ),
    (
        "faultline_network_transmit_packets_total",
        "Packets transmitted, from /proc/net/dev.",
        |n| n.tx_packets as f64,
    ),
    (
        "faultline_network_transmit_errors_total",
        "Transmit errors, from /proc/net/dev.",
        |n| n.tx_errors as f64,
    ),
    (
        "faultline_network_transmit_drop_total",
        "Packets dropped on transmit, from /proc/net/dev.",
        |n| n.tx_drops as f64,
    ),
];

/// Writes a host snapshot. Counts become `f64`, exact up to 2^53 (9 PB of bytes).
///
/// CPU time is per CPU only, as node_exporter exposes it; `sum by (mode)` gives the host.
pub(crate) fn host_metrics(e: &mut Exposition, s: &HostSnapshot) {
    let numbered: Vec<(String, &CpuTimes)> = s
        .cpus
        .iter()
        .filter_map(|c| c.cpu.map(|n| (n.to_string(), c)))
        .collect();
    let cpu_labels: Vec<([(&str, &str); 2], f64)> = numbered
        .iter()
        .flat_map(|(n, c)| {
            CPU_MODES
                .iter()
                .map(move |(mode, time)| ([("cpu", n.as_str()), ("mode", *mode)], time(c)))
        })
        .collect();
    let cpu_samples: Vec<(Labels<'_>, f64)> =
        cpu_labels.iter().map(|(l, v)| (&l[..], *v)).collect();
    e.counter(
        "faultline_cpu_seconds_total",
        "Seconds each CPU spent in each mode, from /proc/stat.",
        &cpu_samples,
    );

    for (name, minutes, value) in [
        ("faultline_load1", 1, s.load[0]),
        ("faultline_load5", 5, s.load[1]),
        ("faultline_load15", 15, s.load[2]),
    ] {
        e.gauge(
            name,
            &format!("{minutes}-minute load average."),
            &[(&[], value)],
        );
    }

    let m = &s.memory;
    for (name, help, bytes) in [
        (
            "faultline_memory_total_bytes",
            "Usable RAM (MemTotal).",
            m.total,
        ),
        (
            "faultline_memory_free_bytes",
            "Unused RAM (MemFree).",
            m.free,
        ),
        (
            "faultline_memory_available_bytes",
            "RAM available without swapping, as the kernel estimates it (MemAvailable).",
            m.available,
        ),
        (
            "faultline_memory_buffers_bytes",
            "Block device buffers (Buffers).",
            m.buffers,
        ),
        (
            "faultline_memory_cached_bytes",
            "Page cache (Cached).",
            m.cached,
        ),
        (
            "faultline_memory_swap_total_bytes",
            "Swap space (SwapTotal).",
            m.swap_total,
        ),
        (
            "faultline_memory_swap_free_bytes",
            "Unused swap space (SwapFree).",
            m.swap_free,
        ),
    ] {
        e.gauge(name, help, &[(&[], bytes as f64)]);
    }

    for (name, help, value) in DISK_COUNTERS {
        per_device(
            e,
            Exposition::counter,
            name,
            help,
            &s.disks,
            |d| &d.name,
            value,
        );
    }
    per_device(
        e,
        Exposition::gauge,
        "faultline_disk_io_now",
        "Requests in flight.",
        &s.disks,
        |d| &d.name,
        |d| d.in_progress as f64,
    );

    for (name, help, value) in NET_COUNTERS {
        per_device(
            e,
            Exposition::counter,
            name,
            help,
            &s.networks,
            |n| &n.name,
            value,
        );
    }

    let t = &s.tcp;
    for (name, help, count) in [
        (
            "faultline_tcp_active_opens_total",
            "Connections opened from here (Tcp ActiveOpens).",
            t.active_opens,
        ),
        (
            "faultline_tcp_passive_opens_total",
            "Connections accepted (Tcp PassiveOpens).",
            t.passive_opens,
        ),
        (
            "faultline_tcp_failed_attempts_total",
            "Connection attempts that failed (Tcp AttemptFails).",
            t.attempt_fails,
        ),
        (
            "faultline_tcp_established_resets_total",
            "Established connections reset (Tcp EstabResets).",
            t.estab_resets,
        ),
        (
            "faultline_tcp_received_segments_total",
            "Segments received (Tcp InSegs).",
            t.in_segs,
        ),
        (
            "faultline_tcp_sent_segments_total",
            "Segments sent (Tcp OutSegs).",
            t.out_segs,
        ),
        (
            "faultline_tcp_retransmitted_segments_total",
            "Segments retransmitted (Tcp RetransSegs).",
            t.retrans_segs,
        ),
        (
            "faultline_tcp_receive_errors_total",
            "Segments received in error (Tcp InErrs).",
            t.in_errs,
        ),
        (
            "faultline_tcp_sent_resets_total",
            "Segments sent with RST (Tcp OutRsts).",
            t.out_rsts,
        ),
        (
            "faultline_tcp_listen_overflows_total",
            "Connections dropped because a listen queue was full (TcpExt ListenOverflows).",
            t.listen_overflows,
        ),
        (
            "faultline_tcp_listen_drops_total",
            "Connection requests dropped by listeners (TcpExt ListenDrops).",
            t.listen_drops,
        ),
        (
            "faultline_tcp_syn_retransmits_total",
            "SYN and SYN-ACK retransmissions (TcpExt TCPSynRetrans).",
            t.syn_retrans,
        ),
        (
            "faultline_tcp_timeouts_total",
            "Retransmission timeouts (TcpExt TCPTimeouts).",
            t.timeouts,
        ),
    ] {
        e.counter(name, help, &[(&[], count as f64)]);
    }
    e.gauge(
        "faultline_tcp_established_connections",
        "Connections in ESTABLISHED or CLOSE-WAIT (Tcp CurrEstab).",
        &[(&[], t.curr_estab as f64)],
    );
}

#[cfg(test)]
mod tests {
    use std::{
        io::{ErrorKind, Write as _},
        process::{Command, Stdio},
        thread,
    };

    use super::*;
    use crate::monitor::host;

    fn float(value: f64) -> String {
        let mut out = String::new();
        push_float(&mut out, value);
        out
    }

    #[test]
    fn floats_read_back_as_prometheus_parses_them() {
        for (value, text) in [
            (0.0, "0"),
            (-0.0, "0"),
            (1.0, "1"),
            (-1.0, "-1"),
            (1234567.0, "1234567"),
            (9007199254740993.0, "9007199254740992"),
            (1e20, "100000000000000000000"),
            (u64::MAX as f64, "18446744073709552000"),
            (0.1, "0.1"),
            (0.005, "0.005"),
            (123.456, "123.456"),
            (1e-4, "0.0001"),
            (1.5e-7, "1.5e-7"),
            (1e21, "1e21"),
            (-2.5e300, "-2.5e300"),
            (f64::NAN, "NaN"),
            (f64::INFINITY, "+Inf"),
            (f64::NEG_INFINITY, "-Inf"),
        ] {
            assert_eq!(float(value), text, "{value:e}");
            if value.is_finite() {
                assert_eq!(text.parse::<f64>().ok(), Some(value), "{text}");
            }
        }
    }

    #[test]
    fn label_values_and_help_are_escaped() {
        let mut e = Exposition::new();
        e.counter(
            "faultline_test_events_total",
            "Help with a back\\slash, \"quotes\"\nand a newline.",
            &[(&[("path", "C:\\dir\\\"x\"\nend")], 3.0)],
        );
        assert_eq!(
            e.finish(),
            "# HELP faultline_test_events_total Help with a back\\\\slash, \"quotes\"\\nand a newline.\n\
             # TYPE faultline_test_events_total counter\n\
             faultline_test_events_total{path=\"C:\\\\dir\\\\\\\"x\\\"\\nend\"} 3\n"
        );
    }

    #[test]
    fn histogram_adds_inf_sum_and_count() {
        let mut e = Exposition::new();
        let buckets = [(0.005, 1), (0.5, 3), (1.0, 3)];
        e.histogram(
            "faultline_test_duration_seconds",
            "Test durations.",
            &[
                (&[("path", "/a")], &buckets, 1.25, 4),
                (&[], &[(0.005, 0), (f64::INFINITY, 2)], 0.5, 2),
            ],
        );
        assert_eq!(
            e.finish(),
            "# HELP faultline_test_duration_seconds Test durations.\n\
             # TYPE faultline_test_duration_seconds histogram\n\
             faultline_test_duration_seconds_bucket{path=\"/a\",le=\"0.005\"} 1\n\
             faultline_test_duration_seconds_bucket{path=\"/a\",le=\"0.5\"} 3\n\
             faultline_test_duration_seconds_bucket{path=\"/a\",le=\"1\"} 3\n\
             faultline_test_duration_seconds_bucket{path=\"/a\",le=\"+Inf\"} 4\n\
             faultline_test_duration_seconds_sum{path=\"/a\"} 1.25\n\
             faultline_test_duration_seconds_count{path=\"/a\"} 4\n\
             faultline_test_duration_seconds_bucket{le=\"0.005\"} 0\n\
             faultline_test_duration_seconds_bucket{le=\"+Inf\"} 2\n\
             faultline_test_duration_seconds_sum 0.5\n\
             faultline_test_duration_seconds_count 2\n"
        );
    }

    #[test]
    fn one_help_and_type_per_family_in_first_written_order() {
        let mut e = Exposition::new();
        e.gauge("faultline_b", "B.", &[(&[("x", "1")], 1.0)]);
        e.gauge("faultline_a", "A.", &[(&[], 2.0)]);
        e.gauge("faultline_empty", "Nothing to say.", &[]);
        e.gauge("faultline_b", "B again.", &[(&[("x", "2")], 3.0)]);
        assert_eq!(
            e.finish(),
            "# HELP faultline_b B.\n# TYPE faultline_b gauge\n\
             faultline_b{x=\"1\"} 1\nfaultline_b{x=\"2\"} 3\n\
             # HELP faultline_a A.\n# TYPE faultline_a gauge\nfaultline_a 2\n"
        );
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "written as a gauge and as a counter")]
    fn a_family_keeps_its_type() {
        let mut e = Exposition::new();
        e.gauge("faultline_x_total", "X.", &[(&[], 1.0)]);
        e.counter("faultline_x_total", "X.", &[(&[], 1.0)]);
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "must end in _total")]
    fn counters_end_in_total() {
        Exposition::new().counter("faultline_x", "X.", &[(&[], 1.0)]);
    }

    #[test]
    fn names_are_validated() {
        for name in [
            "a",
            "faultline_cpu_seconds_total",
            "_x",
            "ns:rule:rate5m",
            "A9",
        ] {
            assert!(is_metric_name(name), "{name}");
        }
        for name in ["", "9a", "a-b", "a b", "é", "a.b"] {
            assert!(!is_metric_name(name), "{name}");
        }
        for name in ["device", "_x", "le", "Mode2"] {
            assert!(is_label_name(name), "{name}");
        }
        for name in ["", "__name__", "__x", "a:b", "2x", "a-b"] {
            assert!(!is_label_name(name), "{name}");
        }
    }

    /// `promtool check metrics` on `text`: its exit status and everything it printed.
    fn promtool(text: &str) -> (bool, String) {
        let mut child = match Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
        {
            Ok(child) => child,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                panic!("promtool is not installed: apt-get install prometheus")
            }
            Err(e) => panic!("cannot run promtool: {e}"),
        };
        let mut stdin = child.stdin.take().expect("stdin");
        let text = text.to_owned();
        let writer = thread::spawn(move || stdin.write_all(text.as_bytes()));
        let output = child.wait_with_output().expect("promtool output");
        writer.join().expect("writer").expect("write to promtool");
        (
            output.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ),
        )
    }

    #[test]
    fn promtool_accepts_a_host_snapshot_and_awkward_labels() {
        let mut e = Exposition::new();
        host_metrics(
            &mut e,
            &host::read(&host::Files::default()).expect("host snapshot"),
        );
        e.histogram(
            "faultline_test_connect_duration_seconds",
            "Connect latency, with a back\\slash and a\nnewline in the help.",
            &[
                (
                    &[("target", "10.0.0.1:80"), ("fault", "żółw \"🐢\"")],
                    &[(0.001, 2), (0.01, 7), (0.1, 9), (1.0, 10)],
                    0.4321,
                    11,
                ),
                (&[("target", ""), ("fault", "")], &[(0.001, 0)], 0.0, 0),
            ],
        );
        e.counter(
            "faultline_test_events_total",
            "Events with awkward label values.",
            &[
                (&[("value", "back\\slash")], 1.0),
                (&[("value", "\"quoted\"")], 2.0),
                (&[("value", "new\nline")], 3.0),
                (&[("value", "{brace}=,comma")], 4.0),
                (&[("value", "")], 5.0),
                (&[("value", "trailing\\")], 1e21),
            ],
        );
        e.gauge(
            "faultline_test_extremes",
            "Non-finite values.",
            &[
                (&[("kind", "nan")], f64::NAN),
                (&[("kind", "inf")], f64::INFINITY),
                (&[("kind", "-inf")], f64::NEG_INFINITY),
                (&[("kind", "tiny")], 1.5e-7),
            ],
        );
        let text = e.finish();
        let (ok, said) = promtool(&text);
        assert!(ok && said.is_empty(), "promtool: {said}\n---\n{text}");
    }

    #[test]
    fn promtool_reports_lint_problems() {
        // The check above relies on promtool saying something about a page it dislikes.
        let (_, said) = promtool("# TYPE faultline_events counter\nfaultline_events 1\n");
        assert!(!said.is_empty(), "promtool said nothing about a bad page");
    }

    #[test]
    fn host_metric_names() {
        let mut e = Exposition::new();
        host_metrics(
            &mut e,
            &host::read(&host::Files::default()).expect("host snapshot"),
        );
        let text = e.finish();
        for needle in [
            "faultline_cpu_seconds_total{cpu=\"0\",mode=\"user\"} ",
            "faultline_load1 ",
            "faultline_load15 ",
            "faultline_memory_total_bytes ",
            "faultline_memory_swap_free_bytes ",
            "faultline_network_receive_bytes_total{device=\"lo\"} ",
            "faultline_network_transmit_drop_total{device=\"lo\"} ",
            "faultline_tcp_retransmitted_segments_total ",
            "faultline_tcp_listen_overflows_total ",
            "faultline_tcp_established_connections ",
        ] {
            assert!(text.contains(needle), "no {needle:?} in\n{text}");
        }
    }
}
