//! The state journal: one JSON file per unfinished fault under `<state dir>/journal/`, written
//! and fsynced before the kernel is touched and removed once the fault is reverted. After a
//! crash, what is left here is exactly what start-up must revert. It never touches the kernel.
//! An entry is rewritten only for what a restart needs (a lease renewal, a failed clean-up), so
//! the state in it is the state it had then (`pending` for a fault that became active).
//!
//! One file per fault, replaced atomically (`kernel::durable`: write, fsync, rename, fsync the
//! directory), keeps every update crash-safe without a log to compact. Writes are serialized, so
//! that an update decided on the fault's current state (a lease renewal) cannot land after the
//! removal of a fault that was reverted meanwhile.

use std::{
    fs,
    path::{Path, PathBuf},
    sync::{Mutex, MutexGuard},
};

use super::fault::Fault;
use crate::{errors::JournalError, kernel::durable};

pub(crate) struct Journal {
    dir: PathBuf,
    /// Held by every write and removal.
    writing: Mutex<()>,
}

/// A journal entry that could not be read back, moved aside so start-up goes on.
#[derive(Debug)]
pub(crate) struct Unreadable {
    pub(crate) path: PathBuf,
    pub(crate) error: String,
}

impl Journal {
    pub(crate) fn open(state_dir: &Path) -> Result<Self, JournalError> {
        let dir = state_dir.join("journal");
        fs::create_dir_all(&dir).map_err(|source| JournalError::CreateDir {
            path: dir.clone(),
            source,
        })?;
        restrict(state_dir);
        restrict(&dir);
        Ok(Self {
            dir,
            writing: Mutex::new(()),
        })
    }

    fn writing(&self) -> MutexGuard<'_, ()> {
        // The lock guards no data, only the order of writes: a poisoned one is as good.
        self.writing.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn entry(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    /// Durably records the fault's current state.
    pub(crate) fn record(&self, fault: &Fault) -> Result<(), JournalError> {
        let _writing = self.writing();
        self.write(fault)
    }

    /// Records what `current` returns, asked with writes held off: `None` (the fault is no
    /// longer active, so its revert removes or has removed the entry) records nothing.
    pub(crate) fn record_current(
        &self,
        current: impl FnOnce() -> Option<Fault>,
    ) -> Result<(), JournalError> {
        let _writing = self.writing();
        match current() {
            Some(fault) => self.write(&fault),
            None => Ok(()),
        }
    }

    fn write(&self, fault: &Fault) -> Result<(), JournalError> {
        let body = serde_json::to_vec_pretty(fault).map_err(|source| JournalError::Encode {
            id: fault.id.clone(),
            source,
        })?;
        let path = self.entry(&fault.id);
        durable::write(&self.dir, &path, &body)
            .map_err(|source| JournalError::Write { path, source })
    }

    /// Forgets a fault whose kernel objects are gone. Already forgotten is fine.
    pub(crate) fn remove(&self, id: &str) -> Result<(), JournalError> {
        let _writing = self.writing();
        let path = self.entry(id);
        durable::remove(&self.dir, &path)
            .map(|_| ())
            .map_err(|source| JournalError::Remove { path, source })
    }

    /// Every recorded fault, and the entries that could not be parsed (renamed to
    /// `*.unreadable` so they are kept for a human but not read again).
    pub(crate) fn load(&self) -> Result<(Vec<Fault>, Vec<Unreadable>), JournalError> {
        let read_err = |source| JournalError::Read {
            path: self.dir.clone(),
            source,
        };
        let mut faults = Vec::new();
        let mut unreadable = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(read_err)? {
            let path = entry.map_err(read_err)?.path();
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            let parsed = fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|bytes| {
                    serde_json::from_slice::<Fault>(&bytes).map_err(|e| e.to_string())
                });
            match parsed {
                Ok(fault) => faults.push(fault),
                Err(error) => {
                    let aside = path.with_extension("unreadable");
                    let _ = fs::rename(&path, &aside);
                    unreadable.push(Unreadable { path: aside, error });
                }
            }
        }
        faults.sort_by_key(|f| f.created_at);
        Ok((faults, unreadable))
    }
}

/// The journal says what faults exist on the host: root's business only.
fn restrict(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let _ = fs::set_permissions(path, fs::Permissions::from_mode(0o700));
}

#[cfg(test)]
mod tests {
    use std::{
        collections::BTreeMap,
        time::{Duration, SystemTime},
    };

    use super::*;
    use crate::{
        engine::fault::FaultState,
        faults::{BlockSpec, Direction, FaultSpec, PacketMatch},
    };

