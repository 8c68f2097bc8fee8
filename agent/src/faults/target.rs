//! The workload a fault is aimed at: a systemd unit, a container, a pod, a cgroup path or a set
//! of processes. One type for every family that takes a workload; the lookup itself is the
//! kernel layer's (`kernel::workload`). A target is checked when the request is validated
//! (refused, with what would be accepted, before anything is touched), resolved again when the
//! fault is applied (what it resolved to is the first line of the fault's status), and watched
//! while the fault is active: a target that disappears ends the fault.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::Host;
use crate::{
    errors::{InvalidSpec, KernelError},
    kernel::workload::{Query, Workload},
};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Target {
    /// A systemd unit's name; without a type suffix, `NAME.service`.
    Unit(String),
    /// A container's id (docker, containerd, CRI-O, podman), or a unique prefix of it.
    Container(String),
    /// A Kubernetes pod's UID, or a unique prefix of it.
    Pod(String),
    /// A cgroup path below the root of the hierarchy (of each hierarchy, on cgroup v1).
    Cgroup(String),
    /// These processes.
    Pids(Vec<u32>),
}

impl Target {
    /// The request field (and CLI flag) that names this target.
    pub(crate) fn field(&self) -> &'static str {
        match self {
            Target::Unit(_) => "unit",
            Target::Container(_) => "container",
            Target::Pod(_) => "pod",
            Target::Cgroup(_) => "cgroup",
            Target::Pids(_) => "pid",
        }
    }

    fn query(&self) -> Query<'_> {
        match self {
            Target::Unit(name) => Query::Unit(name),
            Target::Container(id) => Query::Container(id),
            Target::Pod(uid) => Query::Pod(uid),
            Target::Cgroup(path) => Query::Cgroup(path),
            Target::Pids(pids) => Query::Pids(pids),
        }
    }

    /// Finds the workload as it is now, touching nothing: for `validate`, so that an unknown
    /// unit or container is refused with the reason and what would be accepted.
    pub(crate) fn check(&self, host: &Host<'_>) -> Result<Workload, InvalidSpec> {
        if let Target::Pids(pids) = self {
            if pids.is_empty() || pids.contains(&0) {
                return Err(InvalidSpec::new(
                    "pid",
                    "expected one or more pids of running processes (0 is none)",
                ));
            }
        }
        host.workloads
            .find(self.query())
            .map_err(|e| InvalidSpec::new(self.field(), e.to_string()))
    }

    /// Finds the workload for fault `id` as it is applied, keeps it for the fault's life (the
    /// engine's liveness poll asks about it), and reports it as the fault's first status line.
    pub(crate) fn resolve(&self, id: &str, host: &Host<'_>) -> Result<Workload, KernelError> {
        let workload = host.workloads.resolve(id, self.query())?;
        let procs = host.workloads.procs(&workload).len();
        host.report.note(
            id,
            format!(
                "target {}: {}; {procs} process{}",
                workload.what,
                workload.where_(),
                if procs == 1 { "" } else { "es" }
            ),
        );
        Ok(workload)
    }

    /// Why fault `id`'s workload is gone, if it is (see `Family::target_gone`).
    pub(crate) fn gone(id: &str, host: &Host<'_>) -> Option<String> {
        host.workloads.gone(id)
    }

    /// Forgets fault `id`'s workload: part of every revert of a family with a target.
    pub(crate) fn release(id: &str, host: &Host<'_>) {
        host.workloads.forget(id);
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Unit(name) => write!(f, "unit {name}"),
            Target::Container(id) => write!(f, "container {}", &id[..id.len().min(12)]),
            Target::Pod(uid) => write!(f, "pod {uid}"),
            Target::Cgroup(path) => write!(f, "cgroup {path}"),
            Target::Pids(pids) => {
                let list: Vec<String> = pids.iter().map(u32::to_string).collect();
                let noun = if pids.len() == 1 { "pid" } else { "pids" };
                write!(f, "{noun} {}", list.join(","))
            }
        }
    }
}
