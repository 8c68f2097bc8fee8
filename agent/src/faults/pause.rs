//! The pause family: freeze a workload, and thaw it on revert (expiry, request, shutdown, and
//! at start-up after a crash, from the freezer adapter's durable record). A cgroup is frozen
//! with the kernel's freezer (cgroup v2 `cgroup.freeze`, v1 `freezer.state`), so that its
//! processes and whatever they fork stop at once; a bare set of processes (`--pid`), or a
//! workload with no freezer cgroup on this host, is stopped with SIGSTOP and continued with
//! SIGCONT.
//!
//! Refused: PID 1, the agent, its ancestors, kernel threads, a cgroup that holds the agent (its
//! own or an ancestor), and, without `force`, a workload with a process holding a session on a
//! port the safety guard protects. One pause per cgroup.

use serde::{Deserialize, Serialize};

use super::{Claim, Connection, Deadline, Demands, Family, Host, Target};
use crate::{
    errors::{EngineError, InvalidSpec, KernelError},
    kernel::{
        freezer::Frozen,
        process::{self, Proc, Untouchable},
        workload::{Workload, WorkloadError},
    },
};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct PauseSpec {
    pub(crate) target: Target,
}

impl PauseSpec {
    /// What freezing `workload` takes: its freezer cgroup (v1 freezer first, else v2), else
    /// SIGSTOP to each of its processes.
    fn frozen(&self, workload: &Workload, host: &Host<'_>) -> Vec<Frozen> {
        if workload.pids.is_none() {
            // v2 has no freezer controller to list: only v1 placements carry it.
            let v1 = workload.placement("freezer");
            let v2 = workload
                .placements
                .iter()
                .find(|p| p.v2 && p.dir.join("cgroup.freeze").exists());
            if let Some(p) = v1.or(v2) {
                return vec![Frozen::cgroup(&p.dir, p.v2)];
            }
        }
        host.workloads
            .procs(workload)
            .into_iter()
            .filter_map(Proc::read)
            .map(|p| Frozen::Process {
                pid: p.pid,
                start: p.start,
            })
            .collect()
    }

    /// Refuses a workload that holds what is never paused.
    fn refuse_untouchable(&self, workload: &Workload, host: &Host<'_>) -> Result<(), InvalidSpec> {
        let field = self.target.field();
        if let Some(why) = host.workloads.holds_agent(workload) {
            return Err(InvalidSpec::new(
                field,
                format!("{}: {why}; the agent never pauses itself", workload.what),
            ));
        }
        let untouchable = Untouchable::now();
        for p in host
            .workloads
            .procs(workload)
            .into_iter()
            .filter_map(Proc::read)
        {
            if let Some(why) = untouchable.why(&p) {
                return Err(InvalidSpec::new(
                    field,
                    format!(
                        "{} holds process {} ({}): {why}; expected a workload without it",
                        workload.what, p.pid, p.comm
                    ),
                ));
            }
        }
        Ok(())
    }

    fn describe(frozen: &[Frozen]) -> String {
        match frozen {
            [Frozen::Cgroup(file)] => format!("the cgroup freezer {}", file.display()),
            _ => {
                let pids: Vec<String> = frozen
                    .iter()
                    .filter_map(|f| match f {
                        Frozen::Process { pid, .. } => Some(pid.to_string()),
                        Frozen::Cgroup(_) => None,
                    })
                    .collect();
                format!("SIGSTOP to processes {}", pids.join(", "))
            }
        }
    }
}

impl Family for PauseSpec {
    fn validate(&self, host: &Host<'_>) -> Result<(), InvalidSpec> {
        let workload = self.target.check(host)?;
        self.refuse_untouchable(&workload, host)
    }

