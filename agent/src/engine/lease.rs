//! Leases: the second, movable deadline of a fault, renewed by the controller that applied it
//! (see the engine's module docs); which periods are accepted, the timer that reverts a fault
//! whose lease ran out, and renewals.

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use tokio::{task::AbortHandle, time::Instant};
use tracing::{error, warn};

use super::{Engine, Entry, Fault, FaultState, RevertReason};
use crate::errors::{EngineError, InvalidSpec};

/// The shortest lease accepted: a controller renewing every third of it still has over 300 ms
/// per renewal, and the agent's revert within a second of the expiry stays meaningful.
pub(crate) const MIN_LEASE: Duration = Duration::from_secs(1);

/// Whether `lease` is long enough to be a lease at all.
pub(super) fn check_lease_period(lease: Duration) -> Result<(), InvalidSpec> {
    if lease < MIN_LEASE {
        return Err(InvalidSpec::new(
            "lease",
            format!(
                "{} is too short: a lease must be at least {} (e.g. 10s), renewed every third of it",
                humantime::format_duration(lease),
                humantime::format_duration(MIN_LEASE)
            ),
        ));
    }
    Ok(())
}

/// Whether `lease` is accepted for a fault that lasts `duration`.
pub(crate) fn check_lease(lease: Duration, duration: Duration) -> Result<(), InvalidSpec> {
    check_lease_period(lease)?;
    if lease > duration {
        return Err(InvalidSpec::new(
            "lease",
            format!(
                "{} is longer than the fault's duration of {}: its deadline would always come \
                 first; give at most {}, or no lease",
                humantime::format_duration(lease),
                humantime::format_duration(duration),
                humantime::format_duration(duration)
            ),
        ));
    }
    Ok(())
}

/// What a lease renewal did with one of the ids it was given.
#[derive(Debug, Clone)]
pub(crate) enum Renewal {
    /// Renewed: the fault with its new `lease_expires_at`.
    Renewed(Box<Fault>),
    NotRenewed {
        id: String,
        why: NotRenewed,
    },
}

/// Why a fault's lease was not renewed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum NotRenewed {
    /// No fault with this id, or it ended too long ago to be kept.
    Unknown,
    /// Reverted, failed, or being reverted.
    Ended { state: FaultState, reason: String },
    /// Applied without a lease.
    NoLease,
    /// Still being applied; its lease starts once it is active.
    Pending,
}

impl std::fmt::Display for NotRenewed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NotRenewed::Unknown => f.write_str("no such fault (faultline ls lists the faults)"),
            NotRenewed::Ended { state, reason } if reason.is_empty() => {
                write!(f, "the fault has ended ({state})")
            }
            NotRenewed::Ended { state, reason } => {
                write!(f, "the fault has ended ({state}: {reason})")
            }
            NotRenewed::NoLease => f.write_str("the fault was applied without a lease"),
            NotRenewed::Pending => {
                f.write_str("the fault is still being applied; its lease starts once it is active")
            }
        }
    }
}

impl Engine {
    /// Starts the timer that reverts fault `id` when its lease runs out at `due`, unless a
    /// renewal moved the lease on meanwhile.
    pub(super) fn arm_lease(self: &Arc<Self>, id: &str, due: Instant) -> AbortHandle {
        let engine = Arc::clone(self);
        let id = id.to_owned();
        tokio::spawn(async move {
            let mut due = due;
            loop {
                tokio::time::sleep_until(due).await;
                // Renewals re-arm the timer; reading the lease back as well means that a wake-up
                // that raced a renewal (or came a hair early) never ends a renewed fault.
                match engine.lease_due(&id) {
                    Some(later) if later > Instant::now() => due = later,
                    Some(_) => break,
                    None => return,
                }
            }
            // Reverting in a task of its own, like the deadline: a renewal or a revert request
            // aborts this timer, and must never abort a revert half-way.
            tokio::spawn(async move {
                let expired = |e: &Entry| e.lease_due.is_some_and(|due| due <= Instant::now());
                if let Err(e) = engine
                    .revert_when(&id, RevertReason::LeaseExpired, expired)
                    .await
                {
                    error!(id, error = %e, "revert at the lease's expiry failed");
                }
            });
        })
        .abort_handle()
    }

