//! What xtask needs to know about the machine it runs on: the workspace root, whether it runs
//! as root, the `PATH` every child process gets (`~/.cargo/bin` first) and where a program is
//! on it. It only reads; running programs is `exec`'s job.

use std::{
    env,
    ffi::OsString,
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};

/// The workspace root: the parent of this crate's directory.
pub fn workspace_root() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir.parent().unwrap_or(manifest_dir).to_path_buf()
}

/// Whether this process runs with effective uid 0, read from `/proc/self/status` (the `Uid:`
/// line holds the real, effective, saved and filesystem uids, in that order).
pub fn is_root() -> Result<bool> {
    let status = fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let effective = status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .and_then(|uids| uids.split_whitespace().nth(1))
        .context("/proc/self/status has no Uid: line with an effective uid")?;
    Ok(effective == "0")
}

/// Where `cargo install` puts binaries: `$CARGO_HOME/bin`, else `~/.cargo/bin`.
pub fn cargo_bin_dir() -> Option<PathBuf> {
    env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|home| Path::new(&home).join(".cargo")))
        .map(|cargo_home| cargo_home.join("bin"))
}

/// The `PATH` for child processes: [`cargo_bin_dir`] first (so `cargo` is the rustup proxy that
/// understands `+nightly`, and a freshly installed `bpf-linker` is found), then ours.
pub fn child_path() -> OsString {
    let inherited = env::var_os("PATH").unwrap_or_default();
    let dirs = cargo_bin_dir()
        .into_iter()
        .chain(env::split_paths(&inherited));
    env::join_paths(dirs).unwrap_or(inherited)
}

/// Where `program` is on [`child_path`], if anywhere.
pub fn find_program(program: &str) -> Option<PathBuf> {
    env::split_paths(&child_path())
        .map(|dir| dir.join(program))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

static INTERRUPTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, std::sync::atomic::Ordering::SeqCst);
}

/// Catches Ctrl-C (and SIGTERM, SIGHUP) once, for a task that must undo what it made: the first
/// signal only sets [`interrupted`], so the task stops in order; a second one (SA_RESETHAND
/// restored the default) kills xtask at once.
pub fn catch_signals() -> Result<()> {
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: a zeroed sigaction is valid; the handler only stores to an atomic, which is
        // async-signal-safe.
        let rc = unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as usize;
            action.sa_flags = libc::SA_RESTART | libc::SA_RESETHAND;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(signal, &action, std::ptr::null_mut())
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error()).context("installing a signal handler");
        }
    }
    Ok(())
}

/// Whether a signal caught by [`catch_signals`] has come.
pub fn interrupted() -> bool {
    INTERRUPTED.load(std::sync::atomic::Ordering::SeqCst)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workspace_root_holds_the_workspace_manifest() {
        let manifest = fs::read_to_string(workspace_root().join("Cargo.toml")).unwrap();
        assert!(manifest.contains("[workspace]"));
    }

    #[test]
    fn cargo_bin_dir_comes_first_on_the_child_path() {
        let first = env::split_paths(&child_path()).next();
        assert_eq!(first, cargo_bin_dir());
    }
}