    fn admit(&self, host: &Host<'_>) -> Result<(), EngineError> {
        let workload = self.target.check(host)?;
        if !host.force {
            let holders = process::session_holders(host.protected_ports);
            if let Some((pid, port)) = host
                .workloads
                .procs(&workload)
                .into_iter()
                .find_map(|pid| holders.get(&pid).map(|port| (pid, *port)))
            {
                let comm = Proc::read(pid).map(|p| p.comm).unwrap_or_default();
                return Err(EngineError::Guarded {
                    what: format!(
                        "the session of process {pid} ({comm}) of {} on protected port {port}",
                        workload.what
                    ),
                });
            }
        }
        if let Some((other, frozen)) = host.freezer.held_by(&self.frozen(&workload, host)) {
            return Err(EngineError::Conflict {
                other,
                object: match frozen {
                    Frozen::Cgroup(file) => format!("the freezer of {}", file.display()),
                    Frozen::Process { pid, .. } => format!("process {pid}"),
                },
            });
        }
        Ok(())
    }

    fn claims(&self) -> Vec<Claim> {
        vec![Claim::Pause {
            target: self.target.to_string(),
        }]
    }

    fn touches(&self, _conn: &Connection) -> bool {
        false
    }

    /// Sessions on protected ports are checked by process in `admit`.
    fn may_touch_port(&self, _local_port: u16) -> bool {
        false
    }

    fn plan(&self, _id: &str, _deadline: Deadline, host: &Host<'_>) -> Vec<String> {
        let Ok(workload) = self.target.check(host) else {
            return vec![format!("find: {}, at apply", self.target)];
        };
        let frozen = self.frozen(&workload, host);
        vec![
            format!("find: {} at {}", workload.what, workload.where_()),
            "record: what is frozen, fsynced, before anything is".to_owned(),
            format!("freeze: {}", Self::describe(&frozen)),
            "revert: thaw it (also at start-up after a crash, from the record)".to_owned(),
        ]
    }

    fn apply(&self, id: &str, _deadline: Deadline, host: &Host<'_>) -> Result<(), KernelError> {
        let workload = self.target.resolve(id, host)?;
        let frozen = self.frozen(&workload, host);
        if let Some((other, _)) = host.freezer.held_by(&frozen) {
            return Err(WorkloadError::Ambiguous(format!(
                "{} was paused by fault {other} meanwhile",
                workload.what
            ))
            .into());
        }
        host.freezer.freeze(id, &frozen)?;
        host.report
            .note(id, format!("froze: {}", Self::describe(&frozen)));
        Ok(())
    }

    fn revert(&self, id: &str, host: &Host<'_>) -> Result<(), KernelError> {
        Target::release(id, host);
        host.freezer.thaw(id)
    }

    fn effect(&self, id: &str, host: &Host<'_>) -> Result<super::effect::Effect, KernelError> {
        let held = host.freezer.held(id)?;
        Ok(super::effect::Effect::new("processes frozen")
            .hits(held)
            .counter("processes_frozen", held))
    }

    fn objects(&self, id: &str, host: &Host<'_>) -> Result<Vec<String>, KernelError> {
        host.freezer.objects(id)
    }

    fn watched(&self) -> bool {
        true
    }

    fn target_gone(&self, id: &str, host: &Host<'_>) -> Option<String> {
        Target::gone(id, host)
    }

    /// Nothing the policy's limits bound; an operator policy restricts pause by its kind.
    fn demands(&self) -> Demands {
        Demands::default()
    }

    fn summary(&self) -> String {
        format!("pause {}", self.target)
    }
}

impl super::readiness::Ready for PauseSpec {
    fn readiness(preflight: &super::readiness::Preflight<'_>) -> super::readiness::Readiness {
        use super::readiness::Readiness;
        use crate::kernel::preflight::Cap;
        Readiness::lacking(preflight.privileges, &[Cap::Kill]).unwrap_or_else(|| {
            Readiness::from_capability(
                "workloads",
                &preflight.caps.workloads,
                "pause by --pid (SIGSTOP and SIGCONT) where no freezer is mounted",
            )
        })
    }
}