    /// When the lease of active fault `id` runs out; `None` once the fault is no longer active.
    fn lease_due(&self, id: &str) -> Option<Instant> {
        self.registry()
            .faults
            .get(id)
            .filter(|e| e.fault.state == FaultState::Active)
            .and_then(|e| e.lease_due)
    }

    /// Renews the leases of `ids`: each runs again from now, for its own period or for `period`
    /// (which becomes the fault's period). An empty list or a period that is not accepted for
    /// one of the faults renews nothing; otherwise every id gets its own outcome.
    pub(crate) fn renew(
        self: &Arc<Self>,
        ids: &[String],
        period: Option<Duration>,
    ) -> Result<Vec<Renewal>, EngineError> {
        if ids.is_empty() {
            return Err(InvalidSpec::new(
                "ids",
                "empty: name at least one fault whose lease to renew",
            )
            .into());
        }
        let mut outcomes = Vec::with_capacity(ids.len());
        {
            let mut registry = self.registry();
            if let Some(period) = period {
                check_lease_period(period)?;
                for (id, entry) in ids
                    .iter()
                    .filter_map(|id| registry.faults.get(id).map(|e| (id, e)))
                    .filter(|(_, e)| e.fault.state == FaultState::Active && e.fault.lease.is_some())
                {
                    check_lease(period, entry.fault.duration).map_err(|e| {
                        InvalidSpec::new(e.field, format!("fault {id}: {}", e.reason))
                    })?;
                }
            }
            let (now, mono) = (SystemTime::now(), Instant::now());
            for id in ids {
                let not_renewed = |why| Renewal::NotRenewed {
                    id: id.clone(),
                    why,
                };
                let Some(entry) = registry.faults.get_mut(id) else {
                    outcomes.push(not_renewed(NotRenewed::Unknown));
                    continue;
                };
                match entry.fault.state {
                    FaultState::Active => {}
                    FaultState::Pending => {
                        outcomes.push(not_renewed(NotRenewed::Pending));
                        continue;
                    }
                    state @ (FaultState::Reverting
                    | FaultState::Reverted
                    | FaultState::RevertedWithResidue
                    | FaultState::Failed) => {
                        outcomes.push(not_renewed(NotRenewed::Ended {
                            state,
                            reason: entry.fault.reason.clone(),
                        }));
                        continue;
                    }
                }
                let Some(own) = entry.fault.lease else {
                    outcomes.push(not_renewed(NotRenewed::NoLease));
                    continue;
                };
                let lease = period.unwrap_or(own);
                let due = mono + lease;
                entry.fault.lease = Some(lease);
                entry.fault.lease_expires_at = Some(now + lease);
                entry.lease_due = Some(due);
                // Re-armed rather than left to find the new expiry: a shorter period must end
                // the fault earlier than the old timer would wake up.
                if let Some(old) = entry.lease_timer.replace(self.arm_lease(id, due)) {
                    old.abort();
                }
                outcomes.push(Renewal::Renewed(Box::new(entry.fault.clone())));
            }
        }
        for outcome in &outcomes {
            let Renewal::Renewed(fault) = outcome else {
                continue;
            };
            // Written only while the fault is still active, under the journal's write lock: a
            // revert that got in since removes the entry after this, never before.
            let current = || {
                self.registry()
                    .faults
                    .get(&fault.id)
                    .filter(|e| e.fault.state == FaultState::Active)
                    .map(|e| e.fault.clone())
            };
            if let Err(e) = self.journal.record_current(current) {
                // The lease runs in memory all the same; the journal only tells a later
                // start-up whether it had run out.
                warn!(id = %fault.id, error = %e, "cannot journal a lease renewal");
            }
        }
        Ok(outcomes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_is_at_least_a_second_and_at_most_the_duration() {
        let minute = Duration::from_secs(60);
        assert!(check_lease(Duration::from_secs(1), minute).is_ok());
        assert!(check_lease(minute, minute).is_ok());
        for lease in [Duration::ZERO, Duration::from_millis(999), minute * 2] {
            let refused = check_lease(lease, minute).unwrap_err();
            assert_eq!(refused.field, "lease", "{lease:?}");
        }
        assert!(check_lease(minute * 2, minute)
            .unwrap_err()
            .reason
            .contains("at most 1m"));
    }
}
