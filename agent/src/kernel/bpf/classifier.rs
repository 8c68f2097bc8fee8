//! The classifier adapter: it owns the classifiers faults attach — loss classifiers on an
//! interface's hook, steering classifiers of shaping faults — and their pins, from which it
//! detaches them again on revert and sweeps those no fault accounts for at start-up.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use aya::programs::{
    links::{FdLink, PinnedLink},
    tc::{NlOptions, TcAttachOptions},
    LinkOrder, SchedClassifier,
};
use faultline_common::STEER_MATCH;

use super::{
    config::{LossConfig, SteerConfig},
    object::{classifier, configure, pin_maps, tcx_supported, Spares, LOSS_PROGRAM, STEER_PROGRAM},
    pins::{ensure_bpffs, remove_pin, Attachment, Hook},
    BpfError, TcDirection,
};
use crate::kernel::{
    netdev::l2_len,
    rtnl::{self, BpfFilter, Rtnl},
    Adapter, Attempts, KernelError, Swept,
};

/// After the loss classifier (priority 1) in the same hook, so that a packet the loss fault
/// drops is not delayed first.
const STEER_PRIORITY: u16 = 2;
/// Runs ahead of other cls_bpf filters (lower is earlier), so a filter that ends classification
/// cannot hide packets from the fault.
const NETLINK_PRIORITY: u16 = 1;

/// Whether a classifier for `direction` attaches through TCX (see the module docs).
fn uses_tcx(direction: TcDirection) -> bool {
    direction == TcDirection::Ingress && tcx_supported()
}

/// The pinned loss classifiers under one directory.
#[derive(Debug)]
pub(crate) struct Classifiers {
    root: PathBuf,
    spares: Spares,
}

impl Classifiers {
    pub(crate) fn new(root: PathBuf) -> Self {
        Self {
            root,
            spares: Spares::default(),
        }
    }

    pub(super) fn dir(&self, id: &str) -> PathBuf {
        self.root.join(id)
    }

    /// The plan for `attach`, for dry runs and `faultline get`.
    pub(crate) fn describe(
        &self,
        id: &str,
        device: &str,
        direction: TcDirection,
        what: &str,
    ) -> Vec<String> {
        let how = if uses_tcx(direction) {
            format!("attach to {device} {direction} through a TCX link, first in order")
        } else {
            format!(
                "add a clsact qdisc to {device} if it has none; attach to its {direction} hook as a \
                 cls_bpf filter (direct action, priority {NETLINK_PRIORITY})"
            )
        };
        vec![
            format!("ebpf: load tc classifier {LOSS_PROGRAM} configured to {what}"),
            format!("ebpf: {how}"),
            format!(
                "ebpf: pin its maps and attachment under {} (the classifier stops dropping at the \
                 deadline by itself)",
                self.dir(id).display()
            ),
        ]
    }

    /// The plan for `attach_steer`.
    pub(crate) fn describe_steer(
        &self,
        id: &str,
        device: &str,
        direction: TcDirection,
        ifb: &str,
        what: &str,
    ) -> String {
        format!(
            "ebpf: load tc classifier {STEER_PROGRAM} to {what}; attach it to {device}'s clsact \
             {direction} hook as a cls_bpf filter with a mirred redirect to {ifb} (priority \
             {STEER_PRIORITY}), adding the clsact qdisc if it has none; pin it under {} (it stops \
             steering at the deadline by itself)",
            self.dir(id).display()
        )
    }

    /// Loads a fresh copy of the loss classifier with `config`, attaches it and pins it.
    pub(crate) fn attach(
        &self,
        id: &str,
        device: &str,
        direction: TcDirection,
        config: &LossConfig,
    ) -> Result<(), BpfError> {
        let mut config = *config;
        config.filter.l2_len = l2_len(device)?;
        config.consume = u8::from(!uses_tcx(direction));
        let dir = self.prepare(id)?;
        // A failure part-way leaves pins behind, which `detach` (run by the engine after every
        // failed apply) reads to undo exactly what was done.
        let mut ebpf = self.spares.take(LOSS_PROGRAM)?;
        configure(&mut ebpf, "CONFIG", &config)?;
        pin_maps(&ebpf, &dir, &[("CONFIG", "config"), ("STATS", "stats")])?;
        let program = classifier(&mut ebpf, LOSS_PROGRAM)?;
        attach_program(program, &dir, device, direction, uses_tcx(direction))
    }

