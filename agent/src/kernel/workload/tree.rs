//! The host's cgroup hierarchies as a workload lookup sees them: every cgroup mount (each v1
//! hierarchy, named after its controllers, and the v2 one), how a process's
//! `/proc/<pid>/cgroup` lines map onto them, and how container runtimes, the kubelet and systemd
//! name the cgroups they make.
//!
//! Written by hand: the cgroup crates on crates.io manage cgroups a program creates, none looks
//! up the cgroups of containers and pods by the names their runtimes give them.

use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
};

/// How deep below a hierarchy's root a lookup searches. kubepods nest four levels
/// (`kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid>.slice/cri-containerd-<id>.scope`),
/// user units about six; the bound keeps a lookup's cost bounded on any tree.
const MAX_DEPTH: usize = 10;

/// One mounted cgroup hierarchy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Hierarchy {
    /// `cpu,cpuacct`, `memory`, `name=systemd` for v1; `cgroup2` for v2.
    pub(crate) name: String,
    pub(crate) mount: PathBuf,
    /// v1: the controllers (and `name=` option) of the mount, sorted; v2: empty.
    controllers: BTreeSet<String>,
}

impl Hierarchy {
    pub(crate) fn is_v2(&self) -> bool {
        self.controllers.is_empty()
    }

    /// The directory of a cgroup path (`/system.slice/x.service`) in this hierarchy.
    pub(crate) fn dir(&self, path: &str) -> PathBuf {
        self.mount.join(path.trim_start_matches('/'))
    }
}

/// Every cgroup hierarchy mounted on the host, once per hierarchy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Hierarchies(pub(crate) Vec<Hierarchy>);

/// The v1 controllers the kernel knows; other mount options (`rw`, `xattr`,
/// `release_agent=...`) are not part of a hierarchy's name.
const V1_CONTROLLERS: [&str; 14] = [
    "blkio",
    "cpu",
    "cpuacct",
    "cpuset",
    "devices",
    "freezer",
    "hugetlb",
    "memory",
    "misc",
    "net_cls",
    "net_prio",
    "perf_event",
    "pids",
    "rdma",
];

impl Hierarchies {
    pub(crate) fn probe() -> Self {
        Self::from_mountinfo(&fs::read_to_string("/proc/self/mountinfo").unwrap_or_default())
    }

    /// The cgroup mounts of a mountinfo text, the first mount of each hierarchy; only mounts of
    /// a hierarchy's root (a bind mount of a sub-tree would shift every path).
    pub(crate) fn from_mountinfo(text: &str) -> Self {
        let mut found: Vec<Hierarchy> = Vec::new();
        for line in text.lines() {
            let Some((left, right)) = line.split_once(" - ") else {
                continue;
            };
            let left: Vec<&str> = left.split(' ').collect();
            let (Some(root), Some(mount)) = (left.get(3), left.get(4)) else {
                continue;
            };
            let right: Vec<&str> = right.split(' ').collect();
            let (Some(fstype), Some(options)) = (right.first(), right.get(2)) else {
                continue;
            };
            if *root != "/" {
                continue;
            }
            let hierarchy = match *fstype {
                "cgroup2" => Hierarchy {
                    name: "cgroup2".to_owned(),
                    mount: PathBuf::from(mount),
                    controllers: BTreeSet::new(),
                },
                "cgroup" => {
                    let controllers: BTreeSet<String> = options
                        .split(',')
                        .filter(|o| V1_CONTROLLERS.contains(o) || o.starts_with("name="))
                        .map(str::to_owned)
                        .collect();
                    if controllers.is_empty() {
                        continue;
                    }
                    Hierarchy {
                        name: controllers.iter().cloned().collect::<Vec<_>>().join(","),
                        mount: PathBuf::from(mount),
                        controllers,
                    }
                }
                _ => continue,
            };
            if !found.iter().any(|h| h.controllers == hierarchy.controllers) {
                found.push(hierarchy);
            }
        }
        Self(found)
    }

