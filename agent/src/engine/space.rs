//! The state filesystem's reserve: the free space (and inodes) the agent keeps for what it must
//! always be able to write, journal entries and the records of reverts. This is the one place
//! that says how much of the state filesystem is free against the reserve
//! ([`state_space`]); the engine refuses applies at the reserve, and the audit log sheds its
//! lines there, before the journal could ever be short of room.
//!
//! Free means what statvfs reports as available to unprivileged users (`f_bavail`): the blocks
//! a filesystem keeps for root are the host's own room for recovery, not the agent's.

use std::{io, path::Path};

use crate::units::format_bytes;

/// `serve --state-reserve`: room for tens of thousands of journal entries (each a few KiB).
pub(crate) const DEFAULT_STATE_RESERVE: u64 = 32 << 20;
/// Free inodes kept besides the bytes: each journal entry is a file of its own.
const INODE_RESERVE: u64 = 256;

/// Free bytes and inodes of the state filesystem, and the reserve they are held against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StateSpace {
    pub(crate) available: u64,
    /// `None`: the filesystem does not count inodes (btrfs, some network filesystems).
    pub(crate) inodes_available: Option<u64>,
    pub(crate) reserve: u64,
}

impl StateSpace {
    /// At or below the reserve: only journal entries and reverts may still be written.
    pub(crate) fn low(&self) -> bool {
        self.available <= self.reserve
            || self
                .inodes_available
                .is_some_and(|inodes| inodes <= INODE_RESERVE)
    }

    /// What is short, for errors and log lines.
    pub(crate) fn describe(&self, dir: &Path) -> String {
        let inodes = match self.inodes_available {
            Some(inodes) if inodes <= INODE_RESERVE => {
                format!(" and {inodes} free inodes (reserve {INODE_RESERVE})")
            }
            _ => String::new(),
        };
        format!(
            "the state filesystem ({}) has {} free{inodes}, at or below its reserve of {} \
             (serve --state-reserve) kept for the journal and reverts",
            dir.display(),
            format_bytes(self.available),
            format_bytes(self.reserve)
        )
    }
}

/// The free space of the filesystem holding `dir` against `reserve` bytes.
pub(crate) fn state_space(dir: &Path, reserve: u64) -> io::Result<StateSpace> {
    let stat = nix::sys::statvfs::statvfs(dir).map_err(io::Error::from)?;
    let available = stat.blocks_available().saturating_mul(stat.fragment_size());
    let inodes_available = (stat.files() > 0).then(|| stat.files_available());
    Ok(StateSpace {
        available,
        inodes_available,
        reserve,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reserve_is_held_against_bytes_and_inodes() {
        let space = |available, inodes| StateSpace {
            available,
            inodes_available: inodes,
            reserve: 1000,
        };
        assert!(!space(1001, Some(10_000)).low());
        assert!(space(1000, Some(10_000)).low());
        assert!(space(5000, Some(INODE_RESERVE)).low());
        assert!(!space(5000, None).low());
        let text = space(10, None).describe(Path::new("/var/lib/faultline"));
        assert!(
            text.contains("/var/lib/faultline") && text.contains("--state-reserve"),
            "{text}"
        );
        let real = state_space(Path::new("/"), 0).expect("statvfs /");
        assert!(real.available > 0);
    }
}
