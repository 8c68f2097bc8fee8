//! The fault engine: the one way every request goes, whatever interface it came from.
//! It owns the registry of faults and their lifecycle (`pending -> active -> reverting ->
//! reverted | failed`), deadlines and leases, conflicts between faults, the safety guard, the
//! journal, and the start-up reconcile that reverts what a crashed agent left behind. Families
//! do the kernel work; the engine decides when, and makes sure a revert always follows an apply.
//!
//! A lease is a second, movable deadline: the controller that applied the fault renews it, and
//! when renewals stop (the controller died, or the fault cut it off) the fault is reverted with
//! reason "lease expired". It starts when the fault becomes active, since the controller cannot
//! renew a fault before the answer to its apply names it. Leases live in the running agent: a
//! restart reverts every fault an earlier run left, leased or not, and the journalled expiry only
//! says whether the lease ran out while no agent was there (reason "lease expired") or not
//! ("recovered").

use std::{
    collections::{BTreeMap, VecDeque},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex, MutexGuard,
    },
    time::{Duration, SystemTime},
};

use tokio::{
    sync::{broadcast, oneshot, watch},
    task::AbortHandle,
    time::Instant,
};
use tracing::{error, info, warn};

use crate::{
    config::AgentConfig,
    errors::{EngineError, InvalidSpec, KernelError},
    faults::{Adapters, Deadline, FaultSpec, Host},
    kernel::caps::Capabilities,
};

mod cleanup;
pub(crate) mod doctor;
mod effect;
pub(crate) mod fault;
pub(crate) mod guard;
pub(crate) mod journal;
mod lease;
mod recover;
pub(crate) mod space;
mod verify;

pub(crate) use cleanup::Answering;
pub(crate) use fault::{Fault, FaultState};
use guard::Guard;
use journal::Journal;
pub(crate) use lease::{check_lease, NotRenewed, Renewal};

/// Finished faults kept for `get`/`ls` after they ended.
const KEEP_FINISHED: usize = 64;
const MAX_LABELS: usize = 32;
/// Status lines a fault keeps (its first, the target it resolved, and the latest); the audit
/// log has every one.
const MAX_STATUS: usize = 100;
/// How often the engine asks a watched family whether its target is still there.
const LIVENESS_PERIOD: Duration = Duration::from_secs(1);

/// Why a fault was reverted, as recorded in its `reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RevertReason {
    Deadline,
    Requested,
    /// Nobody renewed the fault's lease in time.
    LeaseExpired,
    Shutdown,
    /// Reverted at start-up, left by an earlier run, before its deadline or lease ran out.
    Recovered,
    /// What the fault acted on disappeared (a workload's processes exited, its cgroup went).
    TargetGone,
}

impl RevertReason {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            RevertReason::Deadline => "deadline",
            RevertReason::Requested => "requested",
            RevertReason::LeaseExpired => "lease expired",
            RevertReason::Shutdown => "shutdown",
            RevertReason::Recovered => "recovered",
            RevertReason::TargetGone => "target gone",
        }
    }
}

/// Where the engine reports the reverts it decides on by itself (deadline, lease expiry,
/// shutdown, start-up, target gone) and what faults report while active: the agent's audit
/// log. A revert a caller asked for is recorded where the call is, with who asked.
pub(crate) trait RevertLog: Send + Sync {
    /// `fault` has ended (reverted, or failed with every cause in its `reason`) for `reason`.
    fn reverted(&self, fault: &Fault, reason: RevertReason);

    /// `fault` reported `line` (the workload it resolved, processes it signalled).
    fn reported(&self, fault: &Fault, line: &str);
}

/// A request to apply a fault, already parsed into domain types.
#[derive(Debug, Clone)]
pub(crate) struct ApplyRequest {
    pub(crate) spec: FaultSpec,
    pub(crate) duration: Duration,
    /// Revert the fault unless its lease is renewed within this period.
    pub(crate) lease: Option<Duration>,
    pub(crate) labels: BTreeMap<String, String>,
    pub(crate) dry_run: bool,
    pub(crate) force: bool,
}

#[derive(Debug, Clone)]
pub(crate) enum ApplyOutcome {
    /// Nothing was touched; this is what would be done.
    DryRun {
        plan: Vec<String>,
    },
    Applied(Box<Fault>),
}