    fn fault(id: &str) -> Fault {
        let now = SystemTime::now();
        Fault {
            id: id.to_owned(),
            spec: FaultSpec::Block(BlockSpec {
                direction: Direction::Ingress,
                matcher: PacketMatch::default(),
                reject: true,
                percent: Some(30.0),
                device: None,
            }),
            labels: BTreeMap::from([("team".to_owned(), "sre".to_owned())]),
            state: FaultState::Pending,
            created_at: now,
            deadline: now + Duration::from_secs(30),
            duration: Duration::from_secs(30),
            reason: String::new(),
            plan: vec!["add table inet faultline".to_owned()],
            lease: None,
            lease_expires_at: None,
            effect: None,
            ineffective: false,
            objects: Vec::new(),
            changes: Vec::new(),
            residue: Vec::new(),
            status: Vec::new(),
        }
    }

    #[test]
    fn records_survive_reopening_and_removal_forgets() {
        let tmp = tempfile::tempdir().unwrap();
        let journal = Journal::open(tmp.path()).unwrap();
        let mut a = fault("aaaaaaaaaaaa");
        journal.record(&a).unwrap();
        a.state = FaultState::Active;
        journal.record(&a).unwrap();
        journal.record(&fault("bbbbbbbbbbbb")).unwrap();

        let (faults, unreadable) = Journal::open(tmp.path()).unwrap().load().unwrap();
        assert!(unreadable.is_empty());
        assert_eq!(faults.len(), 2);
        let back = faults.iter().find(|f| f.id == a.id).unwrap();
        assert_eq!(back.state, FaultState::Active);
        assert_eq!(back.spec, a.spec);
        assert_eq!(back.labels, a.labels);

        journal.remove(&a.id).unwrap();
        journal.remove(&a.id).unwrap();
        let (faults, _) = journal.load().unwrap();
        assert_eq!(faults.len(), 1);
        assert!(fs::read_dir(journal.dir).unwrap().all(|e| !e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .ends_with(".tmp")));
    }

    #[test]
    fn a_lease_is_journalled_and_entries_from_before_leases_still_read() {
        let tmp = tempfile::tempdir().unwrap();
        let journal = Journal::open(tmp.path()).unwrap();
        let mut leased = fault("eeeeeeeeeeee");
        leased.lease = Some(Duration::from_millis(2500));
        leased.lease_expires_at = Some(leased.created_at + Duration::from_secs(3));
        journal.record(&leased).unwrap();
        // Written by an agent that knew no leases.
        fs::write(
            journal.dir.join("ffffffffffff.json"),
            br#"{
  "id": "ffffffffffff",
  "spec": {"kind": "block", "direction": "ingress", "match": {"protocol": "tcp", "ports": [], "cidrs": []}, "reject": false},
  "labels": {},
  "state": "active",
  "created_at": "2025-01-01T00:00:00.000Z",
  "deadline": "2025-01-01T00:01:00.000Z",
  "duration": 60.0,
  "reason": "",
  "plan": []
}"#,
        )
        .unwrap();
        let (faults, unreadable) = journal.load().unwrap();
        assert!(unreadable.is_empty(), "{unreadable:?}");
        let old = faults.iter().find(|f| f.id == "ffffffffffff").unwrap();
        assert_eq!((old.lease, old.lease_expires_at), (None, None));
        let back = faults.iter().find(|f| f.id == leased.id).unwrap();
        assert_eq!(back.lease, leased.lease);
        let expires = back.lease_expires_at.unwrap();
        let skew = expires
            .duration_since(leased.lease_expires_at.unwrap())
            .unwrap_or_else(|e| e.duration());
        assert!(skew < Duration::from_millis(1), "{skew:?}");
    }

    #[test]
    fn record_current_writes_only_what_is_still_current() {
        let tmp = tempfile::tempdir().unwrap();
        let journal = Journal::open(tmp.path()).unwrap();
        journal.record_current(|| None).unwrap();
        assert!(journal.load().unwrap().0.is_empty());
        journal
            .record_current(|| Some(fault("aaaaaaaaaaaa")))
            .unwrap();
        assert_eq!(journal.load().unwrap().0.len(), 1);
    }

    #[test]
    fn a_corrupt_entry_is_set_aside_not_fatal() {
        let tmp = tempfile::tempdir().unwrap();
        let journal = Journal::open(tmp.path()).unwrap();
        journal.record(&fault("cccccccccccc")).unwrap();
        fs::write(journal.dir.join("dddddddddddd.json"), b"{ torn").unwrap();
        let (faults, unreadable) = journal.load().unwrap();
        assert_eq!(faults.len(), 1);
        assert_eq!(unreadable.len(), 1);
        assert!(unreadable[0].path.ends_with("dddddddddddd.unreadable"));
        assert_eq!(journal.load().unwrap().1.len(), 0);
    }
}
