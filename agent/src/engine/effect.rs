//! Watching what active faults do: once a second the engine reads each active fault's effect
//! from its kernel objects ([`crate::faults::Family::effect`]) and keeps it on the fault, so
//! `get`, `ls`, `Watch` and Prometheus show it and a fault that ends keeps its last reading.
//! A fault whose `hits` are still zero once `ineffective_after` has passed since it became
//! active is flagged ineffective — it is aimed at nothing, or the kernel holds it to nothing —
//! with a warning to its watchers; the flag clears if it starts to act.

use std::{sync::Arc, time::Duration};

use tracing::warn;

use super::{Engine, Entry, Fault, FaultState};

/// How often active faults' effects are read: often enough for a live view, rarely enough to
/// cost nothing measurable (a netlink dump or a few cgroup files per fault).
const INTERVAL: Duration = Duration::from_secs(1);

impl Engine {
    /// Reads the effect of every active fault, forever (until the agent closes).
    pub(crate) async fn watch_effects(self: Arc<Self>) {
        let mut closing = self.closing();
        let mut tick = tokio::time::interval(INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = closing.wait_for(|c| *c) => return,
            }
            for id in self.active_ids() {
                self.observe(&id);
            }
            self.retry_residue();
        }
    }

    /// Reads active fault `id`'s effect and objects from the kernel now (see the module).
    pub(crate) fn observe(&self, id: &str) {
        self.refresh_effect(id);
        self.check_objects(id);
    }

    /// Reads fault `id`'s effect now, if it is active, and keeps it; flags or clears
    /// `ineffective`, publishing the change.
    fn refresh_effect(&self, id: &str) {
        let Some(fault) = self.active(id) else {
            return;
        };
        let read =
            tokio::task::block_in_place(|| fault.spec.family().effect(&fault.id, &self.host()));
        let effect = match read {
            Ok(effect) => effect,
            Err(e) => {
                warn!(id, error = %e, "cannot read the fault's effect");
                return;
            }
        };
        let grace_over = fault
            .created_at
            .elapsed()
            .is_ok_and(|age| age >= self.config.ineffective_after);
        let changed = self.update_active(id, |entry| {
            let ineffective = if effect.hits > 0 {
                false
            } else {
                grace_over || entry.fault.ineffective
            };
            let changed = ineffective != entry.fault.ineffective;
            entry.fault.ineffective = ineffective;
            entry.fault.effect = Some(effect);
            changed.then(|| entry.fault.clone())
        });
        if let Some(fault) = changed.flatten() {
            if fault.ineffective {
                warn!(
                    id,
                    kind = fault.spec.kind(),
                    after = ?self.config.ineffective_after,
                    "the fault has acted on nothing: is it aimed at the right target?"
                );
            }
            self.publish(&fault);
        }
    }

    fn active_ids(&self) -> Vec<String> {
        self.registry()
            .faults
            .values()
            .filter(|e| e.fault.state == FaultState::Active)
            .map(|e| e.fault.id.clone())
            .collect()
    }

    /// Runs `f` on fault `id`'s entry under the registry lock, if the fault is still active.
    pub(super) fn update_active<T>(&self, id: &str, f: impl FnOnce(&mut Entry) -> T) -> Option<T> {
        let mut registry = self.registry();
        registry
            .faults
            .get_mut(id)
            .filter(|e| e.fault.state == FaultState::Active)
            .map(f)
    }

    pub(super) fn active(&self, id: &str) -> Option<Fault> {
        self.registry()
            .faults
            .get(id)
            .filter(|e| e.fault.state == FaultState::Active)
            .map(|e| e.fault.clone())
    }
}
