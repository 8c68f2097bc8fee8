//! The audit log: one JSON line for every call that changes faults (Apply, Revert, RevertAll),
//! whatever its outcome, for every call the policy refused, for every TLS client refused at
//! the handshake for its certificate, for every revert the agent decides on by itself
//! (`rpc` `automatic-revert`, `who` the agent, with the `reason`: deadline, lease expired,
//! shutdown, recovered, target gone), and for what a fault reports while active (`rpc`
//! `fault-report`: the workload it resolved, the processes a kill signalled). Each line says when, who (identity, how it was
//! established, role), which call, which fault (id, kind, summary) and the result: `ok`,
//! `denied` or `failed`, with the gRPC code and the message the caller got. Refusals beyond a
//! source's rate are counted into one `refusal-summary` line per source and interval instead
//! (see `api::refusals`).
//!
//! The file is opened with O_APPEND, so lines are only ever added, and each line is fsynced
//! before the call returns: a line the caller's answer depended on is on disk. A line that
//! cannot be written is reported in the agent's log; the call it describes is not undone.
//!
//! The log is bounded: the agent rotates it itself at `--audit-max-size` (`audit.log.1` is the
//! newest of `--audit-keep` rotated files), under the same lock as each write, so the cap holds
//! between any two lines, however fast they come; a logrotate run once a day could not bound a
//! flood. SIGHUP reopens the path, for tools that move the file away. On the state filesystem,
//! at its reserve (`engine::space`) lines are shed, each with an error in the log and a count
//! in Prometheus: the room left is the journal's.

use std::{
    fs::{self, File, OpenOptions},
    io::Write as _,
    net::SocketAddr,
    os::unix::fs::{MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::SystemTime,
};

use serde::Serialize;
use thiserror::Error;
use tonic::Status;
use tracing::{error, info};

use super::authz::{Caller, Role, Rpc};
use crate::{
    engine::{space::state_space, Fault, FaultState, RevertLog, RevertReason},
    monitor::counters::AgentCounters,
};

#[derive(Debug, Error)]
#[error("cannot open the audit log {path}: {source}")]
pub(crate) struct AuditError {
    path: PathBuf,
    source: std::io::Error,
}

pub(crate) struct AuditLog {
    path: PathBuf,
    file: Mutex<Current>,
    /// [`AuditOptions::state`], when the log is on the state filesystem.
    state: Option<(PathBuf, u64)>,
    options: AuditOptions,
}

/// Who made the call.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct Who {
    /// As refusals name it (`alice`, `uid 1000`); null when the caller has no identity (a
    /// certificate refused at the handshake).
    pub(crate) identity: Option<String>,
    /// `unix-peer-credentials`, `tls-client-certificate`, or `agent` for what the agent did by
    /// itself.
    pub(crate) auth: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) uid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) pid: Option<i32>,
    /// The client's address on the TLS listener.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) peer: Option<String>,
    /// Null when the caller has none (not in the policy).
    pub(crate) role: Option<Role>,
}

impl Who {
    pub(crate) fn new(caller: &Caller, role: Option<Role>) -> Self {
        let (uid, pid, peer) = match caller {
            Caller::Unix { uid, pid } => (Some(*uid), *pid, None),
            Caller::Certificate { peer, .. } => (None, None, Some(peer.to_string())),
        };
        Self {
            identity: Some(caller.to_string()),
            auth: caller.auth(),
            uid,
            pid,
            peer,
            role,
        }
    }
}

/// The fault a call was about, as far as it is known.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub(crate) struct Target {
    /// Null for a dry run, and for an Apply refused before the fault got an id.
    pub(crate) id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) kind: Option<&'static str>,
    /// The fault's one-line description, its target included (`block in tcp dport 8080 (drop)`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) summary: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) duration_secs: Option<f64>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub(crate) dry_run: bool,
}

impl Target {
    pub(crate) fn id(id: &str) -> Self {
        Self {
            id: Some(id.to_owned()),
            ..Self::default()
        }
    }

