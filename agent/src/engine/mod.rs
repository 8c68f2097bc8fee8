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
    sync::{broadcast, watch},
    task::AbortHandle,
    time::Instant,
};
use tracing::{error, info, warn};

use crate::{
    config::AgentConfig,
    errors::{EngineError, InvalidSpec, KernelError},
    faults::{shape, stress::Stress, Deadline, FaultSpec, Host},
    kernel::{
        caps::Capabilities,
        nft,
        qdisc::{Netlink, Records},
        tc::{self, Classifiers},
    },
};

pub mod fault;
pub mod guard;
pub mod journal;

pub use fault::{Fault, FaultState};
use guard::Guard;
use journal::Journal;

/// Finished faults kept for `get`/`ls` after they ended.
const KEEP_FINISHED: usize = 64;
const MAX_LABELS: usize = 32;
/// The shortest lease accepted: a controller renewing every third of it still has over 300 ms
/// per renewal, and the agent's revert within a second of the expiry stays meaningful.
pub const MIN_LEASE: Duration = Duration::from_secs(1);

/// Why a fault was reverted, as recorded in its `reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RevertReason {
    Deadline,
    Requested,
    /// Nobody renewed the fault's lease in time.
    LeaseExpired,
    Shutdown,
    /// Reverted at start-up, left by an earlier run, before its deadline or lease ran out.
    Recovered,
}

impl RevertReason {
    pub fn as_str(self) -> &'static str {
        match self {
            RevertReason::Deadline => "deadline",
            RevertReason::Requested => "requested",
            RevertReason::LeaseExpired => "lease expired",
            RevertReason::Shutdown => "shutdown",
            RevertReason::Recovered => "recovered",
        }
    }

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

