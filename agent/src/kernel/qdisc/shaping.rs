//! The shaping adapter: it owns what shaping faults put on the host — the IFB device of each
//! fault (named `fl-<fault id>`), whose root is the fault's netem or tbf — and finds them again
//! at start-up to sweep what no fault accounts for.
//!
//! An interface's own root qdisc is never replaced: the steering classifier redirects only the
//! targeted packets, from the interface's clsact hook, to the fault's IFB (`kernel::bpf`), so
//! every other packet leaves by the path it would take with no fault, whatever qdisc another
//! tool installed there, and a multi-queue device keeps its queues.
//!
//! Agents before this design replaced the egress root with an htb tree of faultline's (handle
//! `fa00:`), after recording (fsynced, under the state directory: `kernel::durable`) what the
//! root held. Those records are still read: a revert or a start-up sweep puts that root back
//! exactly, in one netlink request, so a fault of an older agent is undone after an upgrade.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::{egress_root, handle, is_ours, Leaf, Prior, LEAF_MAJOR};
use crate::kernel::{
    durable::{RecordError, Records},
    rtnl::{self, QdiscStats, Rtnl, RtnlError},
    Adapter, Swept,
};

/// Interfaces faultline creates are named `fl-<fault id>`.
const IFB_PREFIX: &str = "fl-";

#[derive(Debug, Error)]
pub(crate) enum ShapingError {
    #[error(transparent)]
    Rtnl(#[from] RtnlError),
    #[error(transparent)]
    Record(#[from] RecordError),
}

/// What a shaping fault of an older agent recorded before it replaced a root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Record {
    pub(crate) device: String,
    pub(crate) prior: Prior,
}

/// The IFB device of fault `id`.
pub(crate) fn ifb_name(id: &str) -> String {
    format!("{IFB_PREFIX}{id}")
}

/// faultline's IFB devices, and the records of the roots older agents replaced.
#[derive(Debug)]
pub(crate) struct Shaping {
    /// `<state dir>/qdisc/`, one `<fault id>.json` per root an older agent replaced.
    records: Records,
}

impl Shaping {
    pub(crate) fn new(state_dir: &Path) -> Self {
        Self {
            records: Records::new(state_dir.join("qdisc")),
        }
    }

    /// Where fault `id`'s record of a root it replaced is kept (faults of older agents).
    pub(crate) fn record_path(&self, id: &str) -> PathBuf {
        self.records.path(id)
    }

    /// Creates fault `id`'s IFB device with `leaf` as its root; returns the device's index.
    pub(crate) fn install(&self, id: &str, leaf: &Leaf) -> Result<u32, ShapingError> {
        let ifb = ifb_name(id);
        let index = rtnl::create_ifb(&ifb)?;
        rtnl::replace_root(&ifb, index, leaf.kind, handle(LEAF_MAJOR, 0), &leaf.options)?;
        Ok(index)
    }

    /// The counters of fault `id`'s leaf qdisc (its netem or tbf, at the root of its IFB);
    /// `None` when it is not there (any more).
    pub(crate) fn leaf_stats(&self, id: &str) -> Result<Option<QdiscStats>, ShapingError> {
        let Ok(ifindex) = nix::net::if_::if_nametoindex(ifb_name(id).as_str()) else {
            return Ok(None);
        };
        Ok(Rtnl::open()?
            .qdisc_stats(ifindex)?
            .into_iter()
            .find(|(h, _, _)| *h == handle(LEAF_MAJOR, 0))
            .map(|(_, _, stats)| stats))
    }

    /// Fault `id`'s objects, one line each: its IFB device and the qdiscs on it, and the record
    /// of a root it replaced (a fault of an older agent).
    pub(crate) fn objects(&self, id: &str) -> Result<Vec<String>, ShapingError> {
        let mut lines = Vec::new();
        let record = self.record_path(id);
        if record.exists() {
            lines.push(format!("record {}", record.display()));
        }
        let device = ifb_name(id);
        if let Ok(ifindex) = nix::net::if_::if_nametoindex(device.as_str()) {
            lines.push(format!("IFB device {device}"));
            let rtnl = Rtnl::open()?;
            for q in rtnl.qdiscs(ifindex)? {
                if is_ours(q.handle) {
                    lines.push(format!("qdisc {} on {device}", q.describe()));
                }
            }
        }
        Ok(lines)
    }

    /// Deletes fault `id`'s IFB device; gone already is fine.
    pub(crate) fn remove(&self, id: &str) -> Result<(), ShapingError> {
        Ok(Rtnl::open()?.delete_link(&ifb_name(id))?)
    }