    /// The hierarchy a `/proc/<pid>/cgroup` line's controller field names (`cpu,cpuacct`,
    /// `name=systemd`; empty for v2).
    pub(crate) fn by_proc_field(&self, field: &str) -> Option<&Hierarchy> {
        let wanted: BTreeSet<String> = field
            .split(',')
            .filter(|c| !c.is_empty())
            .map(str::to_owned)
            .collect();
        self.0.iter().find(|h| h.controllers == wanted)
    }

    /// `(hierarchy index, cgroup path)` of a process, from its `/proc/<pid>/cgroup`.
    pub(crate) fn of_process(&self, pid: u32) -> Option<Vec<(usize, String)>> {
        let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
        Some(
            text.lines()
                .filter_map(|line| {
                    let mut parts = line.splitn(3, ':');
                    let (_, field, path) = (parts.next()?, parts.next()?, parts.next()?);
                    let hierarchy = self.by_proc_field(field)?;
                    let index = self.0.iter().position(|h| h == hierarchy)?;
                    Some((index, path.to_owned()))
                })
                .collect(),
        )
    }
}

/// A directory found by a walk: its hierarchy and its cgroup path (`/a/b`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Found {
    pub(crate) hierarchy: usize,
    pub(crate) path: String,
    /// What the directory's name identifies: a container's full id, a pod's UID, a unit's name.
    pub(crate) key: String,
}

/// Walks every hierarchy (to [`MAX_DEPTH`]) and returns the directories `identify` names, not
/// descending into them.
pub(crate) fn search(
    hierarchies: &Hierarchies,
    identify: impl Fn(&str, &str) -> Option<String>,
) -> Vec<Found> {
    let mut found = Vec::new();
    for (index, hierarchy) in hierarchies.0.iter().enumerate() {
        let mut stack: Vec<(PathBuf, String, usize)> =
            vec![(hierarchy.mount.clone(), String::new(), 0)];
        while let Some((dir, path, depth)) = stack.pop() {
            let Ok(entries) = fs::read_dir(&dir) else {
                continue;
            };
            let parent = path.rsplit('/').next().unwrap_or("").to_owned();
            for entry in entries.filter_map(Result::ok) {
                if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                    continue;
                }
                let name = entry.file_name().to_string_lossy().into_owned();
                let child = format!("{path}/{name}");
                if let Some(key) = identify(&name, &parent) {
                    found.push(Found {
                        hierarchy: index,
                        path: child,
                        key,
                    });
                } else if depth + 1 < MAX_DEPTH {
                    stack.push((entry.path(), child, depth + 1));
                }
            }
        }
    }
    found.sort_by(|a, b| (&a.key, &a.path, a.hierarchy).cmp(&(&b.key, &b.path, b.hierarchy)));
    found
}

/// The full container id a cgroup directory's name carries: `docker-<id>.scope`,
/// `cri-containerd-<id>.scope`, `crio-<id>.scope`, `libpod-<id>.scope` (systemd cgroup driver),
/// or the bare id (`docker/<id>`, `kubepods/.../pod<uid>/<id>` with the cgroupfs driver). A
/// runtime's helper scopes (`crio-conmon-<id>.scope`) are not the container.
pub(crate) fn container_id(name: &str) -> Option<String> {
    let name = name.strip_suffix(".scope").unwrap_or(name);
    let id = ["docker-", "cri-containerd-", "crio-", "libpod-"]
        .iter()
        .find_map(|prefix| name.strip_prefix(prefix))
        .unwrap_or(name);
    is_container_id(id).then(|| id.to_owned())
}

