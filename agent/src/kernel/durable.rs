//! Durable files: the one way faultline writes state that must survive a crash (the journal's
//! entries, the adapters' records of what they replaced). A write lands whole or not at all:
//! written to a temporary file, fsynced, renamed over the old one, and the directory fsynced,
//! so that after a power cut the file holds either the old or the new bytes, never a mix.
//! [`Records`] keeps an adapter's records this way: one JSON file per fault.

use std::{
    fs::{self, File, OpenOptions},
    io::{self, Write as _},
    path::{Path, PathBuf},
};

use serde::{de::DeserializeOwned, Serialize};
use thiserror::Error;

/// Replaces `path` (in directory `dir`) with `bytes`, durably.
pub(crate) fn write(dir: &Path, path: &Path, bytes: &[u8]) -> io::Result<()> {
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no file name"))?;
    let tmp = dir.join(format!(".{}.tmp", name.to_string_lossy()));
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    fs::rename(&tmp, path)?;
    sync_dir(dir)
}

/// Removes `path` durably; gone already is fine (`Ok(false)`).
pub(crate) fn remove(dir: &Path, path: &Path) -> io::Result<bool> {
    match fs::remove_file(path) {
        Ok(()) => sync_dir(dir).map(|()| true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// The names of the records in `dir` (`<name>.json`, temporaries left out), sorted: the ids of
/// the faults an adapter keeps a record for. None when the directory does not exist.
pub(crate) fn record_ids(dir: &Path) -> Vec<String> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut ids: Vec<String> = entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_suffix(".json"))
                .filter(|n| !n.starts_with('.'))
                .map(str::to_owned)
        })
        .collect();
    ids.sort();
    ids
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[derive(Debug, Error)]
pub(crate) enum RecordError {
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the record {path} is unreadable: {source}")]
    Decode {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

/// A directory of an adapter's records, `<fault id>.json` each, written durably before the
/// adapter changes what it must be able to put back or remove after a crash.
#[derive(Debug)]
pub(crate) struct Records {
    dir: PathBuf,
}

impl Records {
    pub(crate) fn new(dir: PathBuf) -> Self {
        Self { dir }
    }

    /// Where fault `id`'s record is kept.
    pub(crate) fn path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    /// Writes fault `id`'s record, durably.
    pub(crate) fn save<T: Serialize>(&self, id: &str, record: &T) -> Result<(), RecordError> {
        let io = |action, path: &Path| {
            let path = path.to_owned();
            move |source| RecordError::Io {
                action,
                path,
                source,
            }
        };
        fs::create_dir_all(&self.dir).map_err(io("create", &self.dir))?;
        let path = self.path(id);
        let text = serde_json::to_vec_pretty(record).expect("records serialise");
        write(&self.dir, &path, &text).map_err(io("write", &path))
    }

    /// Fault `id`'s record; `None` if it has none.
    pub(crate) fn load<T: DeserializeOwned>(&self, id: &str) -> Result<Option<T>, RecordError> {
        let path = self.path(id);
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|source| RecordError::Decode { path, source }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(RecordError::Io {
                action: "read",
                path,
                source,
            }),
        }
    }

    /// Removes fault `id`'s record, durably; none is fine.
    pub(crate) fn forget(&self, id: &str) -> Result<(), RecordError> {
        let path = self.path(id);
        remove(&self.dir, &path)
            .map(drop)
            .map_err(|source| RecordError::Io {
                action: "remove",
                path,
                source,
            })
    }

    /// The fault ids that have a record, sorted.
    pub(crate) fn ids(&self) -> Vec<String> {
        record_ids(&self.dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_replaces_the_file_whole_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.json");
        write(dir.path(), &path, b"one").unwrap();
        write(dir.path(), &path, b"two").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["a.json"]);
        assert_eq!(record_ids(dir.path()), ["a"]);
        assert!(remove(dir.path(), &path).unwrap());
        assert!(!remove(dir.path(), &path).unwrap());
    }

    #[test]
    fn records_round_trip_and_list_their_ids() {
        let dir = tempfile::tempdir().unwrap();
        let records = Records::new(dir.path().join("r"));
        assert!(records.ids().is_empty());
        records.save("b", &vec![1, 2]).unwrap();
        records.save("a", &vec![3]).unwrap();
        assert_eq!(records.ids(), ["a", "b"]);
        assert_eq!(records.load::<Vec<u32>>("b").unwrap(), Some(vec![1, 2]));
        assert_eq!(records.load::<Vec<u32>>("c").unwrap(), None);
        records.forget("b").unwrap();
        records.forget("b").unwrap();
        assert_eq!(records.ids(), ["a"]);
        fs::write(records.path("bad"), b"{").unwrap();
        assert!(matches!(
            records.load::<Vec<u32>>("bad"),
            Err(RecordError::Decode { .. })
        ));
    }
}
