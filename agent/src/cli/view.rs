//! A fault as the CLI shows it, read from the agent's protobuf answer as it stands: nothing in
//! it is refused. A kind or a state this CLI does not know (the agent is newer) is shown as
//! `unknown`, with the agent's own one-line summary; `--output json` keeps the shape of the
//! journal's fault for scripts.

use std::time::{Duration, SystemTime};

use faultline_proto::v1 as pb;
use serde_json::{json, Value};

use crate::{api::convert, faults::FaultSpec};

/// Shown for a kind or a state this CLI does not know.
pub(crate) const UNKNOWN: &str = "unknown";

/// One fault of an answer.
#[derive(Debug, Clone)]
pub(crate) struct FaultView {
    fault: pb::Fault,
    /// The spec, when this CLI knows its kind: for the JSON shape scripts read.
    spec: Option<FaultSpec>,
}

impl FaultView {
    pub(crate) fn new(fault: pb::Fault) -> Self {
        let spec = fault
            .spec
            .clone()
            .and_then(|spec| convert::fault_spec(spec).ok());
        Self { fault, spec }
    }

    pub(crate) fn id(&self) -> &str {
        &self.fault.id
    }

    /// The family's kind name; [`UNKNOWN`] for one this CLI does not know.
    pub(crate) fn kind(&self) -> &str {
        match (&self.spec, self.fault.kind.as_str()) {
            (_, kind) if !kind.is_empty() => kind,
            (Some(spec), _) => spec.kind(),
            (None, _) => UNKNOWN,
        }
    }

    /// The agent's one-line description, or this CLI's for an agent that sends none.
    pub(crate) fn summary(&self) -> String {
        match &self.spec {
            _ if !self.fault.summary.is_empty() => self.fault.summary.clone(),
            Some(spec) => spec.family().summary(),
            None => {
                "a fault of a kind this faultline does not know (the agent is newer)".to_owned()
            }
        }
    }

    /// `pending`, `active`, `reverting`, `reverted`, `reverted-with-residue`, `failed`, or
    /// [`UNKNOWN`].
    pub(crate) fn state(&self) -> &'static str {
        match pb::FaultState::try_from(self.fault.state) {
            Ok(pb::FaultState::Pending) => "pending",
            Ok(pb::FaultState::Active) => "active",
            Ok(pb::FaultState::Reverting) => "reverting",
            Ok(pb::FaultState::Reverted) => "reverted",
            Ok(pb::FaultState::RevertedWithResidue) => "reverted-with-residue",
            Ok(pb::FaultState::Failed) => "failed",
            _ => UNKNOWN,
        }
    }

    /// Reverted (with residue or not) or failed: nothing of it is left to wait for.
    pub(crate) fn is_finished(&self) -> bool {
        matches!(
            self.state(),
            "reverted" | "reverted-with-residue" | "failed"
        )
    }

    pub(crate) fn reason(&self) -> &str {
        &self.fault.reason
    }

    pub(crate) fn labels(&self) -> impl Iterator<Item = (&String, &String)> {
        self.fault.labels.iter()
    }

    pub(crate) fn plan(&self) -> &[String] {
        &self.fault.plan
    }

    /// What the fault found and did while active (the workload it resolved, what it killed).
    pub(crate) fn status(&self) -> &[String] {
        &self.fault.status
    }

    pub(crate) fn created_at(&self) -> Option<SystemTime> {
        time(self.fault.created_at)
    }

    pub(crate) fn deadline(&self) -> Option<SystemTime> {
        time(self.fault.deadline)
    }

    pub(crate) fn lease(&self) -> Option<Duration> {
        self.fault.lease.and_then(|d| Duration::try_from(d).ok())
    }

    pub(crate) fn lease_expires_at(&self) -> Option<SystemTime> {
        time(self.fault.lease_expires_at)
    }

    /// The fault's effect, as the agent last read it from the kernel.
    pub(crate) fn effect(&self) -> Option<&pb::Effect> {
        self.fault.effect.as_ref()
    }

    /// The fault's kernel objects as the agent last read them.
    pub(crate) fn objects(&self) -> &[String] {
        &self.fault.objects
    }

    /// Changes to its objects made behind faultline's back while it ran.
    pub(crate) fn changes(&self) -> &[String] {
        &self.fault.changes
    }

    /// What its revert left in the kernel.
    pub(crate) fn residue(&self) -> &[String] {
        &self.fault.residue
    }

    pub(crate) fn ineffective(&self) -> bool {
        self.fault.ineffective
    }

    /// `ls`'s HIT column: the count that says whether the fault acted (`1.2k`), `0!` when
    /// it is flagged ineffective, `-` before the first reading.
    pub(crate) fn hits_text(&self) -> String {
        match self.effect() {
            None => "-".to_owned(),
            Some(_) if self.ineffective() => "0!".to_owned(),
            Some(e) => short_count(e.hits),
        }
    }

    /// Time left before the deadline, zero once it has passed or when the agent sent none.
    pub(crate) fn remaining(&self, now: SystemTime) -> Duration {
        self.deadline()
            .and_then(|at| at.duration_since(now).ok())
            .unwrap_or_default()
    }

    /// Time left before the lease runs out, zero once it has; `None` without a lease.
    pub(crate) fn lease_remaining(&self, now: SystemTime) -> Option<Duration> {
        self.lease_expires_at()
            .map(|at| at.duration_since(now).unwrap_or_default())
    }

    /// The journal's shape of a fault, plus `kind`, `remaining_secs` and
    /// `lease_remaining_secs` (null without a lease) for scripts. A spec of a kind this CLI
    /// does not know is `{"kind": "unknown"}`.
    pub(crate) fn json(&self) -> Value {
        let rfc3339 =
            |t: Option<SystemTime>| t.map(|t| humantime::format_rfc3339_millis(t).to_string());
        let spec = self
            .spec
            .as_ref()
            .and_then(|spec| serde_json::to_value(spec).ok())
            .unwrap_or_else(|| json!({ "kind": self.kind() }));
        let now = SystemTime::now();
        let finished = self.is_finished();
        let remaining = if finished {
            0.0
        } else {
            self.remaining(now).as_secs_f64()
        };
        let lease_remaining =
            self.lease_remaining(now)
                .map(|left| if finished { 0.0 } else { left.as_secs_f64() });
        json!({
            "id": self.id(),
            "spec": spec,
            "labels": self.fault.labels.iter().collect::<std::collections::BTreeMap<_, _>>(),
            "state": self.state(),
            "created_at": rfc3339(self.created_at()),
            "deadline": rfc3339(self.deadline()),
            "duration_secs": self
                .fault
                .duration
                .and_then(|d| Duration::try_from(d).ok())
                .map(|d| d.as_secs_f64()),
            "reason": self.reason(),
            "plan": self.plan(),
            "status": self.status(),
            "lease_secs": self.lease().map(|d| d.as_secs_f64()),
            "lease_expires_at": rfc3339(self.lease_expires_at()),
            "kind": self.kind(),
            "remaining_secs": remaining,
            "lease_remaining_secs": lease_remaining,
            "effect": self.effect().map(|e| json!({
                "hits": e.hits,
                "hits_are": e.hits_are,
                "counters": e.counters.iter().map(|c| (c.name.clone(), json!(c.value)))
                    .collect::<serde_json::Map<_, _>>(),
            })),
            "ineffective": self.ineffective(),
            "objects": self.fault.objects,
            "changes": self.fault.changes,
            "residue": self.fault.residue,
        })
    }
}

