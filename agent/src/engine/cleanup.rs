//! What a revert does after its answer. A revert answers as soon as the fault's effect has
//! ended ([`Family::end`]); the rest does not change what the fault does to the host and may
//! wait on the kernel (an RCU grace period before a table goes, processes exiting before
//! their cgroup can be removed), so it runs here, in a task of its own: the family's
//! [`Family::revert`] for the objects `end` left, the read-back that verifies nothing is left
//! (residue makes the fault `reverted-with-residue`, as before), and the removal of its
//! journal entry. The entry stays until then, rewritten first with the fault's final state,
//! so a crash in between makes start-up finish the clean-up without reporting the fault
//! reverted a second time (only a crash between the answer and that write does). The
//! fault's claims hold until its clean-up is done: a new fault on the same object waits for it.
//!
//! [`Family::end`]: crate::faults::Family::end
//! [`Family::revert`]: crate::faults::Family::revert

use std::time::Duration;

use tokio::sync::oneshot;
use tracing::{error, warn};

use super::{Engine, Fault, FaultState};
use crate::faults::{Claim, Ended};

/// A revert's clean-up, held back while the revert's answer is made: the clean-up's journal
/// write and fsyncs, netlink and process waits would otherwise compete with the answer's
/// audit line and reply for the disk and the CPUs. Dropping it lets the clean-up start.
///
/// Measured (`cargo xtask bench --only revert`, 2 cores): a loss fault's revert answered in
/// 1.31 to 1.41 ms (p50) with its clean-up started at once beside the answer, and in 0.68 to
/// 0.73 ms held until after it.
#[must_use = "the clean-up starts when this is dropped"]
pub(crate) struct Answering(Option<oneshot::Sender<()>>);

impl Answering {
    pub(super) fn new() -> (Self, oneshot::Receiver<()>) {
        let (tx, rx) = oneshot::channel();
        (Self(Some(tx)), rx)
    }
}

impl Drop for Answering {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(());
        }
    }
}

/// How long an apply waits for the clean-up of a fault holding one of its claims, and shutdown
/// for every clean-up, before going on (the apply then reports the conflict).
const CLEANUP_WAIT: Duration = Duration::from_secs(10);

impl Engine {
    /// [`Engine::finish`] for a fault whose effect `end` ended, marking it as cleaning when
    /// something is left.
    pub(super) fn finish_ended(&self, fault: &Fault, ended: Ended) -> Fault {
        let finished = self.finish(fault);
        if ended == Ended::CleanupLeft {
            if let Some(entry) = self.registry().faults.get_mut(&fault.id) {
                entry.cleaning = true;
            }
        }
        finished
    }

    /// Starts the clean-up of `fault`, which has ended, once `answered` says its answer is out
    /// (at once without one).
    pub(super) fn clean_up_later(
        &self,
        fault: Fault,
        ended: Ended,
        answered: Option<oneshot::Receiver<()>>,
    ) {
        let Some(engine) = self.me.upgrade() else {
            // The engine is being dropped: the journal entry stays for the next start-up.
            return;
        };
        self.cleanups.send_modify(|n| *n += 1);
        tokio::spawn(async move {
            if let Some(answered) = answered {
                // Sent or dropped: either way the answer no longer waits.
                let _ = answered.await;
            }
            engine.clean_up(fault, ended);
            engine.cleanups.send_modify(|n| *n -= 1);
        });
    }

    fn clean_up(&self, mut fault: Fault, ended: Ended) {
        let id = fault.id.clone();
        let removed = match ended {
            Ended::Clean => Ok(()),
            Ended::CleanupLeft => tokio::task::block_in_place(|| {
                // The entry says the fault has ended (and why), so that a crash before the
                // clean-up is done makes start-up finish it quietly, instead of reverting and
                // auditing again a fault whose revert was already answered and audited.
                if let Err(e) = self.journal.record(&fault) {
                    warn!(id = %fault.id, error = %e, "cannot journal that the fault has ended; a crash before its clean-up is done would report it reverted again");
                }
                fault.spec.family().revert(&fault.id, &self.host())
            }),
        };
        let clean = self.verify_revert(&mut fault);
        let update = match (&removed, clean) {
            (Ok(()), true) => {
                if let Err(e) = self.journal.remove(&fault.id) {
                    // The objects are gone; a stale entry only costs an idempotent revert later.
                    warn!(id = %fault.id, error = %e, "cannot remove the journal entry of a reverted fault");
                }
                None
            }
            (Ok(()), false) => {
                fault.state = FaultState::RevertedWithResidue;
                fault.reason = format!(
                    "{}, but the kernel still holds: {}",
                    fault.reason,
                    fault.residue.join("; ")
                );
                error!(id = %fault.id, kind = fault.spec.kind(), residue = ?fault.residue, "revert left residue");
                Some(fault)
            }
            (Err(e), _) => {
                // The effect ended; what was left could not be removed. Journalled still: the
                // agent retries what it read back as left, and the next start-up sweeps.
                fault.state = FaultState::Failed;
                fault.reason = format!("{}; its clean-up failed: {e}", fault.reason);
                error!(id = %fault.id, kind = fault.spec.kind(), error = %e, "the clean-up after a revert failed");
                Some(fault)
            }
        };
        if let Some(fault) = &update {
            let _ = self.journal.record(fault);
        }
        let published = {
            let mut registry = self.registry();
            registry.faults.get_mut(&id).map(|entry| {
                entry.cleaning = false;
                if let Some(fault) = &update {
                    entry.update(fault);
                }
                entry.fault.clone()
            })
        };
        if let (Some(_), Some(fault)) = (&update, published) {
            self.publish(&fault);
        }
        give_back_memory();
    }

    /// Waits while a fault that holds one of `claims` is being cleaned up.
    pub(super) async fn until_cleaned(&self, claims: &[Claim]) {
        if claims.is_empty() {
            return;
        }
        let mut changes = self.cleanups.subscribe();
        let waiting = async {
            loop {
                let busy = self.registry().faults.values().any(|e| {
                    e.cleaning
                        && e.fault
                            .spec
                            .family()
                            .claims()
                            .iter()
                            .any(|c| claims.contains(c))
                });
                if !busy || changes.changed().await.is_err() {
                    return;
                }
            }
        };
        let _ = tokio::time::timeout(CLEANUP_WAIT, waiting).await;
    }

    /// Waits for every clean-up under way.
    pub(super) async fn until_all_cleaned(&self) {
        let mut changes = self.cleanups.subscribe();
        let waiting = changes.wait_for(|running| *running == 0);
        if tokio::time::timeout(CLEANUP_WAIT, waiting).await.is_err() {
            warn!("clean-ups of reverted faults still running at shutdown; the next start-up sweeps what they leave");
        }
    }
}

/// Returns the heap memory a fault's apply and revert freed to the kernel. glibc keeps freed
/// blocks in its arenas (one per thread that allocated, and the agent's blocking threads come
/// and go), so without this the agent's resident memory creeps up with the faults it has run.
/// Off the answer's path; a trim of the agent's heap takes well under a millisecond.
fn give_back_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only releases free memory; it has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}
