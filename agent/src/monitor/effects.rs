//! Faults' effects as Prometheus series: what each active fault's kernel objects counted
//! (`faultline_fault_packets_total{id,kind,action}`, CPU time, memory, ...) and whether it
//! is flagged ineffective. The counters reset with each fault: a fault is a series of its own.

use std::collections::BTreeMap;

use super::exposition::Exposition;
use crate::engine::Fault;

/// One Prometheus family: its help text, and its samples as (labels, value).
type Family = (&'static str, Vec<(Vec<(&'static str, String)>, f64)>);

/// Samples with their labels borrowed, as [`Exposition`] takes them.
fn borrowed<'a>(
    samples: &'a [(Vec<(&'static str, String)>, f64)],
) -> Vec<(Vec<(&'static str, &'a str)>, f64)> {
    samples
        .iter()
        .map(|(labels, v)| (labels.iter().map(|(k, v)| (*k, v.as_str())).collect(), *v))
        .collect()
}

/// Where a fault's counter goes: the family and, for packets and bytes, the `action` label.
fn place(counter: &str) -> (&'static str, Option<String>, f64) {
    let split = |rest: &str, prefix: &str| format!("{prefix}{rest}");
    if let Some(action) = counter.strip_prefix("qdisc_packets_") {
        (
            "faultline_fault_packets_total",
            Some(split(action, "qdisc_")),
            1.0,
        )
    } else if let Some(action) = counter.strip_prefix("qdisc_bytes_") {
        (
            "faultline_fault_bytes_total",
            Some(split(action, "qdisc_")),
            1.0,
        )
    } else if let Some(action) = counter.strip_prefix("packets_") {
        (
            "faultline_fault_packets_total",
            Some(action.to_owned()),
            1.0,
        )
    } else if let Some(action) = counter.strip_prefix("bytes_") {
        ("faultline_fault_bytes_total", Some(action.to_owned()), 1.0)
    } else {
        match counter {
            "cpu_usec" => ("faultline_fault_cpu_seconds_total", None, 1e-6),
            "throttled_periods" => ("faultline_fault_throttled_periods_total", None, 1.0),
            "memory_bytes" => ("faultline_fault_memory_bytes", None, 1.0),
            "qdisc_overlimits" => ("faultline_fault_qdisc_overlimits_total", None, 1.0),
            "qdisc_backlog_bytes" => ("faultline_fault_qdisc_backlog_bytes", None, 1.0),
            _ => ("faultline_fault_counter", Some(counter.to_owned()), 1.0),
        }
    }
}

fn help(family: &str) -> &'static str {
    match family {
        "faultline_fault_packets_total" => {
            "Packets an active fault's kernel objects counted, by action (matched, dropped, \
             rejected, steered, qdisc_sent, qdisc_dropped)."
        }
        "faultline_fault_bytes_total" => {
            "Bytes an active fault's kernel objects counted, by action."
        }
        "faultline_fault_cpu_seconds_total" => "CPU time charged to an active fault's cgroup.",
        "faultline_fault_throttled_periods_total" => {
            "Scheduler periods in which an active fault's CPU quota held it back."
        }
        "faultline_fault_memory_bytes" => "Memory charged to an active fault's cgroup.",
        "faultline_fault_qdisc_overlimits_total" => {
            "Times an active fault's qdisc held packets back (over its rate)."
        }
        "faultline_fault_qdisc_backlog_bytes" => "Bytes queued in an active fault's qdisc.",
        _ => "Another counter of an active fault's kernel objects, by name.",
    }
}

pub(super) fn effect_metrics(e: &mut Exposition, faults: &[Fault]) {
    let mut families: BTreeMap<&'static str, Family> = BTreeMap::new();
    let mut ineffective = Vec::new();
    for fault in faults {
        let base = || {
            vec![
                ("id", fault.id.clone()),
                ("kind", fault.spec.kind().to_owned()),
            ]
        };
        ineffective.push((base(), if fault.ineffective { 1.0 } else { 0.0 }));
        let Some(effect) = &fault.effect else {
            continue;
        };
        for c in &effect.counters {
            let (family, label, scale) = place(&c.name);
            let mut labels = base();
            if let Some(label) = label {
                let key = if family == "faultline_fault_counter" {
                    "name"
                } else {
                    "action"
                };
                labels.push((key, label));
            }
            families
                .entry(family)
                .or_insert_with(|| (help(family), Vec::new()))
                .1
                .push((labels, c.value as f64 * scale));
        }
    }
    let ineffective = borrowed(&ineffective);
    e.gauge(
        "faultline_fault_ineffective",
        "1 for an active fault that has acted on nothing since its grace period ran out.",
        &ineffective
            .iter()
            .map(|(l, v)| (&l[..], *v))
            .collect::<Vec<_>>(),
    );
    for (name, (help, samples)) in &families {
        let samples = borrowed(samples);
        let samples: Vec<(&[(&str, &str)], f64)> =
            samples.iter().map(|(l, v)| (&l[..], *v)).collect();
        if name.ends_with("_total") {
            e.counter(name, help, &samples);
        } else {
            e.gauge(name, help, &samples);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_land_in_their_families() {
        assert_eq!(
            place("packets_dropped"),
            ("faultline_fault_packets_total", Some("dropped".into()), 1.0)
        );
        assert_eq!(
            place("qdisc_packets_sent"),
            (
                "faultline_fault_packets_total",
                Some("qdisc_sent".into()),
                1.0
            )
        );
        assert_eq!(
            place("cpu_usec"),
            ("faultline_fault_cpu_seconds_total", None, 1e-6)
        );
        assert_eq!(
            place("zombies_reaped"),
            (
                "faultline_fault_counter",
                Some("zombies_reaped".into()),
                1.0
            )
        );
    }
}