/// `950`, `1.2k`, `3.4M`, `5.6G`: counts in a narrow column.
fn short_count(n: u64) -> String {
    match n {
        0..=999 => n.to_string(),
        1_000..=999_999 => format!("{:.1}k", n as f64 / 1e3),
        1_000_000..=999_999_999 => format!("{:.1}M", n as f64 / 1e6),
        _ => format!("{:.1}G", n as f64 / 1e9),
    }
}

fn time(t: Option<prost_types::Timestamp>) -> Option<SystemTime> {
    t.and_then(|t| SystemTime::try_from(t).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What an agent newer than this CLI may send: a spec of a kind added since (an unknown
    /// oneof field decodes as no kind at all), and a state added since.
    fn from_a_newer_agent() -> pb::Fault {
        pb::Fault {
            id: "0123456789ab".to_owned(),
            spec: Some(pb::FaultSpec { kind: None }),
            state: 99,
            kind: "dns".to_owned(),
            summary: "dns answers NXDOMAIN for example.com".to_owned(),
            ..Default::default()
        }
    }

    #[test]
    fn counts_fit_a_narrow_column() {
        assert_eq!(short_count(950), "950");
        assert_eq!(short_count(1_250), "1.2k");
        assert_eq!(short_count(3_400_000), "3.4M");
        assert_eq!(short_count(5_600_000_000), "5.6G");
    }

    #[test]
    fn a_kind_this_cli_does_not_know_is_shown_as_the_agent_names_it() {
        let view = FaultView::new(from_a_newer_agent());
        assert_eq!(view.kind(), "dns");
        assert_eq!(view.summary(), "dns answers NXDOMAIN for example.com");
        assert_eq!(view.state(), UNKNOWN);
        assert!(!view.is_finished());
        let json = view.json();
        assert_eq!(json["spec"], json!({ "kind": "dns" }));
        assert_eq!(json["state"], UNKNOWN);
        assert_eq!(json["created_at"], Value::Null);
    }

    #[test]
    fn without_the_agents_names_an_unknown_kind_is_unknown() {
        let view = FaultView::new(pb::Fault {
            kind: String::new(),
            summary: String::new(),
            ..from_a_newer_agent()
        });
        assert_eq!(view.kind(), UNKNOWN);
        assert!(
            view.summary().contains("does not know"),
            "{}",
            view.summary()
        );
    }
}