    /// Puts back the root qdisc recorded for fault `id` (a fault of an older agent), if
    /// faultline's root is still there, and forgets the record. Idempotent: no record means the
    /// root was never replaced, as with every fault of this agent.
    pub(crate) fn restore_root(&self, id: &str) -> Result<(), ShapingError> {
        let Some(record) = self.load(id)? else {
            return Ok(());
        };
        let device = &record.device;
        if let Ok(ifindex) = nix::net::if_::if_nametoindex(device.as_str()) {
            let rtnl = Rtnl::open()?;
            match egress_root(rtnl.qdiscs(ifindex)?).filter(|root| is_ours(root.handle)) {
                Some(ours) => match &record.prior {
                    Prior::KernelDefault { .. } => {
                        rtnl.delete_root(device, ifindex, ours.handle)?
                    }
                    Prior::Installed(q) => {
                        rtnl::replace_root(device, ifindex, &q.kind, q.handle, &q.options)?
                    }
                },
                None => tracing::info!(
                    id,
                    device = %device,
                    "faultline's root qdisc is not on the interface (never installed, or \
                     replaced by someone since); leaving the interface as it is"
                ),
            }
        }
        self.forget(id)
    }

    #[cfg(test)]
    fn save(&self, id: &str, record: &Record) -> Result<(), ShapingError> {
        Ok(self.records.save(id, record)?)
    }

    fn load(&self, id: &str) -> Result<Option<Record>, ShapingError> {
        Ok(self.records.load(id)?)
    }

    fn forget(&self, id: &str) -> Result<(), ShapingError> {
        Ok(self.records.forget(id)?)
    }

    /// Puts back every root recorded by a fault not in `keep`, then removes faultline roots and
    /// IFB devices that no kept fault accounts for.
    fn sweep_all(&self, keep: &[&str], swept: &mut Swept) -> Result<(), ShapingError> {
        let mut kept_devices = Vec::new();
        for id in self.records.ids() {
            if keep.contains(&id.as_str()) {
                kept_devices.extend(self.load(&id)?.map(|r| r.device));
                continue;
            }
            let device = self.load(&id)?.map(|r| r.device).unwrap_or_default();
            match self.restore_root(&id) {
                Ok(()) => swept.removed.push(format!(
                    "root qdisc of {device} (restored as recorded by {id})"
                )),
                Err(e) => swept.failed.push(e.into()),
            }
        }
        let rtnl = Rtnl::open()?;
        for (device, ifindex, root) in rtnl.roots()? {
            if !is_ours(root.handle) || kept_devices.contains(&device) {
                continue;
            }
            match rtnl.delete_root(&device, ifindex, root.handle) {
                Ok(()) => swept.removed.push(format!(
                    "faultline root qdisc of {device} with no record (the kernel's default is back)"
                )),
                Err(e) => swept.failed.push(ShapingError::from(e).into()),
            }
        }
        for ifb in rtnl.ifbs()? {
            let Some(id) = ifb.strip_prefix(IFB_PREFIX) else {
                continue;
            };
            if keep.contains(&id) {
                continue;
            }
            match rtnl.delete_link(&ifb) {
                Ok(()) => swept.removed.push(format!("IFB device {ifb} of {id}")),
                Err(e) => swept.failed.push(ShapingError::from(e).into()),
            }
        }
        Ok(())
    }
}

impl Adapter for Shaping {
    fn sweep(&self, keep: &[&str]) -> Swept {
        let mut swept = Swept::default();
        if let Err(e) = self.sweep_all(keep, &mut swept) {
            swept.failed.push(e.into());
        }
        swept
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::qdisc::QdiscRecord;

    #[test]
    fn records_round_trip_through_the_state_directory() {
        let dir = tempfile::tempdir().unwrap();
        let shaping = Shaping::new(dir.path());
        let record = Record {
            device: "eth0".to_owned(),
            prior: Prior::Installed(QdiscRecord {
                kind: "tbf".to_owned(),
                handle: 0x8001_0000,
                parent: 0xffff_ffff,
                options: vec![1, 2, 3],
            }),
        };
        shaping.save("abc", &record).unwrap();
        assert_eq!(shaping.records.ids(), vec!["abc".to_owned()]);
        assert_eq!(shaping.load("abc").unwrap(), Some(record));
        shaping.forget("abc").unwrap();
        assert_eq!(shaping.load("abc").unwrap(), None);
        assert!(shaping.records.ids().is_empty());
    }

    #[test]
    fn ifb_names_carry_the_fault_id() {
        assert_eq!(ifb_name("0123abcd"), "fl-0123abcd");
        assert_eq!("fl-0123abcd".strip_prefix(IFB_PREFIX), Some("0123abcd"));
    }
}
