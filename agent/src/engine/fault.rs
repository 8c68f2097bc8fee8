//! A fault as the engine tracks it: identity, what it does, when it ends (its deadline, and its
//! lease when it has one), where it is in its lifecycle. The same value is journalled, returned
//! by the API and printed by the CLI. Fields added after the first release carry serde defaults,
//! so that journal entries written by an older agent still read.

use std::{
    collections::BTreeMap,
    fmt,
    time::{Duration, SystemTime},
};

use serde::{Deserialize, Serialize};

use crate::faults::{effect::Effect, FaultSpec};

/// `pending -> active -> reverting -> reverted | reverted-with-residue | failed`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum FaultState {
    /// Journalled, being applied.
    Pending,
    Active,
    Reverting,
    Reverted,
    /// Reverted, but the kernel still holds some of the fault's objects (`residue` lists
    /// them); the agent retries, and the next start-up sweeps them.
    RevertedWithResidue,
    /// Apply or revert failed; `reason` says why.
    Failed,
}

impl FaultState {
    pub(crate) fn is_finished(self) -> bool {
        matches!(
            self,
            FaultState::Reverted | FaultState::RevertedWithResidue | FaultState::Failed
        )
    }
}

impl fmt::Display for FaultState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FaultState::Pending => "pending",
            FaultState::Active => "active",
            FaultState::Reverting => "reverting",
            FaultState::Reverted => "reverted",
            FaultState::RevertedWithResidue => "reverted-with-residue",
            FaultState::Failed => "failed",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Fault {
    /// 12 lowercase hex digits; short enough for nftables chain names and bpffs paths.
    pub(crate) id: String,
    pub(crate) spec: FaultSpec,
    #[serde(default)]
    pub(crate) labels: BTreeMap<String, String>,
    pub(crate) state: FaultState,
    #[serde(with = "rfc3339")]
    pub(crate) created_at: SystemTime,
    #[serde(with = "rfc3339")]
    pub(crate) deadline: SystemTime,
    #[serde(with = "seconds")]
    pub(crate) duration: Duration,
    /// Why the fault ended or failed.
    #[serde(default)]
    pub(crate) reason: String,
    #[serde(default)]
    pub(crate) plan: Vec<String>,
    /// The lease period: unless renewed within it, the fault is reverted. `None`: no lease.
    #[serde(default, with = "seconds::option")]
    pub(crate) lease: Option<Duration>,
    /// When the lease runs out unless renewed (the last expiry, once the fault has ended).
    #[serde(default, with = "rfc3339::option")]
    pub(crate) lease_expires_at: Option<SystemTime>,
    /// What the fault has done, read from the kernel about once a second while it is active;
    /// once it has ended, the last reading.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) effect: Option<Effect>,
    /// It acted on nothing within the agent's grace period (`--ineffective-after`).
    #[serde(default)]
    pub(crate) ineffective: bool,
    /// The fault's kernel objects as last read from the kernel (about once a second while it
    /// is active).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) objects: Vec<String>,
    /// Changes to its objects made while it ran by something other than faultline.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) changes: Vec<String>,
    /// What the kernel still held of the fault after its revert.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) residue: Vec<String>,
    /// What the fault found and did while applied and active, one line each, oldest first: the
    /// workload it resolved, the processes it signalled. Kept in the running agent (and the
    /// audit log), not journalled.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) status: Vec<String>,
}

impl Fault {
    pub(crate) fn new_id() -> String {
        uuid::Uuid::new_v4().simple().to_string()[..12].to_owned()
    }

    /// Time left before the deadline, zero once it has passed.
    pub(crate) fn remaining(&self, now: SystemTime) -> Duration {
        self.deadline.duration_since(now).unwrap_or_default()
    }
}

/// Timestamps as RFC 3339 strings: readable in the journal and in `--output json`.
pub(crate) mod rfc3339 {
    use std::time::SystemTime;

    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_rfc3339_millis(*t))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_rfc3339_weak(&text).map_err(D::Error::custom)
    }

    /// An optional timestamp: `null` when absent.
    pub(crate) mod option {
        use std::time::SystemTime;

        use serde::{de::Error, Deserialize, Deserializer, Serializer};

        pub(crate) fn serialize<S: Serializer>(
            t: &Option<SystemTime>,
            s: S,
        ) -> Result<S::Ok, S::Error> {
            match t {
                Some(t) => super::serialize(t, s),
                None => s.serialize_none(),
            }
        }

        pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
            d: D,
        ) -> Result<Option<SystemTime>, D::Error> {
            Option::<String>::deserialize(d)?
                .map(|text| humantime::parse_rfc3339_weak(&text).map_err(D::Error::custom))
                .transpose()
        }
    }
}

/// Durations as fractional seconds.
pub(crate) mod seconds {
    use std::time::Duration;

    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Duration::try_from_secs_f64(f64::deserialize(d)?).map_err(D::Error::custom)
    }

    /// An optional duration: `null` when absent.
    pub(crate) mod option {
        use std::time::Duration;

        use serde::{de::Error, Deserialize, Deserializer, Serializer};

        pub(crate) fn serialize<S: Serializer>(
            d: &Option<Duration>,
            s: S,
        ) -> Result<S::Ok, S::Error> {
            match d {
                Some(d) => super::serialize(d, s),
                None => s.serialize_none(),
            }
        }

        pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
            d: D,
        ) -> Result<Option<Duration>, D::Error> {
            Option::<f64>::deserialize(d)?
                .map(|secs| Duration::try_from_secs_f64(secs).map_err(D::Error::custom))
                .transpose()
        }
    }
}
