//! Workloads: where a systemd unit, a container, a pod, a cgroup path or a set of processes is in
//! the host's cgroup hierarchies, found from the cgroup tree alone (no container daemon's API),
//! on cgroup v2 and v1. On v1 a workload is a path in each hierarchy it has a directory in,
//! and [`Workload::placements`] says where it is per hierarchy (per controller).
//!
//! [`Workloads`] is the one resolver every family that takes a workload uses: it finds a
//! workload when a fault is applied, remembers it under the fault's id for the fault's life
//! (what `faultline get` shows, and what the engine's liveness poll asks about), and lists its
//! processes. It creates nothing in the kernel.

use std::{
    collections::{BTreeMap, HashMap},
    fs,
    path::PathBuf,
    sync::Mutex,
};

use serde::{Deserialize, Serialize};
use thiserror::Error;

pub(crate) mod tree;

pub(crate) use tree::{Hierarchies, Hierarchy};

/// What to look for, as a request names it.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Query<'a> {
    /// A systemd unit's name; without a type suffix, `NAME.service`.
    Unit(&'a str),
    /// A container id or a unique prefix of it.
    Container(&'a str),
    /// A pod UID or a unique prefix of it.
    Pod(&'a str),
    /// A cgroup path below each hierarchy's root.
    Cgroup(&'a str),
    /// These processes.
    Pids(&'a [u32]),
}

#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub(crate) enum WorkloadError {
    /// Nothing by that name; the text says where it looked and what would be accepted.
    #[error("{0}")]
    NotFound(String),
    /// A prefix or a name that matches more than one workload; the text lists them.
    #[error("{0}")]
    Ambiguous(String),
    /// Not a name of the kind asked for.
    #[error("{0}")]
    Malformed(String),
}

/// Where a workload is in one hierarchy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Placement {
    /// The hierarchy's name: `cpu,cpuacct`, `freezer`, `name=systemd` (v1), `cgroup2`.
    pub(crate) hierarchy: String,
    /// The cgroup's path below the hierarchy's root, `/system.slice/nginx.service`.
    pub(crate) path: String,
    /// Its directory.
    pub(crate) dir: PathBuf,
    pub(crate) v2: bool,
}

impl Placement {
    /// Whether the hierarchy carries `controller` (on v2: whether the cgroup has it enabled).
    pub(crate) fn has(&self, controller: &str) -> bool {
        if self.v2 {
            fs::read_to_string(self.dir.join("cgroup.controllers"))
                .unwrap_or_default()
                .split_whitespace()
                .any(|c| c == controller)
        } else {
            self.hierarchy.split(',').any(|c| c == controller)
        }
    }
}

/// A workload as found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Workload {
    /// What it is, as messages name it: `container 3f2a1b2c3d4e`, `unit nginx.service`.
    pub(crate) what: String,
    /// Its cgroup in each hierarchy it has one in (for a set of processes, the cgroups of the
    /// first); none for processes in no cgroup.
    pub(crate) placements: Vec<Placement>,
    /// A bare set of processes (`--pid`), each with its start time, so that a pid the kernel
    /// reuses is not taken for the process: the workload is these, not their cgroup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) pids: Option<Vec<(u32, u64)>>,
    /// Whether it held a process when it was found: a workload that did and holds none any
    /// more is gone, while an empty cgroup named by path is only gone when it is removed.
    pub(crate) populated: bool,
}

impl Workload {
    /// `/system.slice/docker-....scope (cpu,cpuacct, memory, name=systemd)`, one entry per
    /// distinct path.
    pub(crate) fn where_(&self) -> String {
        let mut paths: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for p in &self.placements {
            paths.entry(&p.path).or_default().push(&p.hierarchy);
        }
        let parts: Vec<String> = paths
            .iter()
            .map(|(path, names)| format!("{path} ({})", names.join(", ")))
            .collect();
        if parts.is_empty() {
            "no cgroup".to_owned()
        } else {
            parts.join("; ")
        }
    }

    /// The placement in a hierarchy that carries `controller`.
    pub(crate) fn placement(&self, controller: &str) -> Option<&Placement> {
        self.placements.iter().find(|p| p.has(controller))
    }
}

/// The resolver, and the workloads of the faults that are active.
pub(crate) struct Workloads {
    hierarchies: Hierarchies,
    /// The agent's cgroup parent: a cgroup of this name inside a workload is faultline's
    /// (stress workers in the workload), and its processes are not the workload's.
    parent: String,
    resolved: Mutex<HashMap<String, Workload>>,
}

impl Workloads {
    pub(crate) fn new(parent: &str) -> Self {
        Self::with(Hierarchies::probe(), parent)
    }

    pub(crate) fn with(hierarchies: Hierarchies, parent: &str) -> Self {
        Self {
            hierarchies,
            parent: parent.to_owned(),
            resolved: Mutex::default(),
        }
    }

    /// Finds a workload; touches nothing.
    pub(crate) fn find(&self, query: Query<'_>) -> Result<Workload, WorkloadError> {
        let mut workload = match query {
            Query::Unit(name) => self.find_unit(name)?,
            Query::Container(prefix) => self.find_container(prefix)?,
            Query::Pod(prefix) => self.find_pod(prefix)?,
            Query::Cgroup(path) => self.find_cgroup(path)?,
            Query::Pids(pids) => self.find_pids(pids)?,
        };
        workload.populated = !self.procs(&workload).is_empty();
        Ok(workload)
    }

    /// Finds a workload for fault `id` and remembers it for the fault's life.
    pub(crate) fn resolve(&self, id: &str, query: Query<'_>) -> Result<Workload, WorkloadError> {
        let workload = self.find(query)?;
        self.lock().insert(id.to_owned(), workload.clone());
        Ok(workload)
    }

    /// The workload fault `id` resolved, while the fault is active.
    pub(crate) fn resolved(&self, id: &str) -> Option<Workload> {
        self.lock().get(id).cloned()
    }

    /// Forgets fault `id`'s workload (its fault ended).
    pub(crate) fn forget(&self, id: &str) {
        self.lock().remove(id);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Workload>> {
        self.resolved.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Why fault `id`'s workload is gone, if it is: its processes exited, or its cgroup was
    /// removed or emptied.
    pub(crate) fn gone(&self, id: &str) -> Option<String> {
        let workload = self.resolved(id)?;
        if let Some(pids) = &workload.pids {
            return pids
                .iter()
                .all(|(pid, start)| start_time(*pid) != Some(*start))
                .then(|| format!("{}: every process has exited", workload.what));
        }
        if !workload.placements.iter().any(|p| p.dir.is_dir()) {
            return Some(format!(
                "{}: its cgroup {} was removed",
                workload.what,
                workload.where_()
            ));
        }
        (workload.populated && self.procs(&workload).is_empty()).then(|| {
            format!(
                "{}: no process is left in its cgroup {}",
                workload.what,
                workload.where_()
            )
        })
    }

    /// The workload's processes now, sorted: those of a pid set still running, or every
    /// process in its cgroups and below, but for faultline's own cgroups inside it.
    pub(crate) fn procs(&self, workload: &Workload) -> Vec<u32> {
        let mut pids: Vec<u32> = match &workload.pids {
            Some(pids) => pids
                .iter()
                .filter(|(pid, start)| start_time(*pid) == Some(*start))
                .map(|(pid, _)| *pid)
                .collect(),
            None => workload
                .placements
                .iter()
                .flat_map(|p| tree::procs_below(&p.dir, &self.parent))
                .collect(),
        };
        pids.sort_unstable();
        pids.dedup();
        pids
    }

    /// The agent's own cgroup path in each hierarchy.
    fn own_cgroups(&self) -> Vec<(String, String)> {
        self.hierarchies
            .of_process(std::process::id())
            .unwrap_or_default()
            .into_iter()
            .map(|(index, path)| (self.hierarchies.0[index].name.clone(), path))
            .collect()
    }

    /// Which of the workload's cgroups holds the agent (is its cgroup or an ancestor of it).
    pub(crate) fn holds_agent(&self, workload: &Workload) -> Option<String> {
        if workload.pids.is_some() {
            return None;
        }
        let own = self.own_cgroups();
        workload.placements.iter().find_map(|p| {
            own.iter()
                .find(|(h, path)| {
                    *h == p.hierarchy
                        && (path == &p.path || path.starts_with(&format!("{}/", p.path)))
                })
                .map(|(h, path)| {
                    format!(
                        "{} ({h}) is the agent's own cgroup {path} or an ancestor of it",
                        p.path
                    )
                })
        })
    }

    fn find_unit(&self, name: &str) -> Result<Workload, WorkloadError> {
        let unit = unit_name(name)?;
        let found = tree::search(&self.hierarchies, |dir, _| {
            (dir == unit).then(|| unit.clone())
        });
        // One unit name at two paths (a system and a user unit) is two workloads.
        let found = found
            .into_iter()
            .map(|f| tree::Found {
                key: f.path.clone(),
                ..f
            })
            .collect();
        self.one(found, &format!("unit {unit}"), || {
            format!(
                "no cgroup named {unit} in {}: is the unit running? Expected the name of a running \
                 systemd unit (nginx, nginx.service, session-3.scope, user.slice)",
                self.mounts()
            )
        })
    }

    fn find_container(&self, prefix: &str) -> Result<Workload, WorkloadError> {
        let prefix = prefix.to_ascii_lowercase();
        if prefix.is_empty() || !prefix.bytes().all(|b| b.is_ascii_hexdigit()) || prefix.len() > 64
        {
            return Err(WorkloadError::Malformed(format!(
                "{prefix:?} is not a container id: expected up to 64 hex digits, the id or a \
                 unique prefix of it (as docker ps, crictl ps or podman ps show it)"
            )));
        }
        let found = tree::search(&self.hierarchies, |dir, _| {
            tree::container_id(dir).filter(|id| id.starts_with(&prefix))
        });
        self.one(found, &format!("container {}", short(&prefix)), || {
            format!(
                "no container with id {prefix} in {}: looked for docker-<id>.scope, \
                 cri-containerd-<id>.scope, crio-<id>.scope, libpod-<id>.scope and <id> \
                 directories (docker/<id>, kubepods). Expected the id, or a unique prefix, of a \
                 running container",
                self.mounts()
            )
        })
    }

    fn find_pod(&self, prefix: &str) -> Result<Workload, WorkloadError> {
        let prefix = prefix.to_ascii_lowercase().replace('_', "-");
        if prefix.is_empty()
            || prefix.len() > 36
            || !prefix.bytes().all(|b| b == b'-' || b.is_ascii_hexdigit())
        {
            return Err(WorkloadError::Malformed(format!(
                "{prefix:?} is not a pod UID: expected a UID like \
                 0b5e2c4a-9d1f-4e1e-8a55-3c1f2b7d9e00 (kubectl get pod -o \
                 jsonpath='{{.metadata.uid}}'), or a unique prefix of it"
            )));
        }
        let found = tree::search(&self.hierarchies, |dir, parent| {
            tree::pod_uid(dir, parent).filter(|uid| uid.starts_with(&prefix))
        });
        self.one(found, &format!("pod {prefix}"), || {
            format!(
                "no pod with UID {prefix} in {}: looked for kubepods*/.../pod<uid> cgroups \
                 (either cgroup driver). Expected the UID, or a unique prefix, of a pod running \
                 on this node",
                self.mounts()
            )
        })
    }

    fn find_cgroup(&self, path: &str) -> Result<Workload, WorkloadError> {
        let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
        if parts.iter().any(|p| *p == "." || *p == "..") {
            return Err(WorkloadError::Malformed(format!(
                "{path:?}: . and .. are not accepted; expected a path below the cgroup root, \
                 as in /proc/<pid>/cgroup (system.slice/nginx.service)"
            )));
        }
        if parts.is_empty() {
            return Err(WorkloadError::Malformed(format!(
                "{path:?} is the root cgroup, the whole host; expected a cgroup below it \
                 (system.slice/nginx.service)"
            )));
        }
        let path = format!("/{}", parts.join("/"));
        let placements: Vec<Placement> = self
            .hierarchies
            .0
            .iter()
            .filter(|h| h.dir(&path).is_dir())
            .map(|h| placement(h, &path))
            .collect();
        if placements.is_empty() {
            return Err(WorkloadError::NotFound(format!(
                "no cgroup {path} in {}; expected a path below the cgroup root, as in the lines \
                 of /proc/<pid>/cgroup",
                self.mounts()
            )));
        }
        Ok(Workload {
            what: format!("cgroup {path}"),
            placements,
            pids: None,
            populated: false,
        })
    }

    fn find_pids(&self, pids: &[u32]) -> Result<Workload, WorkloadError> {
        let mut with_start = Vec::new();
        for &pid in pids {
            let start = start_time(pid).ok_or_else(|| {
                WorkloadError::NotFound(format!(
                    "no process {pid} on this host (in the agent's pid namespace); expected the \
                     pid of a running process"
                ))
            })?;
            with_start.push((pid, start));
        }
        let first = pids.first().ok_or_else(|| {
            WorkloadError::Malformed("no pid given; expected one or more pids".to_owned())
        })?;
        let placements = self
            .hierarchies
            .of_process(*first)
            .unwrap_or_default()
            .into_iter()
            .map(|(index, path)| placement(&self.hierarchies.0[index], &path))
            .collect();
        let list: Vec<String> = pids.iter().map(u32::to_string).collect();
        Ok(Workload {
            what: format!(
                "{} {}",
                if pids.len() == 1 { "pid" } else { "pids" },
                list.join(",")
            ),
            placements,
            pids: Some(with_start),
            populated: true,
        })
    }

    /// The one workload `found` names, else why not.
    fn one(
        &self,
        found: Vec<tree::Found>,
        what: &str,
        not_found: impl FnOnce() -> String,
    ) -> Result<Workload, WorkloadError> {
        let mut keys: Vec<&str> = found.iter().map(|f| f.key.as_str()).collect();
        keys.dedup();
        match keys.len() {
            0 => Err(WorkloadError::NotFound(not_found())),
            1 => {
                let key = keys[0];
                let what = if key.len() == 64 {
                    format!("{} {}", what.split(' ').next().unwrap_or(what), short(key))
                } else if what.starts_with("pod") {
                    format!("pod {key}")
                } else {
                    what.to_owned()
                };
                Ok(Workload {
                    what,
                    placements: found
                        .iter()
                        .map(|f| placement(&self.hierarchies.0[f.hierarchy], &f.path))
                        .collect(),
                    pids: None,
                    populated: false,
                })
            }
            n => {
                let mut candidates: Vec<String> = Vec::new();
                for key in &keys {
                    let path = found
                        .iter()
                        .find(|f| f.key == *key)
                        .map(|f| f.path.as_str())
                        .unwrap_or_default();
                    candidates.push(if path == *key {
                        path.to_owned()
                    } else {
                        format!("{key} at {path}")
                    });
                }
                Err(WorkloadError::Ambiguous(format!(
                    "{what} matches {n} workloads: {}; give more of the id (or the cgroup path \
                     with --cgroup)",
                    candidates.join(", ")
                )))
            }
        }
    }

    fn mounts(&self) -> String {
        if self.hierarchies.0.is_empty() {
            return "this host's cgroup tree (no cgroup hierarchy is mounted)".to_owned();
        }
        let mounts: Vec<String> = self
            .hierarchies
            .0
            .iter()
            .map(|h| h.mount.display().to_string())
            .collect();
        format!("the cgroup tree ({})", mounts.join(", "))
    }
}

fn placement(hierarchy: &Hierarchy, path: &str) -> Placement {
    Placement {
        hierarchy: hierarchy.name.clone(),
        path: path.to_owned(),
        dir: hierarchy.dir(path),
        v2: hierarchy.is_v2(),
    }
}

/// The first 12 digits of an id, as container tools show it.
fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

/// The unit types systemd gives cgroups to, and the others a name may carry.
const UNIT_TYPES: [&str; 11] = [
    "service",
    "scope",
    "slice",
    "socket",
    "mount",
    "swap",
    "automount",
    "device",
    "path",
    "target",
    "timer",
];

/// `nginx` -> `nginx.service`; a name with a unit type keeps it.
pub(crate) fn unit_name(name: &str) -> Result<String, WorkloadError> {
    let ok = !name.is_empty()
        && name.len() <= 255
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, ':' | '_' | '.' | '\\' | '@' | '-'));
    if !ok {
        return Err(WorkloadError::Malformed(format!(
            "{name:?} is not a systemd unit name: expected letters, digits and :_.\\@- \
             (nginx, nginx.service, session-3.scope)"
        )));
    }
    let typed = name
        .rsplit_once('.')
        .is_some_and(|(_, suffix)| UNIT_TYPES.contains(&suffix));
    Ok(if typed {
        name.to_owned()
    } else {
        format!("{name}.service")
    })
}

/// A process's start time (clock ticks after boot, field 22 of /proc/<pid>/stat): with the pid,
/// it names one process even when the kernel reuses the pid.
pub(crate) fn start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses; fields resume after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split(' ').nth(19)?.parse().ok()
}

#[cfg(test)]
mod tests;