    /// Loads a fresh copy of the steering classifier with `config`, attaches it to `device`'s
    /// clsact hook of `direction` as a filter that redirects what it matches to the IFB with
    /// index `ifb`, and pins it. The interface's root qdisc is not touched: packets the
    /// classifier does not match leave by the path they would take with no fault.
    pub(crate) fn attach_steer(
        &self,
        id: &str,
        device: &str,
        direction: TcDirection,
        ifb: u32,
        config: &SteerConfig,
    ) -> Result<(), BpfError> {
        use std::os::fd::{AsFd as _, AsRawFd as _};

        let mut config = *config;
        config.filter.l2_len = l2_len(device)?;
        config.mode = STEER_MATCH;
        let dir = self.prepare(id)?;
        let mut ebpf = self.spares.take(STEER_PROGRAM)?;
        configure(&mut ebpf, "STEER", &config)?;
        pin_maps(
            &ebpf,
            &dir,
            &[("STEER", "steer"), ("STEER_STATS", "steer_stats")],
        )?;
        let program = classifier(&mut ebpf, STEER_PROGRAM)?;
        let pin_path = dir.join(
            Attachment {
                hook: Hook::Steer(direction),
                device: device.to_owned(),
            }
            .pin_name(),
        );
        // Pinned first: the pin is what tells `detach` (and a start-up sweep) that a filter may
        // be attached.
        program.pin(&pin_path).map_err(|source| BpfError::Pin {
            path: pin_path,
            source,
        })?;
        let ifindex = nix::net::if_::if_nametoindex(device).map_err(|e| BpfError::Io {
            what: "no such interface:",
            path: PathBuf::from(device),
            source: e.into(),
        })?;
        let fd = program.fd().map_err(BpfError::Program)?;
        let raw = fd.as_fd().as_raw_fd() as u32;
        // The qdisc and the filter in one exchange: the kernel handles them in order.
        rtnl::exchange(vec![
            rtnl::clsact_request(device, ifindex),
            rtnl::bpf_filter_request(
                device,
                ifindex,
                &BpfFilter {
                    parent: direction.clsact_parent(),
                    priority: STEER_PRIORITY,
                    prog_fd: raw,
                    name: STEER_PROGRAM,
                    redirect_to: ifb,
                },
            ),
        ])?;
        Ok(())
    }

    /// Loads ahead, in the background, the spares of the classifiers faults have taken (see
    /// `Spares`); called once an apply has answered.
    pub(crate) fn prepare_ahead(&self) {
        self.spares.refill();
    }

    fn prepare(&self, id: &str) -> Result<PathBuf, BpfError> {
        ensure_bpffs(&self.root)?;
        let dir = self.dir(id);
        fs::create_dir_all(&dir).map_err(|source| BpfError::Io {
            what: "cannot create the pin directory",
            path: dir.clone(),
            source,
        })?;
        Ok(dir)
    }

    /// Ends fault `id`'s classifiers without detaching them: their pinned configuration's
    /// deadline is moved to the past, and each classifier checks it on every packet, so from
    /// the next packet on it drops or steers nothing. One map write (microseconds), where a
    /// detach goes through netlink or a TCX link's release; [`Classifiers::detach`] follows.
    /// Returns whether the fault had a classifier to end.
    pub(crate) fn expire(&self, id: &str) -> Result<bool, BpfError> {
        let dir = self.dir(id);
        let loss = expire_pinned::<LossConfig>(&dir.join("config"), |c| c.deadline_ns = 0)?;
        let steer = expire_pinned::<SteerConfig>(&dir.join("steer"), |c| c.deadline_ns = 0)?;
        Ok(loss || steer)
    }