/// Whether `lease` is long enough to be a lease at all.
fn check_lease_period(lease: Duration) -> Result<(), InvalidSpec> {
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
pub fn check_lease(lease: Duration, duration: Duration) -> Result<(), InvalidSpec> {
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

/// A request to apply a fault, already parsed into domain types.
#[derive(Debug, Clone)]
pub struct ApplyRequest {
    pub spec: FaultSpec,
    pub duration: Duration,
    /// Revert the fault unless its lease is renewed within this period.
    pub lease: Option<Duration>,
    pub labels: BTreeMap<String, String>,
    pub dry_run: bool,
    pub force: bool,
}

#[derive(Debug, Clone)]
pub enum ApplyOutcome {
    /// Nothing was touched; this is what would be done.
    DryRun {
        plan: Vec<String>,
    },
    Applied(Box<Fault>),
}

/// What start-up found and cleaned.
#[derive(Debug, Default)]
pub struct Recovery {
    /// Faults the journal said were unfinished, now reverted.
    pub reverted: Vec<String>,
    /// Faults whose revert failed again; they stay journalled.
    pub failed: Vec<(String, String)>,
    /// Tagged kernel objects no journal entry accounted for, removed.
    pub swept: Vec<String>,
    /// Journal entries that could not be read.
    pub unreadable: Vec<String>,
}

/// What a lease renewal did with one of the ids it was given.
#[derive(Debug, Clone)]
pub enum Renewal {
    /// Renewed: the fault with its new `lease_expires_at`.
    Renewed(Box<Fault>),
    NotRenewed {
        id: String,
        why: NotRenewed,
    },
}

/// Why a fault's lease was not renewed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotRenewed {
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

struct Entry {
    fault: Fault,
    /// Reverts the fault at its deadline.
    timer: Option<AbortHandle>,
    /// Reverts the fault when its lease runs out.
    lease_timer: Option<AbortHandle>,
    /// When the lease runs out, on the monotonic clock the timers use (the fault's
    /// `lease_expires_at` is the same instant on the wall clock, for people and the journal).
    lease_due: Option<Instant>,
}

impl Entry {
    fn new(fault: Fault) -> Self {
        Self {
            fault,
            timer: None,
            lease_timer: None,
            lease_due: None,
        }
    }
}

#[derive(Default)]
struct Registry {
    faults: BTreeMap<String, Entry>,
    finished: VecDeque<String>,
}

pub struct Engine {
    config: AgentConfig,
    caps: Capabilities,
    classifiers: Classifiers,
    qdisc_records: Records,
    stress: Stress,
    journal: Journal,
    guard: Guard,
    registry: Mutex<Registry>,
    events: broadcast::Sender<Fault>,
    shutting_down: AtomicBool,
    /// Turns true once shutdown has reverted everything: long-lived streams end on it.
    closing: watch::Sender<bool>,
}

impl Engine {
    pub fn new(config: AgentConfig, caps: Capabilities) -> Result<Arc<Self>, EngineError> {
        let journal = Journal::open(&config.state_dir)?;
        let (events, _) = broadcast::channel(256);
        Ok(Arc::new(Self {
            classifiers: Classifiers::new(config.bpf_pin_dir.clone()),
            qdisc_records: Records::new(&config.state_dir),
            stress: Stress::new(
                caps.cgroups
                    .clone()
                    .map(|c| c.with_parent(&config.cgroup_parent)),
                config.memory_reserve,
            ),
            guard: Guard::new(config.protected_ports.clone()),
            journal,
            caps,
            config,
            registry: Mutex::default(),
            events,
            shutting_down: AtomicBool::new(false),
            closing: watch::Sender::new(false),
        }))
    }

    pub fn config(&self) -> &AgentConfig {
        &self.config
    }

    pub fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    fn host(&self) -> Host<'_> {
        self.host_with(false)
    }

    fn host_with(&self, force: bool) -> Host<'_> {
        Host {
            caps: &self.caps,
            classifiers: &self.classifiers,
            stress: &self.stress,
            qdisc_records: &self.qdisc_records,
            force,
        }
    }

    fn registry(&self) -> MutexGuard<'_, Registry> {
        // A panic while holding the lock leaves plain data behind, still worth reverting.
        self.registry.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Lifecycle events of every fault, from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Fault> {
        self.events.subscribe()
    }

    /// Becomes true when the agent shuts down.
    pub fn closing(&self) -> watch::Receiver<bool> {
        self.closing.subscribe()
    }

    fn publish(&self, fault: &Fault) {
        // No subscriber is not an error.
        let _ = self.events.send(fault.clone());
    }

    /// Start-up reconcile: reverts every fault the journal left unfinished, then removes any
    /// faultline-tagged kernel object that no remaining journal entry accounts for.
    pub async fn recover(self: &Arc<Self>) -> Result<Recovery, EngineError> {
        let engine = Arc::clone(self);
        tokio::task::spawn_blocking(move || engine.recover_blocking())
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
    }

    fn recover_blocking(&self) -> Result<Recovery, EngineError> {
        let mut recovery = Recovery::default();
        let (faults, unreadable) = self.journal.load()?;
        for entry in unreadable {
            warn!(path = %entry.path.display(), error = %entry.error, "unreadable journal entry set aside");
            recovery.unreadable.push(entry.path.display().to_string());
        }
        for mut fault in faults {
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
        }
        let keep: Vec<&str> = recovery.failed.iter().map(|(id, _)| id.as_str()).collect();
        let sweep = || -> Result<Vec<String>, KernelError> {
            let mut swept = Vec::new();
            if self.caps.nftables.available {
                for id in nft::fault_ids()? {
                    if !keep.contains(&id.as_str()) {
                        nft::remove(&id)?;
                        swept.push(format!("nftables chains of {id}"));
                    }
                }
            }
            for id in self.stress.sweep(&keep)? {
                swept.push(format!("stress cgroup and workers of {id}"));
            }
            for id in self.classifiers.sweep(&keep)? {
                swept.push(format!("eBPF classifier of {id}"));
            }
            swept.extend(self.sweep_shaping(&keep)?);
            Ok(swept)
        };
        recovery.swept = sweep().map_err(|source| EngineError::Revert {
            id: "(start-up sweep)".to_owned(),
            source,
        })?;
        for object in &recovery.swept {
            warn!(
                object,
                "removed a faultline kernel object no journal entry knew"
            );
        }
        Ok(recovery)
    }

    /// Puts back every root qdisc recorded by a fault that is gone, removes faultline roots and
    /// IFB devices that no fault accounts for.
    fn sweep_shaping(&self, keep: &[&str]) -> Result<Vec<String>, KernelError> {
        let mut swept = Vec::new();
        let host = self.host();
        let nl = Netlink::open()?;
        let mut kept_devices = Vec::new();
        for id in self.qdisc_records.ids() {
            let device = self.qdisc_records.load(&id)?.map(|r| r.device);
            if keep.contains(&id.as_str()) {
                kept_devices.extend(device);
                continue;
            }
            shape::restore_root(&nl, &id, &host)?;
            swept.push(format!(
                "root qdisc of {} (restored as recorded by {id})",
                device.unwrap_or_default()
            ));
        }
        for (device, ifindex, handle) in tc::block_on(nl.faultline_roots())? {
            if kept_devices.contains(&device) {
                continue;
            }
            tc::block_on(nl.delete_root(&device, ifindex, handle))?;
            swept.push(format!(
                "faultline root qdisc of {device} with no record (the kernel's default is back)"
            ));
        }
        for (id, ifb) in tc::block_on(nl.faultline_ifbs())? {
            if !keep.contains(&id.as_str()) {
                tc::block_on(nl.delete_link(&ifb))?;
                swept.push(format!("IFB device {ifb} of {id}"));
            }
        }
        Ok(swept)
    }

    /// Validates, plans, journals and applies a fault, then arms its deadline.
    pub async fn apply(
        self: &Arc<Self>,
        request: ApplyRequest,
    ) -> Result<ApplyOutcome, EngineError> {
        self.check_request(&request)?;
        let family = request.spec.family();
        let host = self.host_with(request.force);
        family.validate(&host)?;
        if let Some((feature, detail)) = family.missing_capability(&self.caps) {
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
        };
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
                .filter(|e| !e.fault.state.is_finished())
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
        let timer = {
            let engine = Arc::clone(self);
            let id = id.clone();
            tokio::spawn(async move {
                tokio::time::sleep(request.duration).await;
                // Reverting in a task of its own: a revert request aborts this timer, and must
                // never abort a revert half-way.
                tokio::spawn(async move {
                    if let Err(e) = engine.revert(&id, RevertReason::Deadline).await {
                        error!(id, error = %e, "revert at the deadline failed");
                    }
                });
            })
            .abort_handle()
        };
        {
            let mut registry = self.registry();
            if let Some(entry) = registry.faults.get_mut(&id) {
                entry.fault = fault.clone();
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
    async fn kernel<F>(&self, fault: &Fault, force: bool, op: F) -> Result<(), KernelError>
    where
        F: FnOnce(&dyn crate::faults::Family, &str, &Host<'_>) -> Result<(), KernelError>,
    {
        // Netlink and bpf() calls finish in microseconds to milliseconds; blocking the
        // runtime for that long is cheaper than moving borrowed state to another thread.
        tokio::task::block_in_place(|| op(fault.spec.family(), &fault.id, &self.host_with(force)))
    }

    pub fn get(&self, id: &str) -> Result<Fault, EngineError> {
        self.registry()
            .faults
            .get(id)
            .map(|e| e.fault.clone())
            .ok_or_else(|| EngineError::NotFound { id: id.to_owned() })
    }

    /// Every fault the agent knows, oldest first.
    pub fn list(&self) -> Vec<Fault> {
        let mut faults: Vec<Fault> = self
            .registry()
            .faults
            .values()
            .map(|e| e.fault.clone())
            .collect();
        faults.sort_by_key(|f| f.created_at);
        faults
    }

    pub fn active_count(&self) -> usize {
        self.registry()
            .faults
            .values()
            .filter(|e| !e.fault.state.is_finished())
            .count()
    }

    /// Reverts one fault. Reverting a fault that already ended returns it unchanged.
    pub async fn revert(&self, id: &str, reason: RevertReason) -> Result<Fault, EngineError> {
        self.revert_when(id, reason, |_| true).await
    }

    /// Reverts one fault if `still_due` says so, asked under the registry lock: a timer that
    /// fired decides on what it saw, and a renewal may have come in since.
    async fn revert_when(
        &self,
        id: &str,
        reason: RevertReason,
        still_due: impl FnOnce(&Entry) -> bool,
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
            .kernel(&fault, false, |family, id, host| family.revert(id, host))
            .await
        {
            Ok(()) => {
                fault.state = FaultState::Reverted;
                fault.reason = reason.as_str().to_owned();
                if let Err(e) = self.journal.remove(&fault.id) {
                    // The objects are gone; a stale entry only costs an idempotent revert later.
                    warn!(id = %fault.id, error = %e, "cannot remove the journal entry of a reverted fault");
                }
                info!(id = %fault.id, kind = fault.spec.kind(), reason = reason.as_str(), "fault reverted");
                self.finish(&fault);
                Ok(fault)
            }
            Err(source) => {
                fault.state = FaultState::Failed;
                fault.reason = format!("revert ({}) failed: {source}", reason.as_str());
                let _ = self.journal.record(&fault);
                error!(id = %fault.id, kind = fault.spec.kind(), error = %source, "revert failed");
                self.finish(&fault);
                Err(EngineError::Revert {
                    id: fault.id,
                    source,
                })
            }
        }
    }

    /// Starts the timer that reverts fault `id` when its lease runs out at `due`, unless a
    /// renewal moved the lease on meanwhile.
    fn arm_lease(self: &Arc<Self>, id: &str, due: Instant) -> AbortHandle {
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
    pub fn renew(
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
                    state @ (FaultState::Reverting | FaultState::Reverted | FaultState::Failed) => {
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

    /// Reverts every active fault; one failure does not stop the others.
    pub async fn revert_all(&self, reason: RevertReason) -> Vec<Result<Fault, EngineError>> {
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

    /// Refuses new faults and reverts every active one.
    pub async fn shutdown(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
        for result in self.revert_all(RevertReason::Shutdown).await {
            if let Err(e) = result {
                error!(error = %e, "revert at shutdown failed; the next start-up retries it");
            }
        }
        self.closing.send_replace(true);
    }

    /// Records a fault's final state in the registry (adding it, for a fault recovered at
    /// start-up) and trims old finished faults.
    fn finish(&self, fault: &Fault) {
        {
            let mut registry = self.registry();
            let entry = registry
                .faults
                .entry(fault.id.clone())
                .or_insert_with(|| Entry::new(fault.clone()));
            entry.fault = fault.clone();
            for timer in [entry.timer.take(), entry.lease_timer.take()]
                .into_iter()
                .flatten()
            {
                timer.abort();
            }
            entry.lease_due = None;
            registry.finished.push_back(fault.id.clone());
            while registry.finished.len() > KEEP_FINISHED {
                if let Some(old) = registry.finished.pop_front() {
                    registry.faults.remove(&old);
                }
            }
        }
        self.publish(fault);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::faults::{BlockSpec, Direction, PacketMatch};

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
