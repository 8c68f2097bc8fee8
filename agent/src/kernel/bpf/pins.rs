//! A fault's pins on the BPF filesystem: `<pin dir>/<fault id>/`, holding its maps and one pin
//! per attachment whose name records the hook and the interface (`tcx-egress-eth0`,
//! `cls-ingress-eth0`, `steer-egress-eth0`), so that a revert, or a start-up sweep with no journal
//! entry, knows what to undo.

use std::{fs, io, path::Path};

use super::{BpfError, TcDirection};

const BPF_FS: &str = "/sys/fs/bpf";

/// Where a classifier is attached, as recorded in its pin's name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Hook {
    /// The loss classifier on a TCX link; the pin holds the link.
    Tcx(TcDirection),
    /// The loss classifier as a cls_bpf filter in the interface's clsact qdisc.
    Cls(TcDirection),
    /// The steering classifier in the interface's clsact hook of this direction, redirecting
    /// to the fault's IFB.
    Steer(TcDirection),
    /// The steering classifier inside a root qdisc of faultline's, as agents before the IFB
    /// design attached it on egress: removing that qdisc removed the filter, so the pin only
    /// records it. Still read, so that such a fault reverts after an upgrade.
    SteerRoot,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Attachment {
    pub(super) hook: Hook,
    pub(super) device: String,
}

impl Attachment {
    pub(super) fn pin_name(&self) -> String {
        let (prefix, place) = match self.hook {
            Hook::Tcx(d) => ("tcx", d.to_string()),
            Hook::Cls(d) => ("cls", d.to_string()),
            Hook::Steer(d) => ("steer", d.to_string()),
            Hook::SteerRoot => ("steer", "root".to_owned()),
        };
        format!("{prefix}-{place}-{}", self.device)
    }

    pub(super) fn from_pin_name(name: &str) -> Option<Self> {
        let mut parts = name.splitn(3, '-');
        let (prefix, place) = (parts.next()?, parts.next()?);
        let hook = match (prefix, place) {
            ("tcx", d) => Hook::Tcx(TcDirection::parse(d)?),
            ("cls", d) => Hook::Cls(TcDirection::parse(d)?),
            ("steer", "root") => Hook::SteerRoot,
            ("steer", d) => Hook::Steer(TcDirection::parse(d)?),
            _ => return None,
        };
        let device = parts.next()?.to_owned();
        Some(Self { hook, device })
    }
}

pub(super) fn remove_pin(path: &Path) -> Result<(), BpfError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(BpfError::Io {
            what: "cannot unpin",
            path: path.to_owned(),
            source,
        }),
    }
}

/// Makes sure `root` exists on a BPF filesystem, mounting bpffs at /sys/fs/bpf when the host
/// (or a fresh mount namespace) has not.
pub(super) fn ensure_bpffs(root: &Path) -> Result<(), BpfError> {
    use nix::{
        mount::{mount, MsFlags},
        sys::statfs::{statfs, BPF_FS_MAGIC},
    };
    let on_bpffs = |p: &Path| {
        statfs(p)
            .map(|s| s.filesystem_type() == BPF_FS_MAGIC)
            .unwrap_or(false)
    };
    let bpf_fs = Path::new(BPF_FS);
    if root.starts_with(bpf_fs) && !on_bpffs(bpf_fs) {
        mount(
            Some("bpf"),
            bpf_fs,
            Some("bpf"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            None::<&str>,
        )
        .map_err(|e| BpfError::Io {
            what: "cannot mount the BPF filesystem at",
            path: bpf_fs.to_owned(),
            source: e.into(),
        })?;
    }
    fs::create_dir_all(root).map_err(|source| BpfError::Io {
        what: "cannot create the pin directory",
        path: root.to_owned(),
        source,
    })?;
    if !on_bpffs(root) {
        return Err(BpfError::NotBpfFs {
            path: root.to_owned(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pin_names_round_trip_devices_with_dashes() {
        let a = Attachment {
            hook: Hook::Cls(TcDirection::Ingress),
            device: "veth-fl-a1".to_owned(),
        };
        assert_eq!(a.pin_name(), "cls-ingress-veth-fl-a1");
        assert_eq!(Attachment::from_pin_name(&a.pin_name()), Some(a));
        for hook in [
            Hook::SteerRoot,
            Hook::Steer(TcDirection::Ingress),
            Hook::Steer(TcDirection::Egress),
            Hook::Tcx(TcDirection::Egress),
        ] {
            let a = Attachment {
                hook,
                device: "eth-0".to_owned(),
            };
            assert_eq!(Attachment::from_pin_name(&a.pin_name()), Some(a));
        }
        assert_eq!(Attachment::from_pin_name("config"), None);
        assert_eq!(Attachment::from_pin_name("steer_stats"), None);
    }
}
