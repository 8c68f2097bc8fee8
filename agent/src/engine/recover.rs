//! Start-up reconcile: every fault the journal left unfinished is reverted (the reason says
//! what ran out while no agent ran), then every kernel adapter sweeps what no remaining journal
//! entry accounts for.

use std::{sync::Arc, time::SystemTime};

use tracing::{error, info, warn};

use super::{Engine, Fault, FaultState, RevertReason};
use crate::errors::EngineError;

/// What start-up found and cleaned.
#[derive(Debug, Default)]
pub(crate) struct Recovery {
    /// Faults the journal said were unfinished, now reverted.
    pub(crate) reverted: Vec<String>,
    /// Faults whose revert failed again; they stay journalled.
    pub(crate) failed: Vec<(String, String)>,
    /// Tagged kernel objects no journal entry accounted for, removed.
    pub(crate) swept: Vec<String>,
    /// Why some of those objects could not be removed (the next start-up tries again).
    pub(crate) sweep_failed: Vec<String>,
    /// Journal entries that could not be read.
    pub(crate) unreadable: Vec<String>,
}

impl RevertReason {
    /// Why start-up reverts a fault an earlier run left: its lease or its deadline, whichever
    /// ran out first while no agent ran, else only because the agent that held it is gone.
    fn at_start_up(fault: &Fault, now: SystemTime) -> Self {
        let lease = fault.lease_expires_at.filter(|at| *at <= now);
        let deadline = Some(fault.deadline).filter(|at| *at <= now);
        match (lease, deadline) {
            (Some(lease), Some(deadline)) if lease <= deadline => RevertReason::LeaseExpired,
            (Some(_), None) => RevertReason::LeaseExpired,
            (_, Some(_)) => RevertReason::Deadline,
            (None, None) => RevertReason::Recovered,
        }
    }
}

impl Engine {
    /// The clean-up of a fault that an earlier run reverted and did not finish cleaning up:
    /// listed with the reason it ended for, not audited again.
    fn finish_cleanup_at_start_up(&self, mut fault: Fault, recovery: &mut Recovery) {
        match fault.spec.family().revert(&fault.id, &self.host()) {
            Ok(()) => {
                if let Err(e) = self.journal.remove(&fault.id) {
                    warn!(id = %fault.id, error = %e, "cannot remove the journal entry of a cleaned-up fault");
                }
                info!(id = %fault.id, kind = fault.spec.kind(), reason = %fault.reason, "finished the clean-up of a fault reverted before the restart");
            }
            Err(e) => {
                error!(id = %fault.id, error = %e, "cannot finish the clean-up of a fault reverted before the restart");
                recovery.failed.push((fault.id.clone(), e.to_string()));
                fault.state = FaultState::Failed;
                fault.reason = format!("{}; its clean-up at start-up failed: {e}", fault.reason);
            }
        }
        self.finish(&fault);
    }

    /// Start-up reconcile: reverts every fault the journal left unfinished, then removes any
    /// faultline-tagged kernel object that no remaining journal entry accounts for.
    pub(crate) async fn recover(self: &Arc<Self>) -> Result<Recovery, EngineError> {
        let engine = Arc::clone(self);
        let (recovery, ended) = tokio::task::spawn_blocking(move || engine.recover_blocking())
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))?;
        for (fault, reason) in &ended {
            self.audit_automatic(fault, *reason);
        }
        Ok(recovery)
    }

    /// The recovery, and every fault it ended with the reason.
    #[allow(clippy::type_complexity)]
    fn recover_blocking(&self) -> Result<(Recovery, Vec<(Fault, RevertReason)>), EngineError> {
        let mut recovery = Recovery::default();
        let mut ended = Vec::new();
        let (faults, unreadable) = self.journal.load()?;
        for entry in unreadable {
            warn!(path = %entry.path.display(), error = %entry.error, "unreadable journal entry set aside");
            recovery.unreadable.push(entry.path.display().to_string());
        }
        for mut fault in faults {
            if fault.state == FaultState::Reverted {
                // Its revert was answered and audited before the crash; only its clean-up
                // (objects that no longer acted) was left to do.
                self.finish_cleanup_at_start_up(fault, &mut recovery);
                continue;
            }
            let reason = RevertReason::at_start_up(&fault, SystemTime::now());
            match fault.spec.family().revert(&fault.id, &self.host()) {
                Ok(()) => {
                    self.journal.remove(&fault.id)?;
                    info!(id = %fault.id, kind = fault.spec.kind(), spec = %fault.spec.family().summary(), reason = reason.as_str(), "reverted a fault left by an earlier run");
                    recovery.reverted.push(fault.id.clone());
                    fault.state = FaultState::Reverted;
                    fault.reason = reason.as_str().to_owned();
                }
                Err(e) => {
                    error!(id = %fault.id, error = %e, "cannot revert a fault left by an earlier run");
                    recovery.failed.push((fault.id.clone(), e.to_string()));
                    fault.state = FaultState::Failed;
                    fault.reason = format!("revert at start-up ({}) failed: {e}", reason.as_str());
                }
            }
            // Listed like any fault that ended, so that `get` tells its controller what became
            // of it and why.
            self.finish(&fault);
            ended.push((fault, reason));
        }
        let keep: Vec<&str> = recovery.failed.iter().map(|(id, _)| id.as_str()).collect();
        let swept = self.adapters.sweep(&keep);
        for object in &swept.removed {
            warn!(
                object,
                "removed a faultline kernel object no journal entry knew"
            );
        }
        for e in &swept.failed {
            error!(error = %e, "cannot remove a faultline kernel object no journal entry knew; the next start-up retries");
        }
        recovery.swept = swept.removed;
        recovery.sweep_failed = swept.failed.iter().map(ToString::to_string).collect();
        Ok((recovery, ended))
    }
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeMap, time::Duration};

    use super::*;
    use crate::faults::{BlockSpec, Direction, FaultSpec, PacketMatch};

    #[test]
    fn start_up_names_what_ran_out_first() {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let fault = |lease: Option<u64>| Fault {
            id: "aaaaaaaaaaaa".to_owned(),
            spec: FaultSpec::Block(BlockSpec {
                direction: Direction::Ingress,
                matcher: PacketMatch::default(),
                reject: false,
                percent: None,
                device: None,
            }),
            labels: BTreeMap::new(),
            state: FaultState::Active,
            created_at: start,
            deadline: start + Duration::from_secs(60),
            duration: Duration::from_secs(60),
            reason: String::new(),
            plan: Vec::new(),
            lease: lease.map(Duration::from_secs),
            lease_expires_at: lease.map(|l| start + Duration::from_secs(l)),
            effect: None,
            ineffective: false,
            objects: Vec::new(),
            changes: Vec::new(),
            residue: Vec::new(),
            status: Vec::new(),
        };
        let at = |s: u64| start + Duration::from_secs(s);
        use RevertReason::*;
        assert_eq!(RevertReason::at_start_up(&fault(None), at(10)), Recovered);
        assert_eq!(RevertReason::at_start_up(&fault(None), at(61)), Deadline);
        assert_eq!(RevertReason::at_start_up(&fault(Some(3)), at(2)), Recovered);
        assert_eq!(
            RevertReason::at_start_up(&fault(Some(3)), at(4)),
            LeaseExpired
        );
        assert_eq!(
            RevertReason::at_start_up(&fault(Some(3)), at(100)),
            LeaseExpired,
            "the lease ran out before the deadline"
        );
    }
}