struct Entry {
    fault: Fault,
    /// Reverts the fault at its deadline.
    timer: Option<AbortHandle>,
    /// Reverts the fault when its lease runs out.
    lease_timer: Option<AbortHandle>,
    /// When the lease runs out, on the monotonic clock the timers use (the fault's
    /// `lease_expires_at` is the same instant on the wall clock, for people and the journal).
    lease_due: Option<Instant>,
    /// The fault's objects have been read once: later readings are compared with the last.
    objects_read: bool,
    /// Reverts retried because the last one left residue.
    residue_retries: u32,
    /// The fault's effect has ended and its clean-up runs: its claims still hold.
    cleaning: bool,
}

impl Entry {
    fn new(fault: Fault) -> Self {
        Self {
            fault,
            timer: None,
            lease_timer: None,
            lease_due: None,
            objects_read: false,
            residue_retries: 0,
            cleaning: false,
        }
    }

    /// Replaces the fault with `fault`, a copy taken earlier: the status lines reported since
    /// are the registry's, and stay.
    fn update(&mut self, fault: &Fault) {
        let status = std::mem::take(&mut self.fault.status);
        self.fault = fault.clone();
        if status.len() >= self.fault.status.len() {
            self.fault.status = status;
        }
    }
}

#[derive(Default)]
struct Registry {
    faults: BTreeMap<String, Entry>,
    finished: VecDeque<String>,
}

/// The engine as families see it: where their status lines go. Weak, since the engine owns
/// the adapters that hold it.
struct Reports(std::sync::Weak<Engine>);

impl crate::faults::Report for Reports {
    fn note(&self, id: &str, line: String) {
        if let Some(engine) = self.0.upgrade() {
            engine.note(id, line);
        }
    }
}

pub(crate) struct Engine {
    config: AgentConfig,
    adapters: Adapters,
    revert_log: Arc<dyn RevertLog>,
    journal: Journal,
    guard: Guard,
    registry: Mutex<Registry>,
    events: broadcast::Sender<Fault>,
    shutting_down: AtomicBool,
    /// Turns true once shutdown has reverted everything: long-lived streams end on it.
    closing: watch::Sender<bool>,
    /// Clean-ups of ended faults still running (see [`cleanup`]).
    cleanups: watch::Sender<usize>,
    /// The engine itself, for the tasks it starts.
    me: std::sync::Weak<Engine>,
}

impl Engine {
    pub(crate) fn new(
        config: AgentConfig,
        caps: Capabilities,
        revert_log: Arc<dyn RevertLog>,
    ) -> Result<Arc<Self>, EngineError> {
        let journal = Journal::open(&config.state_dir)?;
        let (events, _) = broadcast::channel(256);
        Ok(Arc::new_cyclic(|engine| Self {
            adapters: Adapters::new(&config, caps).with_report(Arc::new(Reports(engine.clone()))),
            revert_log,
            guard: Guard::new(config.protected_ports.clone()),
            journal,
            config,
            registry: Mutex::default(),
            events,
            shutting_down: AtomicBool::new(false),
            closing: watch::Sender::new(false),
            cleanups: watch::Sender::new(0),
            me: engine.clone(),
        }))
    }

    pub(crate) fn config(&self) -> &AgentConfig {
        &self.config
    }

    /// A preflight of the host as this agent sees it; applies nothing.
    pub(crate) fn doctor(&self) -> doctor::Report {
        doctor::examine(&self.config, &self.adapters)
    }

    pub(crate) fn capabilities(&self) -> &Capabilities {
        self.adapters.caps()
    }

