//! The agent's own cgroup when the service manager delegates it (systemd's `Delegate=yes` on
//! cgroup v2, `serve --cgroup-delegated`): the one subtree systemd leaves to the service, where
//! stress cgroups belong. Outside it systemd may remove or fight cgroups it did not create.
//!
//! cgroup v2 lets a cgroup hand controllers to its children only while it holds no process
//! itself, so the agent first moves into a leaf of its own, `<its cgroup>/agent`; stress
//! cgroups then go in `<its cgroup>/<cgroup parent>/<id>` beside it. systemd starts every run
//! of the service in the cgroup itself, and on stop kills what is left in the whole subtree
//! and removes it.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use thiserror::Error;

/// The leaf the agent moves into.
pub(crate) const AGENT_LEAF: &str = "agent";

#[derive(Debug, Error)]
pub(crate) enum DelegateError {
    #[error(
        "--cgroup-delegated needs cgroup v2 at {0} (systemd's Delegate= hands over a subtree \
         of the unified hierarchy); without it stress cgroups go at the hierarchy's root"
    )]
    NotUnified(PathBuf),
    #[error("/proc/self/cgroup has no cgroup v2 entry (0::PATH): {0:?}")]
    NoEntry(String),
    #[error(
        "cannot {action} {path}: {source} (is the cgroup delegated? the unit needs Delegate=yes)"
    )]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Moves this process into `<its cgroup>/agent` under the cgroup v2 hierarchy at `root` and
/// returns `<its cgroup>`, the directory stress cgroups go in.
pub(crate) fn take(root: &Path) -> Result<PathBuf, DelegateError> {
    if !super::cgroup::is_cgroup2(root) {
        return Err(DelegateError::NotUnified(root.to_owned()));
    }
    let text = fs::read_to_string("/proc/self/cgroup").map_err(|source| DelegateError::Io {
        action: "read",
        path: "/proc/self/cgroup".into(),
        source,
    })?;
    let own = own_v2(&text).ok_or_else(|| DelegateError::NoEntry(text.clone()))?;
    let mut home = root.join(own.trim_start_matches('/'));
    // A second call in the same process (or an agent started inside the leaf) is already there.
    if home.file_name().is_some_and(|n| n == AGENT_LEAF) {
        home.pop();
    }
    let leaf = home.join(AGENT_LEAF);
    match fs::create_dir(&leaf) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(source) => {
            return Err(DelegateError::Io {
                action: "create",
                path: leaf,
                source,
            })
        }
    }
    let procs = leaf.join("cgroup.procs");
    fs::write(&procs, std::process::id().to_string()).map_err(|source| DelegateError::Io {
        action: "move the agent into",
        path: procs,
        source,
    })?;
    Ok(home)
}

/// The path of the v2 entry (`0::/system.slice/faultline.service`) of a /proc/PID/cgroup text.
fn own_v2(text: &str) -> Option<&str> {
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::trim)
        .filter(|p| p.starts_with('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_v2_entry_is_found_among_v1_ones() {
        let text = "12:cpu,cpuacct:/x\n0::/system.slice/faultline.service\n";
        assert_eq!(own_v2(text), Some("/system.slice/faultline.service"));
        assert_eq!(own_v2("4:memory:/x\n"), None);
    }

    #[test]
    fn a_hierarchy_that_is_not_v2_is_refused_before_anything_moves() {
        let dir = std::env::temp_dir();
        let error = take(&dir).unwrap_err();
        assert!(matches!(error, DelegateError::NotUnified(_)), "{error}");
    }
}
