//! Verifying faults against the kernel: while a fault is active, its objects are read back
//! about once a second and compared with the last reading, so that a change made behind
//! faultline's back (a deleted class, a rule added to its chain) is reported as it happens;
//! after a revert they are read once more, and whatever is left is residue: the fault ends
//! `reverted-with-residue` instead of `reverted`, keeps its journal entry, and the agent
//! retries the revert every second for a while, then leaves it to the next start-up's sweep.

use std::time::SystemTime;

use tracing::{error, info, warn};

use super::{Engine, Fault, FaultState};

/// Retries of a revert that left residue, one a second, before the start-up sweep is left to
/// it.
pub(super) const RESIDUE_RETRIES: u32 = 30;

impl Engine {
    /// Fault `fault`'s objects now; `None` (logged) when they cannot be read.
    pub(super) fn read_objects(&self, fault: &Fault) -> Option<Vec<String>> {
        let read =
            tokio::task::block_in_place(|| fault.spec.family().objects(&fault.id, &self.host()));
        match read {
            Ok(objects) => Some(objects),
            Err(e) => {
                warn!(id = %fault.id, error = %e, "cannot read the fault's kernel objects");
                None
            }
        }
    }

    /// Compares active fault `id`'s objects with the last reading, and records and publishes
    /// what changed.
    pub(super) fn check_objects(&self, id: &str) {
        let Some(fault) = self.active(id) else {
            return;
        };
        let Some(now) = self.read_objects(&fault) else {
            return;
        };
        let changed = self.update_active(id, |entry| {
            let first = !entry.objects_read;
            entry.objects_read = true;
            let before = std::mem::replace(&mut entry.fault.objects, now);
            if first || before == entry.fault.objects {
                None
            } else {
                let at = humantime::format_rfc3339_seconds(SystemTime::now());
                let after = &entry.fault.objects;
                let lines: Vec<String> = before
                    .iter()
                    .filter(|o| !after.contains(o))
                    .map(|o| format!("{at}: gone: {o}"))
                    .chain(
                        after
                            .iter()
                            .filter(|o| !before.contains(o))
                            .map(|o| format!("{at}: appeared: {o}")),
                    )
                    .collect();
                entry.fault.changes.extend(lines.iter().cloned());
                Some((entry.fault.clone(), lines))
            }
        });
        if let Some((fault, lines)) = changed.flatten() {
            for line in &lines {
                warn!(id, kind = fault.spec.kind(), change = %line, "the fault's kernel objects were changed behind faultline's back");
            }
            self.publish(&fault);
        }
    }

    /// Reads back what a revert of `fault` left; records it as residue. True when clean.
    pub(super) fn verify_revert(&self, fault: &mut Fault) -> bool {
        // Unreadable counts as clean: the revert itself reported success, and a read error is
        // logged; claiming residue nobody saw would send operators after ghosts.
        fault.residue = self.read_objects(fault).unwrap_or_default();
        fault.residue.is_empty()
    }

    /// Tries again the reverts that left residue; a clean one becomes `reverted`.
    pub(super) fn retry_residue(&self) {
        let due: Vec<Fault> = {
            let mut registry = self.registry();
            registry
                .faults
                .values_mut()
                .filter(|e| {
                    !e.fault.residue.is_empty()
                        && matches!(
                            e.fault.state,
                            FaultState::RevertedWithResidue | FaultState::Failed
                        )
                        && e.residue_retries < RESIDUE_RETRIES
                })
                .map(|e| {
                    e.residue_retries += 1;
                    e.fault.clone()
                })
                .collect()
        };
        for mut fault in due {
            let reverted =
                tokio::task::block_in_place(|| fault.spec.family().revert(&fault.id, &self.host()));
            if reverted.is_err() || !self.verify_revert(&mut fault) {
                continue;
            }
            fault.state = FaultState::Reverted;
            fault.reason = format!("{}; the residue was removed on a retry", fault.reason);
            if let Err(e) = self.journal.remove(&fault.id) {
                error!(id = %fault.id, error = %e, "cannot remove the journal entry of a reverted fault");
            }
            info!(id = %fault.id, kind = fault.spec.kind(), "the residue of a revert is gone");
            if let Some(entry) = self.registry().faults.get_mut(&fault.id) {
                entry.fault = fault.clone();
            }
            self.publish(&fault);
        }
    }
}