    /// Detaches a fault's classifiers and removes its pins. Idempotent: a fault with nothing
    /// pinned any more is fine. The interface and hook come from the pin names, which also
    /// serves the start-up sweep, where no journal entry tells them.
    pub(crate) fn detach(&self, id: &str) -> Result<(), KernelError> {
        let dir = self.dir(id);
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(source) => {
                return Err(BpfError::Io {
                    what: "cannot read the pin directory",
                    path: dir,
                    source,
                }
                .into())
            }
        };
        let mut names: Vec<String> = entries
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        // Attachments first, so the maps outlive the program that reads them.
        names.sort_by_key(|n| Attachment::from_pin_name(n).is_none());
        // Every pin is tried: one attachment that cannot be undone leaves the others undone.
        let mut attempts = Attempts::default();
        for name in names {
            attempts.note(unpin(&dir.join(&name), &name));
        }
        if attempts.failed() {
            // The directory keeps what is left, for the start-up sweep to try again.
            return attempts.finish();
        }
        match fs::remove_dir(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(BpfError::Io {
                what: "cannot remove the pin directory",
                path: dir,
                source,
            }
            .into()),
        }
    }

    /// Detaches every pinned classifier whose fault id is not in `keep`; returns their ids,
    /// and the errors of those that could not be detached.
    fn sweep_ids(
        &self,
        keep: &[&str],
        failed: &mut Vec<KernelError>,
    ) -> Result<Vec<String>, BpfError> {
        let entries = match fs::read_dir(&self.root) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(BpfError::Io {
                    what: "cannot read the pin directory",
                    path: self.root.clone(),
                    source,
                })
            }
        };
        let mut swept = Vec::new();
        for entry in entries.filter_map(Result::ok) {
            let id = entry.file_name().to_string_lossy().into_owned();
            if keep.contains(&id.as_str()) || !entry.path().is_dir() {
                continue;
            }
            match self.detach(&id) {
                Ok(()) => swept.push(id),
                Err(e) => failed.push(e),
            }
        }
        swept.sort();
        Ok(swept)
    }
}

/// Rewrites the configuration pinned at `pin` (a one-entry array) with `change` applied;
/// false when there is no such pin. The classifier reads the entry in place: only the field
/// `change` writes differs between what it may see, so a read racing the write is harmless.
fn expire_pinned<T: aya::Pod>(pin: &Path, change: impl FnOnce(&mut T)) -> Result<bool, BpfError> {
    use aya::maps::{Array, Map, MapData};

    if !pin.exists() {
        return Ok(false);
    }
    let data = MapData::from_pin(pin).map_err(BpfError::Map)?;
    let mut array: Array<MapData, T> = Array::try_from(Map::Array(data)).map_err(BpfError::Map)?;
    let mut config = array.get(&0, 0).map_err(BpfError::Map)?;
    change(&mut config);
    array.set(0, config, 0).map_err(BpfError::Map)?;
    Ok(true)
}

/// Undoes what the pin `name` at `path` records, and removes the pin.
fn unpin(path: &Path, name: &str) -> Result<(), BpfError> {
    let Some(Attachment { hook, device }) = Attachment::from_pin_name(name) else {
        return remove_pin(path);
    };
    match hook {
        Hook::Tcx(_) => {
            let link = PinnedLink::from_pin(path).map_err(|source| BpfError::PinnedLink {
                path: path.to_owned(),
                source,
            })?;
            // Unpinning drops the last reference: the kernel detaches the link.
            link.unpin().map_err(|source| BpfError::Io {
                what: "cannot unpin",
                path: path.to_owned(),
                source,
            })?;
        }
        Hook::Cls(direction) => {
            let rtnl = Rtnl::open()?;
            rtnl.delete_bpf_filters(&device, direction.clsact_parent(), LOSS_PROGRAM)?;
            remove_pin(path)?;
            rtnl.remove_idle_clsact(&device)?;
        }
        Hook::Steer(direction) => {
            let rtnl = Rtnl::open()?;
            rtnl.delete_bpf_filters(&device, direction.clsact_parent(), STEER_PROGRAM)?;
            remove_pin(path)?;
            rtnl.remove_idle_clsact(&device)?;
        }
        Hook::SteerRoot => remove_pin(path)?,
    }
    Ok(())
}

