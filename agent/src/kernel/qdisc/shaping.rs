//! The shaping adapter: it owns what shaping faults put on the host — faultline's root qdisc
//! trees, the IFB devices of ingress faults (named `fl-<fault id>`), and the durable record of
//! the root each tree replaced — and finds them again at start-up to sweep what no fault
//! accounts for.
//!
//! Before the root of an interface is replaced, what was there is inspected and recorded (see
//! [`Prior`]); the record is written and fsynced under the state directory (`kernel::durable`),
//! so that a revert after a crash restores exactly the same qdisc. Replacing a root is one
//! netlink request, so traffic never goes without a qdisc.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::{
    handle, htb, is_ours, Leaf, Prior, Tree, DEFAULT_MINOR, LEAF_MAJOR, ROOT_MAJOR, TARGET_MINOR,
};
use crate::kernel::{
    durable,
    rtnl::{Rtnl, RtnlError},
    Adapter, Swept,
};

/// Interfaces faultline creates are named `fl-<fault id>`.
const IFB_PREFIX: &str = "fl-";
/// htb classes of faultline's tree are meant never to limit: 400 Gbit/s is more than any link.
const UNLIMITED_BYTES_PER_SEC: u64 = 50_000_000_000;

#[derive(Debug, Error)]
pub(crate) enum ShapingError {
    #[error(transparent)]
    Rtnl(#[from] RtnlError),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the qdisc record {path} is unreadable: {source}")]
    Record {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("the root qdisc changed since admission: {0}")]
    Changed(String),
}

/// What a shaping fault recorded before it replaced a root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Record {
    pub(crate) device: String,
    pub(crate) prior: Prior,
}

/// The IFB device of fault `id`'s ingress shaping.
pub(crate) fn ifb_name(id: &str) -> String {
    format!("{IFB_PREFIX}{id}")
}

/// faultline's qdisc trees and IFB devices, and the records of what they replaced.
#[derive(Debug)]
pub(crate) struct Shaping {
    /// `<state dir>/qdisc/`, one `<fault id>.json` per replaced root.
    records: PathBuf,
}

impl Shaping {
    pub(crate) fn new(state_dir: &Path) -> Self {
        Self {
            records: state_dir.join("qdisc"),
        }
    }

    /// Where fault `id`'s record of the root it replaced is kept.
    pub(crate) fn record_path(&self, id: &str) -> PathBuf {
        self.records.join(format!("{id}.json"))
    }

    /// The egress tree of `ifindex` now.
    pub(crate) fn tree(&self, rtnl: &Rtnl, ifindex: u32) -> Result<Tree, ShapingError> {
        Ok(Tree::of(rtnl.qdiscs(ifindex)?))
    }

    /// Replaces `device`'s root with faultline's htb tree holding `leaf` in the targeted class;
    /// returns the root's handle, for the steering classifier. What the root held is recorded
    /// (fsynced) first: a crash from there on is reverted from the record.
    pub(crate) fn install_egress(
        &self,
        id: &str,
        device: &str,
        ifindex: u32,
        force: bool,
        leaf: &Leaf,
    ) -> Result<u32, ShapingError> {
        let rtnl = Rtnl::open()?;
        let prior = self
            .tree(&rtnl, ifindex)?
            .prior(force)
            .map_err(|refusal| ShapingError::Changed(refusal.message(device)))?;
        self.save(
            id,
            &Record {
                device: device.to_owned(),
                prior,
            },
        )?;
        let root = handle(ROOT_MAJOR, 0);
        let target = handle(ROOT_MAJOR, TARGET_MINOR);
        let (qdisc, class) = htb_parts();
        rtnl.replace_root(device, ifindex, "htb", root, &qdisc)?;
        for minor in [DEFAULT_MINOR, TARGET_MINOR] {
            rtnl.add_class(device, ifindex, root, handle(ROOT_MAJOR, minor), &class)?;
        }
        rtnl.add_qdisc(
            device,
            ifindex,
            (target, handle(LEAF_MAJOR, 0)),
            leaf.kind,
            &leaf.options,
        )?;
        Ok(root)
    }

    /// Creates fault `id`'s IFB device with `leaf` as its root; returns the device's index.
    pub(crate) fn install_ingress(&self, id: &str, leaf: &Leaf) -> Result<u32, ShapingError> {
        let rtnl = Rtnl::open()?;
        let ifb = ifb_name(id);
        let index = rtnl.create_ifb(&ifb)?;
        rtnl.replace_root(&ifb, index, leaf.kind, handle(LEAF_MAJOR, 0), &leaf.options)?;
        Ok(index)
    }