    fn host(&self) -> Host<'_> {
        self.host_with(false)
    }

    fn host_with(&self, force: bool) -> Host<'_> {
        self.adapters.host(force)
    }

    fn registry(&self) -> MutexGuard<'_, Registry> {
        // A panic while holding the lock leaves plain data behind, still worth reverting.
        self.registry.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Lifecycle events of every fault, from now on.
    pub(crate) fn subscribe(&self) -> broadcast::Receiver<Fault> {
        self.events.subscribe()
    }

    /// Becomes true when the agent shuts down.
    pub(crate) fn closing(&self) -> watch::Receiver<bool> {
        self.closing.subscribe()
    }

    fn publish(&self, fault: &Fault) {
        // No subscriber is not an error.
        let _ = self.events.send(fault.clone());
    }

    /// Validates, plans, journals and applies a fault, then arms its deadline.
    pub(crate) async fn apply(
        self: &Arc<Self>,
        request: ApplyRequest,
    ) -> Result<ApplyOutcome, EngineError> {
        self.check_request(&request)?;
        let family = request.spec.family();
        let host = self.host_with(request.force);
        family.validate(&host)?;
        if let Some((feature, detail)) = family.missing_capability(self.adapters.caps()) {
            return Err(EngineError::Unsupported { feature, detail });
        }
        let id = Fault::new_id();
        let deadline = Deadline {
            remaining: request.duration,
        };
        // Admission and planning may read kernel state over netlink, which blocks.
        let plan = tokio::task::block_in_place(|| {
            family.admit(&host)?;
            Ok::<_, EngineError>(family.plan(&id, deadline, &host))
        })?;
        if request.dry_run {
            return Ok(ApplyOutcome::DryRun { plan });
        }
        self.check_state_space()?;
        if !request.force {
            if let Some(what) = self.guard.check(family) {
                return Err(EngineError::Guarded { what });
            }
        }

        let now = SystemTime::now();
        let mut fault = Fault {
            id: id.clone(),
            spec: request.spec.clone(),
            labels: request.labels,
            state: FaultState::Pending,
            created_at: now,
            deadline: now + request.duration,
            duration: request.duration,
            reason: String::new(),
            plan,
            lease: request.lease,
            // Set again when the fault becomes active and the lease starts; journalled from
            // here on, so that a crash while applying is recovered with the right reason.
            lease_expires_at: request.lease.map(|lease| now + lease),
            effect: None,
            ineffective: false,
            objects: Vec::new(),
            changes: Vec::new(),
            residue: Vec::new(),
            status: Vec::new(),
        };
        // A fault whose clean-up still runs holds its claims until it is done (milliseconds).
        self.until_cleaned(&family.claims()).await;
        {
            // Checked and registered under one lock, so two racing requests cannot both win.
            let mut registry = self.registry();
            if self.shutting_down.load(Ordering::SeqCst) {
                return Err(EngineError::ShuttingDown);
            }
            let claims = family.claims();
            for other in registry
                .faults
                .values()
                .filter(|e| !e.fault.state.is_finished() || e.cleaning)
            {
                if let Some(claim) = other
                    .fault
                    .spec
                    .family()
                    .claims()
                    .into_iter()
                    .find(|c| claims.contains(c))
                {
                    return Err(EngineError::Conflict {
                        other: other.fault.id.clone(),
                        object: claim.to_string(),
                    });
                }
            }
            registry
                .faults
                .insert(id.clone(), Entry::new(fault.clone()));
        }
        if let Err(e) = self.journal.record(&fault) {
            self.registry().faults.remove(&id);
            return Err(e.into());
        }
        self.publish(&fault);

        let started = std::time::Instant::now();
        let applied = self
            .kernel(&fault, request.force, |family, id, host| {
                family.apply(id, deadline, host)
            })
            .await;
        let kernel_time = started.elapsed();
        if let Err(source) = applied {
            // The revert is the clean-up of a partial apply (families leave what they made for
            // it, and every revert is idempotent); its failure must not hide the original error.
            if let Err(e) = self
                .kernel(&fault, false, |family, id, host| family.revert(id, host))
                .await
            {
                error!(id = %fault.id, error = %e, "clean-up after a failed apply failed");
                fault.state = FaultState::Failed;
                fault.reason = format!("apply failed: {source}; clean-up failed: {e}");
                let _ = self.journal.record(&fault);
            } else {
                fault.state = FaultState::Failed;
                fault.reason = format!("apply failed: {source}");
                let _ = self.journal.remove(&id);
            }
            self.finish(&fault);
            return Err(EngineError::Apply { id, source });
        }

        fault.state = FaultState::Active;
        let lease_due = fault.lease.map(|lease| {
            fault.lease_expires_at = Some(SystemTime::now() + lease);
            Instant::now() + lease
        });
        // Not journalled again: a restart reverts every journalled fault whatever its state, so
        // the pending entry is all it needs, and a second fsynced write would cost an apply a
        // third of a millisecond. The lease's end in the entry is then earlier by the kernel's
        // apply time (milliseconds), on the safe side. Renewals rewrite the entry.
        // Armed for the deadline the fault records (and callers see), not for its duration from
        // now: an apply that took long (a kernel module loaded on demand) must not push the
        // revert past the deadline by as much.
        let due = Instant::now()
            + fault
                .deadline
                .duration_since(SystemTime::now())
                .unwrap_or_default();
        let timer = {
            let engine = Arc::clone(self);
            let id = id.clone();
            let watched = family.watched();
            tokio::spawn(async move {
                let (reason, detail) = engine.until_due(&id, due, watched).await;
                // Reverting in a task of its own: a revert request aborts this timer, and must
                // never abort a revert half-way.
                tokio::spawn(async move {
                    if let Err(e) = engine.revert_for(&id, reason, detail, |_| true, None).await {
                        error!(id, reason = reason.as_str(), error = %e, "automatic revert failed");
                    }
                });
            })
            .abort_handle()
        };
        {
            let mut registry = self.registry();
            if let Some(entry) = registry.faults.get_mut(&id) {
                entry.update(&fault);
                fault.status = entry.fault.status.clone();
                entry.timer = Some(timer);
                // Armed under the lock: the timer reads `lease_due` back when it fires.
                if let Some(due) = lease_due {
                    entry.lease_due = Some(due);
                    entry.lease_timer = Some(self.arm_lease(&id, due));
                }
            }
        }
        let lease = fault
            .lease
            .map(|l| humantime::format_duration(l).to_string())
            .unwrap_or_else(|| "none".to_owned());
        info!(id = %fault.id, kind = fault.spec.kind(), spec = %fault.spec.family().summary(), duration = %humantime::format_duration(fault.duration), lease, kernel_us = kernel_time.as_micros() as u64, "fault active");
        self.publish(&fault);
        Ok(ApplyOutcome::Applied(Box::new(fault)))
    }

    /// Prepares ahead what the next apply would otherwise wait for (see
    /// [`crate::faults::Adapters::prepare_ahead`]); for after an apply's answer.
    pub(crate) fn prepare_ahead(&self) {
        self.adapters.prepare_ahead();
    }

    /// Waits for the fault's deadline; a watched family is asked every [`LIVENESS_PERIOD`]
    /// whether its target is still there. Returns why the fault is due.
    async fn until_due(
        &self,
        id: &str,
        due: Instant,
        watched: bool,
    ) -> (RevertReason, Option<String>) {
        if !watched {
            tokio::time::sleep_until(due).await;
            return (RevertReason::Deadline, None);
        }
        let mut ticks = tokio::time::interval_at(Instant::now() + LIVENESS_PERIOD, LIVENESS_PERIOD);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(due) => return (RevertReason::Deadline, None),
                _ = ticks.tick() => {
                    let Ok(fault) = self.get(id) else {
                        return (RevertReason::Deadline, None);
                    };
                    let gone = tokio::task::block_in_place(|| {
                        fault.spec.family().target_gone(id, &self.host())
                    });
                    if let Some(why) = gone {
                        return (RevertReason::TargetGone, Some(why));
                    }
                }
            }
        }
    }

    /// Refuses a new fault when the state filesystem is at its reserve: the room left is for
    /// the journal entries and reverts of the faults already active.
    fn check_state_space(&self) -> Result<(), EngineError> {
        let dir = &self.config.state_dir;
        match space::state_space(dir, self.config.state_reserve) {
            Ok(space) if space.low() => Err(EngineError::StateSpace {
                detail: space.describe(dir),
            }),
            Ok(_) => Ok(()),
            // The journal's own write says what is wrong, if anything is.
            Err(e) => {
                warn!(dir = %dir.display(), error = %e, "cannot read the state filesystem's free space");
                Ok(())
            }
        }
    }

    /// Adds a status line to fault `id` (see [`crate::faults::Report`]).
    fn note(&self, id: &str, line: String) {
        let fault = {
            let mut registry = self.registry();
            let Some(entry) = registry.faults.get_mut(id) else {
                return;
            };
            let status = &mut entry.fault.status;
            status.push(line.clone());
            if status.len() > MAX_STATUS {
                // The first line (the target it resolved) stays; the audit log has the rest.
                status.remove(1);
            }
            entry.fault.clone()
        };
        info!(id, kind = fault.spec.kind(), status = %line, "fault status");
        self.revert_log.reported(&fault, &line);
        self.publish(&fault);
    }

    fn check_request(&self, request: &ApplyRequest) -> Result<(), InvalidSpec> {
        let max = self.config.max_duration;
        if request.duration.is_zero() {
            return Err(InvalidSpec::new(
                "duration",
                "a fault needs a duration greater than zero (e.g. 30s, 5m)",
            ));
        }
        if request.duration > max {
            return Err(InvalidSpec::new(
                "duration",
                format!(
                    "{} is longer than this agent's maximum of {} (faultline serve --max-duration)",
                    humantime::format_duration(request.duration),
                    humantime::format_duration(max)
                ),
            ));
        }
        if let Some(lease) = request.lease {
            check_lease(lease, request.duration)?;
        }
        if request.labels.len() > MAX_LABELS {
            return Err(InvalidSpec::new(
                "label",
                format!(
                    "{} labels given, at most {MAX_LABELS} are accepted",
                    request.labels.len()
                ),
            ));
        }
        for (key, value) in &request.labels {
            let key_ok = !key.is_empty()
                && key.len() <= 63
                && key
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/'));
            if !key_ok {
                return Err(InvalidSpec::new(
                    "label",
                    format!("key {key:?} is not accepted: 1-63 characters of a-z, A-Z, 0-9, '_', '-', '.', '/'"),
                ));
            }
            if value.len() > 256 {
                return Err(InvalidSpec::new(
                    "label",
                    format!(
                        "the value of {key:?} is {} bytes long, at most 256 are accepted",
                        value.len()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Runs a kernel operation of the fault's family off the async runtime.
    async fn kernel<T, F>(&self, fault: &Fault, force: bool, op: F) -> Result<T, KernelError>
    where
        F: FnOnce(&dyn crate::faults::Family, &str, &Host<'_>) -> Result<T, KernelError>,
    {
        // Netlink and bpf() calls finish in microseconds to milliseconds; blocking the
        // runtime for that long is cheaper than moving borrowed state to another thread.
        tokio::task::block_in_place(|| op(fault.spec.family(), &fault.id, &self.host_with(force)))
    }

    pub(crate) fn get(&self, id: &str) -> Result<Fault, EngineError> {
        self.registry()
            .faults
            .get(id)
            .map(|e| e.fault.clone())
            .ok_or_else(|| EngineError::NotFound { id: id.to_owned() })
    }

    /// Every fault the agent knows, oldest first.
    pub(crate) fn list(&self) -> Vec<Fault> {
        let mut faults: Vec<Fault> = self
            .registry()
            .faults
            .values()
            .map(|e| e.fault.clone())
            .collect();
        faults.sort_by_key(|f| f.created_at);
        faults
    }

    pub(crate) fn active_count(&self) -> usize {
        self.registry()
            .faults
            .values()
            .filter(|e| !e.fault.state.is_finished())
            .count()
    }

    /// Reverts one fault. Reverting a fault that already ended returns it unchanged.
    pub(crate) async fn revert(
        &self,
        id: &str,
        reason: RevertReason,
    ) -> Result<Fault, EngineError> {
        self.revert_for(id, reason, None, |_| true, None).await
    }

    /// [`Engine::revert`] for a caller that answers for it: what the revert leaves for after
    /// its answer waits until the returned [`Answering`] is dropped, once the answer is made.
    pub(crate) async fn revert_answering(
        &self,
        id: &str,
        reason: RevertReason,
    ) -> (Result<Fault, EngineError>, Answering) {
        let (answering, answered) = Answering::new();
        let result = self
            .revert_for(id, reason, None, |_| true, Some(answered))
            .await;
        (result, answering)
    }

    /// Reverts one fault if `still_due` says so, asked under the registry lock: a timer that
    /// fired decides on what it saw, and a renewal may have come in since.
    async fn revert_when(
        &self,
        id: &str,
        reason: RevertReason,
        still_due: impl FnOnce(&Entry) -> bool,
    ) -> Result<Fault, EngineError> {
        self.revert_for(id, reason, None, still_due, None).await
    }

    /// [`Engine::revert_when`], with what happened in the fault's reason after the reason
    /// itself (`target gone: container 3f2a1b2c3d4e: ...`).
    async fn revert_for(
        &self,
        id: &str,
        reason: RevertReason,
        detail: Option<String>,
        still_due: impl FnOnce(&Entry) -> bool,
        answered: Option<oneshot::Receiver<()>>,
    ) -> Result<Fault, EngineError> {
        let mut fault = {
            let mut registry = self.registry();
            let entry = registry
                .faults
                .get_mut(id)
                .ok_or_else(|| EngineError::NotFound { id: id.to_owned() })?;
            if entry.fault.state != FaultState::Active || !still_due(entry) {
                // Finished, or another revert (or the apply) is under way and will finish it,
                // or renewed since the timer fired.
                return Ok(entry.fault.clone());
            }
            for timer in [entry.timer.take(), entry.lease_timer.take()]
                .into_iter()
                .flatten()
            {
                timer.abort();
            }
            entry.fault.state = FaultState::Reverting;
            entry.fault.clone()
        };
        self.publish(&fault);
        match self
            .kernel(&fault, false, |family, id, host| family.end(id, host))
            .await
        {
            Ok(ended) => {
                fault.state = FaultState::Reverted;
                fault.reason = match &detail {
                    Some(detail) => format!("{}: {detail}", reason.as_str()),
                    None => reason.as_str().to_owned(),
                };
                // The effect has ended: the answer goes now. What is left (objects that no
                // longer act, the read-back that verifies the revert, the journal entry) is
                // done after it; a crash in between leaves the entry, and start-up sweeps.
                let fault = self.finish_ended(&fault, ended);
                info!(id = %fault.id, kind = fault.spec.kind(), reason = reason.as_str(), "fault reverted");
                self.audit_automatic(&fault, reason);
                self.clean_up_later(fault.clone(), ended, answered);
                Ok(fault)
            }
            Err(source) => {
                fault.state = FaultState::Failed;
                fault.reason = format!("revert ({}) failed: {source}", reason.as_str());
                // What is left, for `get` and for the retries.
                self.verify_revert(&mut fault);
                let _ = self.journal.record(&fault);
                error!(id = %fault.id, kind = fault.spec.kind(), error = %source, "revert failed");
                self.finish(&fault);
                self.audit_automatic(&fault, reason);
                Err(EngineError::Revert {
                    id: fault.id,
                    source,
                })
            }
        }
    }

    /// Writes the audit line of a revert nobody asked for; a requested one has its line already.
    fn audit_automatic(&self, fault: &Fault, reason: RevertReason) {
        if reason != RevertReason::Requested {
            self.revert_log.reverted(fault, reason);
        }
    }

    /// Reverts every active fault; one failure does not stop the others.
    pub(crate) async fn revert_all(&self, reason: RevertReason) -> Vec<Result<Fault, EngineError>> {
        let ids: Vec<String> = self
            .registry()
            .faults
            .values()
            .filter(|e| e.fault.state == FaultState::Active)
            .map(|e| e.fault.id.clone())
            .collect();
        let mut results = Vec::with_capacity(ids.len());
        for id in ids {
            results.push(self.revert(&id, reason).await);
        }
        results
    }

    /// Refuses new faults and reverts every active one, and waits for their clean-ups.
    pub(crate) async fn shutdown(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
        for result in self.revert_all(RevertReason::Shutdown).await {
            if let Err(e) = result {
                error!(error = %e, "revert at shutdown failed; the next start-up retries it");
            }
        }
        self.until_all_cleaned().await;
        self.closing.send_replace(true);
    }

    /// Records a fault's final state in the registry (adding it, for a fault recovered at
    /// start-up) and trims old finished faults.
    fn finish(&self, fault: &Fault) -> Fault {
        let finished = {
            let mut registry = self.registry();
            let entry = registry
                .faults
                .entry(fault.id.clone())
                .or_insert_with(|| Entry::new(fault.clone()));
            entry.update(fault);
            let finished = entry.fault.clone();
            for timer in [entry.timer.take(), entry.lease_timer.take()]
                .into_iter()
                .flatten()
            {
                timer.abort();
            }
            entry.lease_due = None;
            registry.finished.push_back(fault.id.clone());
            while registry.finished.len() > KEEP_FINISHED {
                let Some(old) = registry.finished.pop_front() else {
                    break;
                };
                if registry.faults.get(&old).is_some_and(|e| e.cleaning) {
                    // Its clean-up still holds its claims; it goes at a later finish.
                    registry.finished.push_back(old);
                    break;
                }
                registry.faults.remove(&old);
            }
            finished
        };
        self.publish(&finished);
        finished
    }
}
