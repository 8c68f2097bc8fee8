//! The agent's own counters: what it refused, slowed down or shed to keep itself and its disk
//! intact (refusals from the network, per-source penalties, connection limits, audit lines
//! shed or rotated). The layers above increment them; the Prometheus page renders them
//! ([`AgentCounters::render`]).
//!
//! Plain atomics rather than a metrics registry: a handful of fixed series, incremented from
//! hot paths (an accept loop under a flood), read once per scrape.

use std::sync::atomic::{AtomicU64, Ordering};

use super::exposition::Exposition;

/// Where a refusal happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RefusalStage {
    /// A TLS client refused at the handshake (its certificate, or a failed handshake).
    Handshake,
    /// A call refused by the policy, or from a caller without an identity.
    Call,
}

/// A limit that closed a connection or refused a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Limit {
    /// `--max-connections`: TLS connections open at once.
    Connections,
    /// `--max-handshakes`: TLS handshakes under way at once.
    Handshakes,
    /// One source's share of the handshakes under way.
    SourceHandshakes,
    /// `--handshake-timeout`.
    HandshakeTimeout,
    /// `--max-streams`: calls under way on one TLS connection.
    Streams,
    /// `--max-message-size`.
    MessageSize,
    /// `--max-subscriptions`: Watch and Stream calls open per caller.
    Subscriptions,
}

impl Limit {
    const ALL: [Limit; 7] = [
        Limit::Connections,
        Limit::Handshakes,
        Limit::SourceHandshakes,
        Limit::HandshakeTimeout,
        Limit::Streams,
        Limit::MessageSize,
        Limit::Subscriptions,
    ];

    fn label(self) -> &'static str {
        match self {
            Limit::Connections => "connections",
            Limit::Handshakes => "handshakes",
            Limit::SourceHandshakes => "source_handshakes",
            Limit::HandshakeTimeout => "handshake_timeout",
            Limit::Streams => "streams",
            Limit::MessageSize => "message_size",
            Limit::Subscriptions => "subscriptions",
        }
    }
}

#[derive(Debug, Default)]
pub(crate) struct AgentCounters {
    handshake_refusals: AtomicU64,
    call_refusals: AtomicU64,
    summarized: AtomicU64,
    penalties: AtomicU64,
    penalty_drops: AtomicU64,
    penalized_sources: AtomicU64,
    limits: [AtomicU64; Limit::ALL.len()],
    audit_shed: AtomicU64,
    audit_rotations: AtomicU64,
    audit_failures: AtomicU64,
    applies_refused_low_space: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

fn read(counter: &AtomicU64) -> f64 {
    counter.load(Ordering::Relaxed) as f64
}

impl AgentCounters {
    pub(crate) fn refused(&self, stage: RefusalStage) {
        bump(match stage {
            RefusalStage::Handshake => &self.handshake_refusals,
            RefusalStage::Call => &self.call_refusals,
        });
    }

    /// A refusal counted into its source's summary line instead of a line of its own.
    pub(crate) fn summarized(&self) {
        bump(&self.summarized);
    }

    /// A source put under a penalty (or its penalty lengthened).
    pub(crate) fn penalized(&self) {
        bump(&self.penalties);
    }

    /// A connection closed unanswered because its source is under a penalty.
    pub(crate) fn penalty_drop(&self) {
        bump(&self.penalty_drops);
    }

    pub(crate) fn set_penalized_sources(&self, count: usize) {
        self.penalized_sources
            .store(count as u64, Ordering::Relaxed);
    }

    pub(crate) fn limited(&self, limit: Limit) {
        let index = Limit::ALL.iter().position(|l| *l == limit).unwrap_or(0);
        bump(&self.limits[index]);
    }

    /// An audit line not written because the state filesystem is at its reserve.
    pub(crate) fn audit_shed(&self) {
        bump(&self.audit_shed);
    }

    pub(crate) fn audit_rotated(&self) {
        bump(&self.audit_rotations);
    }

    /// An audit line that could not be written (an I/O error, not shedding).
    pub(crate) fn audit_failed(&self) {
        bump(&self.audit_failures);
    }

    pub(crate) fn apply_refused_low_space(&self) {
        bump(&self.applies_refused_low_space);
    }

    #[cfg(test)]
    pub(crate) fn get_limited(&self, limit: Limit) -> u64 {
        let index = Limit::ALL.iter().position(|l| *l == limit).unwrap_or(0);
        self.limits[index].load(Ordering::Relaxed)
    }

    pub(crate) fn render(&self, e: &mut Exposition) {
        e.counter(
            "faultline_refusals_total",
            "Callers refused: TLS clients at the handshake, and calls the policy refused.",
            &[
                (&[("stage", "handshake")], read(&self.handshake_refusals)),
                (&[("stage", "call")], read(&self.call_refusals)),
            ],
        );
        e.counter(
            "faultline_refusals_summarized_total",
            "Refusals beyond a source's rate, counted in its summary line instead of a line \
             of their own in the audit log and the log.",
            &[(&[], read(&self.summarized))],
        );
        e.counter(
            "faultline_source_penalties_total",
            "Times a source that kept failing was put under a penalty (its connections closed \
             unanswered for a while).",
            &[(&[], read(&self.penalties))],
        );
        e.counter(
            "faultline_penalty_drops_total",
            "Connections closed unanswered because their source was under a penalty.",
            &[(&[], read(&self.penalty_drops))],
        );
        e.gauge(
            "faultline_penalized_sources",
            "Sources under a penalty now.",
            &[(&[], read(&self.penalized_sources))],
        );
        let limits: Vec<[(&str, &str); 1]> =
            Limit::ALL.iter().map(|l| [("limit", l.label())]).collect();
        let samples: Vec<(&[(&str, &str)], f64)> = limits
            .iter()
            .zip(&self.limits)
            .map(|(labels, count)| (&labels[..], read(count)))
            .collect();
        e.counter(
            "faultline_limit_refusals_total",
            "Connections closed or calls refused because a limit was reached.",
            &samples,
        );
        e.counter(
            "faultline_audit_lines_shed_total",
            "Audit lines not written because the state filesystem was at its reserve.",
            &[(&[], read(&self.audit_shed))],
        );
        e.counter(
            "faultline_audit_write_failures_total",
            "Audit lines that could not be written.",
            &[(&[], read(&self.audit_failures))],
        );
        e.counter(
            "faultline_audit_rotations_total",
            "Times the audit log was rotated at its size cap.",
            &[(&[], read(&self.audit_rotations))],
        );
        e.counter(
            "faultline_applies_refused_low_space_total",
            "Applies refused because the state filesystem was at its reserve.",
            &[(&[], read(&self.applies_refused_low_space))],
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_series_is_on_the_page_from_the_start() {
        let counters = AgentCounters::default();
        counters.refused(RefusalStage::Handshake);
        counters.limited(Limit::Subscriptions);
        let mut e = Exposition::new();
        counters.render(&mut e);
        let page = e.finish();
        assert!(page.contains("faultline_refusals_total{stage=\"handshake\"} 1\n"));
        assert!(page.contains("faultline_refusals_total{stage=\"call\"} 0\n"));
        assert!(page.contains("faultline_limit_refusals_total{limit=\"subscriptions\"} 1\n"));
        assert!(page.contains("faultline_audit_lines_shed_total 0\n"));
    }
}