    /// Deletes fault `id`'s IFB device; gone already is fine.
    pub(crate) fn remove_ingress(&self, id: &str) -> Result<(), ShapingError> {
        Ok(Rtnl::open()?.delete_link(&ifb_name(id))?)
    }

    /// Puts back the root qdisc recorded for fault `id`, if faultline's root is still there, and
    /// forgets the record. Idempotent: no record means the root was never replaced.
    pub(crate) fn restore_root(&self, id: &str) -> Result<(), ShapingError> {
        let Some(record) = self.load(id)? else {
            return Ok(());
        };
        let device = &record.device;
        if let Ok(ifindex) = nix::net::if_::if_nametoindex(device.as_str()) {
            let rtnl = Rtnl::open()?;
            let tree = self.tree(&rtnl, ifindex)?;
            match tree.root.filter(|root| is_ours(root.handle)) {
                Some(ours) => match &record.prior {
                    Prior::KernelDefault { .. } => {
                        rtnl.delete_root(device, ifindex, ours.handle)?
                    }
                    Prior::Installed(q) => {
                        rtnl.replace_root(device, ifindex, &q.kind, q.handle, &q.options)?
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

    /// Writes and fsyncs fault `id`'s record before the root is touched.
    fn save(&self, id: &str, record: &Record) -> Result<(), ShapingError> {
        let io = |what, path: &Path| {
            let path = path.to_owned();
            move |source| ShapingError::Io { what, path, source }
        };
        fs::create_dir_all(&self.records).map_err(io("cannot create", &self.records))?;
        let path = self.record_path(id);
        let text = serde_json::to_vec_pretty(record).expect("records serialise");
        durable::write(&self.records, &path, &text).map_err(io("cannot write", &path))
    }

    fn load(&self, id: &str) -> Result<Option<Record>, ShapingError> {
        let path = self.record_path(id);
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|source| ShapingError::Record { path, source }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(ShapingError::Io {
                what: "cannot read",
                path,
                source,
            }),
        }
    }

    fn forget(&self, id: &str) -> Result<(), ShapingError> {
        let path = self.record_path(id);
        durable::remove(&self.records, &path)
            .map(|_| ())
            .map_err(|source| ShapingError::Io {
                what: "cannot remove",
                path,
                source,
            })
    }

    /// Fault ids that have a record.
    fn ids(&self) -> Vec<String> {
        durable::record_ids(&self.records)
    }

    /// Puts back every root recorded by a fault not in `keep`, then removes faultline roots and
    /// IFB devices that no kept fault accounts for.
    fn sweep_all(&self, keep: &[&str], swept: &mut Swept) -> Result<(), ShapingError> {
        let mut kept_devices = Vec::new();
        for id in self.ids() {
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

/// The htb qdisc's and classes' options of faultline's egress tree. Neither class is meant to
/// limit anything (a rate fault's cap is its tbf leaf), so both may use far more than any link.
fn htb_parts() -> (Vec<u8>, Vec<u8>) {
    let qdisc = htb::HtbQdiscOptions {
        default_minor: u32::from(DEFAULT_MINOR),
    }
    .encode();
    let class = htb::HtbClassOptions {
        rate_bytes_per_sec: UNLIMITED_BYTES_PER_SEC,
        ceil_bytes_per_sec: UNLIMITED_BYTES_PER_SEC,
        burst_bytes: 256 << 10,
        cburst_bytes: 256 << 10,
        // htb's own upper bound without complaints in the kernel log.
        quantum: 200_000,
        prio: 0,
    }
    .encode();
    (qdisc, class)
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
        assert_eq!(shaping.ids(), vec!["abc".to_owned()]);
        assert_eq!(shaping.load("abc").unwrap(), Some(record));
        shaping.forget("abc").unwrap();
        assert_eq!(shaping.load("abc").unwrap(), None);
        assert!(shaping.ids().is_empty());
    }

    #[test]
    fn ifb_names_carry_the_fault_id() {
        assert_eq!(ifb_name("0123abcd"), "fl-0123abcd");
        assert_eq!("fl-0123abcd".strip_prefix(IFB_PREFIX), Some("0123abcd"));
    }
}