    pub(crate) fn fault(fault: &Fault) -> Self {
        Self {
            id: Some(fault.id.clone()),
            kind: Some(fault.spec.kind()),
            summary: Some(fault.spec.family().summary()),
            duration_secs: None,
            dry_run: false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Outcome {
    Ok,
    /// Refused by the policy, or at the TLS handshake.
    Denied,
    /// Allowed, but it did not succeed (an invalid request, a kernel failure).
    Failed,
}

/// One line of the log.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct Record {
    /// RFC 3339, UTC, milliseconds.
    pub(crate) time: String,
    pub(crate) who: Who,
    /// `Faults/Apply`, ...; `tls-handshake` for a client refused before any call.
    pub(crate) rpc: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) fault: Option<Target>,
    /// Why the agent reverted a fault by itself.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) reason: Option<&'static str>,
    /// What a fault reported while active (`rpc` `fault-report`: the workload it resolved, the
    /// processes it signalled), or what happened beyond the reason (`target gone: ...`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) detail: Option<String>,
    /// RevertAll: every fault it reverted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) faults: Option<Vec<Target>>,
    /// `refusal-summary`: the refusals of one source beyond its rate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) refusals: Option<RefusalSummary>,
    pub(crate) result: Outcome,
    /// The gRPC status code the caller got, unless `ok`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) code: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) error: Option<String>,
}

/// The refusals of one source in one interval beyond its rate, which had no line of their own
/// (`rpc` `refusal-summary`, `who.peer` the source: an address, an IPv6 /64, or `who.uid`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct RefusalSummary {
    /// Refusals without a line of their own.
    pub(crate) refused: u64,
    /// Those refusals by reason (`Faults/List: ...` for a call, the TLS error for a handshake).
    pub(crate) reasons: std::collections::BTreeMap<String, u64>,
    /// Connections closed unanswered while the source was under a penalty.
    pub(crate) dropped_while_penalized: u64,
    pub(crate) interval_secs: f64,
    /// The penalty left when the line was written.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) penalty_secs: Option<f64>,
}

impl Record {
    pub(crate) fn new(who: Who, rpc: Rpc) -> Self {
        Self::named(who, rpc.name())
    }

    pub(crate) fn named(who: Who, rpc: &'static str) -> Self {
        Self {
            time: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            who,
            rpc,
            fault: None,
            reason: None,
            detail: None,
            faults: None,
            refusals: None,
            result: Outcome::Ok,
            code: None,
            error: None,
        }
    }

    pub(crate) fn with_fault(mut self, target: Target) -> Self {
        self.fault = Some(target);
        self
    }

    pub(crate) fn with_faults(mut self, targets: Vec<Target>) -> Self {
        self.faults = Some(targets);
        self
    }

    /// Records what the caller was answered.
    pub(crate) fn with_result<T>(mut self, result: &Result<T, Status>) -> Self {
        if let Err(status) = result {
            self.result = if status.code() == tonic::Code::PermissionDenied {
                Outcome::Denied
            } else {
                Outcome::Failed
            };
            self.code = Some(format!("{:?}", status.code()));
            self.error = Some(status.message().to_owned());
        }
        self
    }
}

/// How the audit log is bounded: `serve --audit-max-size`, `--audit-keep`, and the state
/// filesystem's reserve.
#[derive(Debug, Clone)]
pub(crate) struct AuditOptions {
    /// The size at which the log is rotated.
    pub(crate) max_size: u64,
    /// Rotated files kept (`audit.log.1` the newest, up to `audit.log.N`).
    pub(crate) keep: u32,
    /// The state directory and its reserve in bytes: lines are shed while the filesystem
    /// holding both the log and the directory is at the reserve.
    pub(crate) state: Option<(PathBuf, u64)>,
    pub(crate) counters: Arc<AgentCounters>,
}

pub(crate) const DEFAULT_MAX_SIZE: u64 = 16 << 20;
pub(crate) const DEFAULT_KEEP: u32 = 4;

impl Default for AuditOptions {
    fn default() -> Self {
        Self {
            max_size: DEFAULT_MAX_SIZE,
            keep: DEFAULT_KEEP,
            state: None,
            counters: Arc::default(),
        }
    }
}

/// The file lines go to, and its size.
struct Current {
    file: File,
    size: u64,
}