/// 64 lowercase hex digits, as docker, containerd, CRI-O and podman write ids.
pub(crate) fn is_container_id(id: &str) -> bool {
    id.len() == 64
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The pod UID a kubepods cgroup directory's name carries: `pod<uid>` (cgroupfs driver) or
/// `kubepods-<qos>-pod<uid>.slice` with the systemd driver, which writes the UID's `-` as `_`.
pub(crate) fn pod_uid(name: &str, parent: &str) -> Option<String> {
    if !(parent.starts_with("kubepods") || parent == "besteffort" || parent == "burstable") {
        return None;
    }
    let name = name.strip_suffix(".slice").unwrap_or(name);
    let uid = name
        .strip_prefix("pod")
        .or_else(|| name.rsplit_once("-pod").map(|(_, uid)| uid))?;
    let uid = uid.replace('_', "-");
    let ok = uid.len() == 36
        && uid
            .bytes()
            .all(|b| b == b'-' || b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    ok.then_some(uid)
}

/// Every process directly in `dir` and in every cgroup below it, but for cgroups named `skip`
/// (faultline's own, inside a workload).
pub(crate) fn procs_below(dir: &Path, skip: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(dir) = stack.pop() {
        pids.extend(
            fs::read_to_string(dir.join("cgroup.procs"))
                .unwrap_or_default()
                .lines()
                .filter_map(|l| l.trim().parse::<u32>().ok()),
        );
        if let Ok(entries) = fs::read_dir(&dir) {
            stack.extend(
                entries
                    .filter_map(Result::ok)
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .filter(|e| e.file_name() != skip)
                    .map(|e| e.path()),
            );
        }
    }
    pids
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
50 23 0:32 /docker /mnt/memory-of-docker rw - cgroup cgroup rw,memory
";

    #[test]
    fn hierarchies_are_named_by_their_controllers_and_found_from_proc_lines() {
        let h = Hierarchies::from_mountinfo(HYBRID);
        let names: Vec<&str> = h.0.iter().map(|h| h.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "cpu,cpuacct",
                "memory",
                "freezer",
                "name=systemd",
                "cgroup2"
            ]
        );
        assert_eq!(h.by_proc_field("cpuacct,cpu").unwrap().name, "cpu,cpuacct");
        assert_eq!(h.by_proc_field("").unwrap().name, "cgroup2");
        assert_eq!(
            h.by_proc_field("name=systemd").unwrap().name,
            "name=systemd"
        );
        assert!(h.by_proc_field("pids").is_none());
        let v2 = Hierarchies::from_mountinfo(
            "30 23 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate\n",
        );
        assert!(v2.0[0].is_v2());
    }

    #[test]
    fn runtimes_names_carry_the_container_id() {
        let id = "3f".repeat(32);
        for name in [
            format!("docker-{id}.scope"),
            format!("cri-containerd-{id}.scope"),
            format!("crio-{id}.scope"),
            format!("libpod-{id}.scope"),
            format!("libpod-{id}"),
            id.clone(),
        ] {
            assert_eq!(container_id(&name), Some(id.clone()), "{name}");
        }
        assert_eq!(container_id(&format!("crio-conmon-{id}.scope")), None);
        assert_eq!(container_id("docker-abc.scope"), None);
        assert_eq!(container_id("system.slice"), None);
    }

    #[test]
    fn kubepods_names_carry_the_pod_uid_in_both_driver_spellings() {
        let uid = "0b5e2c4a-9d1f-4e1e-8a55-3c1f2b7d9e00";
        let systemd = format!("kubepods-burstable-pod{}.slice", uid.replace('-', "_"));
        assert_eq!(
            pod_uid(&systemd, "kubepods-burstable.slice"),
            Some(uid.into())
        );
        let guaranteed = format!("kubepods-pod{}.slice", uid.replace('-', "_"));
        assert_eq!(pod_uid(&guaranteed, "kubepods.slice"), Some(uid.into()));
        assert_eq!(pod_uid(&format!("pod{uid}"), "burstable"), Some(uid.into()));
        assert_eq!(pod_uid(&format!("pod{uid}"), "kubepods"), Some(uid.into()));
        assert_eq!(pod_uid(&format!("pod{uid}"), "system.slice"), None);
        assert_eq!(pod_uid("podman.service", "kubepods"), None);
    }
}