/// Attaches the loaded loss classifier to `direction` of `device`, through TCX or cls_bpf, and
/// pins what records the attachment.
fn attach_program(
    program: &mut SchedClassifier,
    dir: &Path,
    device: &str,
    direction: TcDirection,
    tcx: bool,
) -> Result<(), BpfError> {
    let hook = if tcx {
        Hook::Tcx(direction)
    } else {
        Hook::Cls(direction)
    };
    let (attach_type, priority) = (direction.attach_type(), NETLINK_PRIORITY);
    let attach_error = |source| BpfError::Attach {
        device: device.to_owned(),
        direction,
        source,
    };
    let pin_path = dir.join(
        Attachment {
            hook,
            device: device.to_owned(),
        }
        .pin_name(),
    );
    if let Hook::Tcx(_) = hook {
        let link_id = program
            .attach_with_options(
                device,
                attach_type,
                TcAttachOptions::TcxOrder(LinkOrder::first()),
            )
            .map_err(attach_error)?;
        let link = program.take_link(link_id).map_err(attach_error)?;
        let link: FdLink = link.try_into().map_err(|source| BpfError::PinnedLink {
            path: pin_path.clone(),
            source,
        })?;
        // The pin holds the link, and the link holds the attachment, once this process
        // has closed its descriptors.
        link.pin(&pin_path).map_err(|source| BpfError::Pin {
            path: pin_path,
            source,
        })?;
        return Ok(());
    }
    // Pinned first: the pin is what tells `detach` (and a start-up sweep) that a filter may be
    // attached, so it must exist before the filter does.
    program.pin(&pin_path).map_err(|source| BpfError::Pin {
        path: pin_path,
        source,
    })?;
    let ifindex = nix::net::if_::if_nametoindex(device).map_err(|e| BpfError::Io {
        what: "no such interface:",
        path: PathBuf::from(device),
        source: e.into(),
    })?;
    rtnl::exchange(vec![rtnl::clsact_request(device, ifindex)])?;
    let link_id = program
        .attach_with_options(
            device,
            attach_type,
            TcAttachOptions::Netlink(NlOptions {
                priority,
                ..Default::default()
            }),
        )
        .map_err(attach_error)?;
    let link = program.take_link(link_id).map_err(attach_error)?;
    // Dropping the link would detach the filter; the qdisc holds it from here on and `detach`
    // removes it by program name.
    std::mem::forget(link);
    Ok(())
}

impl Adapter for Classifiers {
    fn sweep(&self, keep: &[&str]) -> Swept {
        let mut swept = Swept::default();
        match self.sweep_ids(keep, &mut swept.failed) {
            Ok(ids) => swept
                .removed
                .extend(ids.into_iter().map(|id| format!("eBPF classifier of {id}"))),
            Err(e) => swept.failed.push(e.into()),
        }
        swept
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A revert that cannot undo one attachment still undoes every other, and keeps what it
    /// could not for the start-up sweep.
    #[test]
    fn a_detach_that_fails_on_one_pin_still_removes_the_others() {
        let root = tempfile::tempdir().unwrap();
        let classifiers = Classifiers::new(root.path().to_owned());
        let dir = root.path().join("0123abcd");
        fs::create_dir(&dir).unwrap();
        // Not a BPF link (a plain file): taking hold of it fails. The filter pin names an
        // interface that does not exist, so its filter is gone already.
        let names = ["tcx-ingress-lo", "cls-egress-nosuch0", "config", "stats"];
        for name in names {
            fs::write(dir.join(name), b"").unwrap();
        }
        let error = classifiers.detach("0123abcd").unwrap_err();
        assert!(
            matches!(&error, KernelError::Bpf(e) if matches!(**e, BpfError::PinnedLink { .. })),
            "{error}"
        );
        let left: Vec<String> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(left, ["tcx-ingress-lo"]);
    }
}