impl AuditLog {
    /// Opens (creating it, mode 0600, and its directory, mode 0700) the log for appending.
    pub(crate) fn open(path: &Path, options: AuditOptions) -> Result<Self, AuditError> {
        let fail = |source| AuditError {
            path: path.to_owned(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if !dir.exists() {
                fs::create_dir_all(dir).map_err(fail)?;
                fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(fail)?;
            }
        }
        let current = open_append(path).map_err(fail)?;
        // Shedding protects the journal's room only where the log takes from it.
        let shared = |dir: &Path| -> bool {
            let device = |p: &Path| fs::metadata(p).map(|m| m.dev()).ok();
            let log_dir = path.parent().filter(|d| !d.as_os_str().is_empty());
            device(log_dir.unwrap_or(Path::new("."))).is_some_and(|d| Some(d) == device(dir))
        };
        let state = options.state.clone().filter(|(dir, _)| shared(dir));
        Ok(Self {
            path: path.to_owned(),
            file: Mutex::new(current),
            state,
            options,
        })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    fn current(&self) -> std::sync::MutexGuard<'_, Current> {
        self.file.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Opens the log's path anew (SIGHUP): after another tool moved or removed the file, lines
    /// go to a new one at the configured path.
    pub(crate) fn reopen(&self) -> Result<(), AuditError> {
        let reopened = open_append(&self.path).map_err(|source| AuditError {
            path: self.path.clone(),
            source,
        })?;
        *self.current() = reopened;
        Ok(())
    }

    /// Appends the record as one line and fsyncs it. Blocks for the fsync; called from the
    /// runtime it moves off the async workers first. At the state filesystem's reserve the
    /// line is shed instead, with an error in the log.
    pub(crate) fn write(&self, record: &Record) {
        let append = || -> std::io::Result<Written> {
            if let Some((dir, reserve)) = &self.state {
                match state_space(dir, *reserve) {
                    Ok(space) if space.low() => return Ok(Written::Shed(space.describe(dir))),
                    _ => {}
                }
            }
            let mut line = serde_json::to_vec(record).map_err(std::io::Error::other)?;
            line.push(b'\n');
            // One lock for rotation, write and fsync: lines never interleave, and none is
            // acknowledged before it is on disk.
            let mut current = self.current();
            let rotated =
                current.size > 0 && current.size + line.len() as u64 > self.options.max_size;
            if rotated {
                self.rotate(&mut current)?;
            }
            current.file.write_all(&line)?;
            current.size += line.len() as u64;
            current.file.sync_data()?;
            Ok(if rotated {
                Written::Rotated
            } else {
                Written::Line
            })
        };
        let multi_thread = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        let written = if multi_thread {
            tokio::task::block_in_place(append)
        } else {
            append()
        };
        let id = record.fault.as_ref().and_then(|f| f.id.as_deref());
        match written {
            Ok(Written::Line) => {}
            Ok(Written::Rotated) => {
                self.options.counters.audit_rotated();
                info!(path = %self.path.display(), max_size = self.options.max_size, keep = self.options.keep, "audit log rotated");
            }
            Ok(Written::Shed(why)) => {
                self.options.counters.audit_shed();
                error!(path = %self.path.display(), rpc = record.rpc, id, "audit line shed: {why}");
            }
            Err(e) => {
                self.options.counters.audit_failed();
                error!(path = %self.path.display(), error = %e, rpc = record.rpc, id, "cannot write to the audit log");
            }
        }
    }

    /// `audit.log` becomes `audit.log.1`, each `.N` becomes `.N+1`, the oldest beyond `keep`
    /// is removed, and a new empty log is opened; the directory is fsynced so the renames
    /// survive a crash.
    fn rotate(&self, current: &mut Current) -> std::io::Result<()> {
        let numbered = |n: u32| {
            let mut name = self.path.clone().into_os_string();
            name.push(format!(".{n}"));
            PathBuf::from(name)
        };
        let keep = self.options.keep.max(1);
        match fs::remove_file(numbered(keep)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        for n in (1..keep).rev() {
            match fs::rename(numbered(n), numbered(n + 1)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        fs::rename(&self.path, numbered(1))?;
        *current = open_append(&self.path)?;
        Ok(())
    }
}

enum Written {
    Line,
    Rotated,
    /// Not written: the state filesystem is at its reserve (why, in words).
    Shed(String),
}

/// Opens `path` for appending, creating it with mode 0600; a new file's directory entry is
/// fsynced, so that it survives a crash as well as the lines in it.
fn open_append(path: &Path) -> std::io::Result<Current> {
    let existed = path.exists();
    let file = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)?;
    if !existed {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            File::open(dir)?.sync_all()?;
        }
    }
    let size = file.metadata()?.len();
    Ok(Current { file, size })
}

impl AuditLog {
    /// A TLS client refused for its certificate before it could make any call.
    pub(crate) fn handshake_refused(&self, peer: SocketAddr, reason: String) {
        let who = Who {
            identity: None,
            auth: "tls-client-certificate",
            uid: None,
            pid: None,
            peer: Some(peer.to_string()),
            role: None,
        };
        let mut record = Record::named(who, "tls-handshake");
        record.result = Outcome::Denied;
        record.error = Some(reason);
        self.write(&record);
    }
}

impl Who {
    /// The agent itself, for what it does without a call.
    fn agent() -> Self {
        Who {
            identity: Some("faultline agent".to_owned()),
            auth: "agent",
            uid: None,
            pid: Some(std::process::id() as i32),
            peer: None,
            role: None,
        }
    }
}

impl RevertLog for AuditLog {
    fn reverted(&self, fault: &Fault, reason: RevertReason) {
        let mut record =
            Record::named(Who::agent(), "automatic-revert").with_fault(Target::fault(fault));
        record.reason = Some(reason.as_str());
        if fault.state == FaultState::Failed {
            record.result = Outcome::Failed;
            record.error = Some(fault.reason.clone());
        } else if fault.reason != reason.as_str() {
            record.detail = Some(fault.reason.clone());
        }
        self.write(&record);
    }

    fn reported(&self, fault: &Fault, line: &str) {
        let mut record =
            Record::named(Who::agent(), "fault-report").with_fault(Target::fault(fault));
        record.detail = Some(line.to_owned());
        self.write(&record);
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::*;

    fn lines(path: &Path) -> Vec<Value> {
        fs::read_to_string(path)
            .expect("read")
            .lines()
            .map(|l| serde_json::from_str(l).expect("each line is JSON"))
            .collect()
    }

    #[test]
    fn records_are_one_json_line_each_with_who_what_and_the_result() {
        let alice = Caller::Certificate {
            name: "alice".to_owned(),
            peer: "10.0.0.2:40000".parse().expect("address"),
        };
        let denied: Result<(), Status> = Err(Status::permission_denied(
            "alice (operator): fault kind cpu is not allowed (allowed: block, loss)",
        ));
        let record = Record::new(Who::new(&alice, Some(Role::Operator)), Rpc::Apply)
            .with_fault(Target {
                kind: Some("cpu"),
                summary: Some("cpu 50%".to_owned()),
                duration_secs: Some(30.0),
                ..Target::default()
            })
            .with_result(&denied);
        let line = serde_json::to_string(&record).expect("encodes");
        assert!(!line.contains('\n'));
        let value: Value = serde_json::from_str(&line).expect("decodes");
        assert!(value["time"].as_str().is_some_and(|t| t.ends_with('Z')));
        assert_eq!(
            value["who"],
            json!({"identity": "alice", "auth": "tls-client-certificate",
                   "peer": "10.0.0.2:40000", "role": "operator"})
        );
        assert_eq!(value["rpc"], "Faults/Apply");
        assert_eq!(
            value["fault"],
            json!({"id": null, "kind": "cpu", "summary": "cpu 50%", "duration_secs": 30.0})
        );
        assert_eq!(value["result"], "denied");
        assert_eq!(value["code"], "PermissionDenied");
        assert_eq!(
            value["error"],
            "alice (operator): fault kind cpu is not allowed (allowed: block, loss)"
        );

        let root = Caller::Unix {
            uid: 0,
            pid: Some(7),
        };
        let ok: Result<(), Status> = Ok(());
        let value = serde_json::to_value(
            Record::new(Who::new(&root, Some(Role::Admin)), Rpc::Revert)
                .with_fault(Target::id("0123abcd"))
                .with_result(&ok),
        )
        .expect("encodes");
        assert_eq!(
            value["who"],
            json!({"identity": "uid 0", "auth": "unix-peer-credentials", "uid": 0, "pid": 7,
                   "role": "admin"})
        );
        assert_eq!(value["result"], "ok");
        assert!(value.get("error").is_none() && value.get("code").is_none());
    }

    #[test]
    fn the_log_only_grows_and_is_private() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state").join("audit.log");
        let uid = Caller::Unix {
            uid: 1000,
            pid: None,
        };
        {
            let log = AuditLog::open(&path, AuditOptions::default()).expect("opens");
            log.write(&Record::new(Who::new(&uid, None), Rpc::List));
        }
        let log = AuditLog::open(&path, AuditOptions::default()).expect("opens again");
        log.handshake_refused(
            "10.0.0.9:5555".parse().expect("address"),
            "refused at the TLS handshake: invalid peer certificate: UnknownIssuer".to_owned(),
        );
        let written = lines(&path);
        assert_eq!(written.len(), 2, "{written:?}");
        assert_eq!(written[0]["rpc"], "Faults/List");
        assert_eq!(written[0]["who"]["role"], Value::Null);
        assert_eq!(written[1]["rpc"], "tls-handshake");
        assert_eq!(written[1]["who"]["identity"], Value::Null);
        assert_eq!(written[1]["who"]["peer"], "10.0.0.9:5555");
        assert_eq!(written[1]["result"], "denied");
        let mode = fs::metadata(&path).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn the_log_rotates_at_its_cap_keeps_n_files_and_reopens() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.log");
        let counters = Arc::new(AgentCounters::default());
        let options = AuditOptions {
            max_size: 1000,
            keep: 2,
            state: None,
            counters: Arc::clone(&counters),
        };
        let log = AuditLog::open(&path, options).expect("opens");
        let root = Caller::Unix { uid: 0, pid: None };
        for _ in 0..40 {
            log.write(&Record::new(
                Who::new(&root, Some(Role::Admin)),
                Rpc::RevertAll,
            ));
        }
        let size = |p: &Path| fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        let rotated = |n: u32| dir.path().join(format!("audit.log.{n}"));
        assert!(size(&path) <= 1000 && size(&rotated(1)) <= 1000);
        assert!(size(&rotated(1)) > 800 && size(&rotated(2)) > 800);
        assert!(!rotated(3).exists(), "keeps 2 rotated files");
        assert!(lines(&rotated(2)).len() + lines(&rotated(1)).len() + lines(&path).len() < 40);
        let mut e = crate::monitor::exposition::Exposition::new();
        counters.render(&mut e);
        assert!(!e.finish().contains("faultline_audit_rotations_total 0\n"));

        // Moved away by another tool: SIGHUP's reopen starts a new file at the path.
        fs::rename(&path, dir.path().join("moved")).expect("rename");
        log.reopen().expect("reopens");
        log.write(&Record::new(Who::new(&root, Some(Role::Admin)), Rpc::List));
        assert_eq!(lines(&path).len(), 1);
        let mode = fs::metadata(&path).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn lines_are_shed_at_the_state_reserve() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.log");
        let counters = Arc::new(AgentCounters::default());
        let options = AuditOptions {
            state: Some((dir.path().to_owned(), u64::MAX)),
            counters: Arc::clone(&counters),
            ..AuditOptions::default()
        };
        let log = AuditLog::open(&path, options).expect("opens");
        let root = Caller::Unix { uid: 0, pid: None };
        log.write(&Record::new(
            Who::new(&root, Some(Role::Admin)),
            Rpc::RevertAll,
        ));
        assert_eq!(fs::read_to_string(&path).expect("read"), "");
        let mut e = crate::monitor::exposition::Exposition::new();
        counters.render(&mut e);
        assert!(e.finish().contains("faultline_audit_lines_shed_total 1\n"));
    }
}
