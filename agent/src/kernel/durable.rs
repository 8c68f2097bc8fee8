//! Durable files: the one way faultline writes state that must survive a crash (the journal's
//! entries, the adapters' records of what they replaced). A write lands whole or not at all:
//! written to a temporary file, fsynced, renamed over the old one, and the directory fsynced,
//! so that after a power cut the file holds either the old or the new bytes, never a mix.

use std::{
    fs::{self, File, OpenOptions},
    io::{self, Write as _},
    path::Path,
};

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
}
