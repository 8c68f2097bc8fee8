//! faultline's eBPF tc classifier (`faultline_loss`, from agent-ebpf/): loading it for one fault,
//! attaching it to an interface, and taking it away again.
//!
//! Two attach paths, chosen per direction:
//! - egress: always a cls_bpf filter in a clsact qdisc (netlink, direct action). A dropped packet
//!   is consumed (`TC_ACT_STOLEN`) and its sender is told the send succeeded, as with netem or a
//!   real network. Under TCX a drop can only be `TCX_DROP`, which hands the sender ENOBUFS: TCP
//!   would retry at once instead of losing the segment, and ping would resend.
//! - ingress: a TCX link on kernels that have TCX (6.6+), cls_bpf in clsact otherwise; the
//!   receiver never learns of a drop either way.
//!
//! Every fault's objects are pinned under `<pin dir>/<fault id>/` on the BPF filesystem: the
//! `CONFIG` and `STATS` maps, and the TCX link, whose pin alone keeps the program attached after
//! the agent exits or dies; a cls_bpf filter is held by its qdisc and the program is pinned only
//! to record that a filter must be removed. Pin names carry the interface and
//! direction (`tcx-egress-eth0`, `cls-ingress-eth0`), so a start-up sweep can undo an attachment
//! whose journal entry was lost.

use std::{
    collections::HashMap,
    fmt, fs, io,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError},
    thread,
    time::Duration,
};

use aya::{
    maps::{Array, MapError},
    pin::PinError,
    programs::{
        links::{FdLink, PinnedLink},
        tc::{self as aya_tc, NlOptions, TcAttachOptions},
        LinkOrder, ProgramError, SchedClassifier, TcAttachType,
    },
    util::KernelVersion,
    Ebpf, EbpfError, EbpfLoader,
};
use faultline_common::{
    Cidr4, Cidr6, PortRange, L4_ANY, L4_TCP, L4_UDP, MAX_CIDRS, MAX_PORT_RANGES, STEER_CLASSIFY,
    STEER_MATCH,
};
pub use faultline_common::{LossConfig, PacketFilter, SteerConfig};
use ipnet::IpNet;
use thiserror::Error;

/// The compiled eBPF object, built by agent/build.rs: the tc classifiers here, and the TCP
/// raw tracepoint programs of `monitor::tcp`.
pub(crate) static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/faultline-ebpf"));

const PROGRAM: &str = "faultline_loss";
const STEER_PROGRAM: &str = "faultline_steer";
/// After the loss classifier (priority 1) in the same hook, so that a packet the loss fault
/// drops is not delayed first.
const STEER_INGRESS_PRIORITY: u16 = 2;
/// The parent of a clsact qdisc's ingress hook (`ffff:fff2`).
const CLSACT_INGRESS: u32 = 0xffff_fff2;
/// Runs ahead of other cls_bpf filters (lower is earlier), so a filter that ends classification
/// cannot hide packets from the fault.
const NETLINK_PRIORITY: u16 = 1;
const BPF_FS: &str = "/sys/fs/bpf";

#[derive(Debug, Error)]
pub enum TcError {
    #[error("cannot read CLOCK_MONOTONIC: {0}")]
    Clock(#[source] nix::Error),
    #[error("cannot load faultline's eBPF object: {0}")]
    Load(#[source] EbpfError),
    #[error("faultline's eBPF object lacks {0} (the agent binary is broken)")]
    Missing(&'static str),
    #[error("the kernel refused the eBPF program {PROGRAM}: {0}")]
    Program(#[source] ProgramError),
    #[error("the kernel's verifier refused the eBPF program {PROGRAM} ({error}); it ended with: {tail} (the whole log is in the agent's log)")]
    Verifier { error: io::Error, tail: String },
    #[error("cannot attach the classifier to {device} ({direction}): {source}")]
    Attach {
        device: String,
        direction: TcDirection,
        #[source]
        source: ProgramError,
    },
    #[error("cannot add a clsact qdisc to {device}: {source}")]
    Clsact {
        device: String,
        #[source]
        source: aya_tc::TcError,
    },
    #[error("cannot remove the classifier from {device} ({direction}): {source}")]
    Detach {
        device: String,
        direction: TcDirection,
        #[source]
        source: aya_tc::TcError,
    },
    #[error("cannot inspect or remove the idle clsact qdisc of {device}: {source}")]
    Qdisc {
        device: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("cannot write the classifier's configuration map: {0}")]
    Map(#[source] MapError),
    #[error("cannot pin {path}: {source}")]
    Pin {
        path: PathBuf,
        #[source]
        source: PinError,
    },
    #[error("cannot take hold of the TCX link {path}: {source}")]
    PinnedLink {
        path: PathBuf,
        #[source]
        source: aya::programs::links::LinkError,
    },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} is not on a BPF filesystem (mount -t bpf bpf {BPF_FS}, or choose a pin directory under it)")]
    NotBpfFs { path: PathBuf },
    #[error(transparent)]
    SteerFilter(Box<crate::kernel::qdisc::QdiscError>),
    #[error("interface {device} has link type {link_type}, which the loss classifier cannot parse (it handles Ethernet, loopback and raw IP devices)")]
    LinkType { device: String, link_type: u32 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TcDirection {
    Ingress,
    Egress,
}

impl TcDirection {
    fn attach_type(self) -> TcAttachType {
        match self {
            TcDirection::Ingress => TcAttachType::Ingress,
            TcDirection::Egress => TcAttachType::Egress,
        }
    }

    fn parse(text: &str) -> Option<Self> {
        match text {
            "ingress" => Some(Self::Ingress),
            "egress" => Some(Self::Egress),
            _ => None,
        }
    }
}

impl fmt::Display for TcDirection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TcDirection::Ingress => "ingress",
            TcDirection::Egress => "egress",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum L4Filter {
    Any,
    Tcp,
    Udp,
}

/// Whether this kernel attaches tc programs through TCX links (Linux 6.6 and later).
pub fn tcx_supported() -> bool {
    KernelVersion::current()
        .map(|v| v >= KernelVersion::new(6, 6, 0))
        .unwrap_or(false)
}

/// A verifier log runs to tens of kilobytes: the agent logs it whole, the error keeps its last
/// lines, which say what was refused.
fn verifier_error(e: ProgramError) -> TcError {
    match e {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => TcError::Verifier {
            error: io_error,
            tail: verifier_tail(PROGRAM, &verifier_log.to_string()),
        },
        other => TcError::Program(other),
    }
}

/// Logs a verifier's refusal of `program` whole (tens of kilobytes) and returns its last lines,
/// which say what was refused, for the error.
pub(crate) fn verifier_tail(program: &str, log: &str) -> String {
    tracing::warn!(program, log = %log, "the verifier refused the program");
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(6)..].join(" | ")
}

/// Whether a classifier for `direction` attaches through TCX (see the module docs).
fn uses_tcx(direction: TcDirection) -> bool {
    direction == TcDirection::Ingress && tcx_supported()
}

/// The `bpf_ktime_get_ns()` value (CLOCK_MONOTONIC) `remaining` from now.
pub fn monotonic_deadline_ns(remaining: Duration) -> Result<u64, TcError> {
    use nix::time::{clock_gettime, ClockId};
    let now = clock_gettime(ClockId::CLOCK_MONOTONIC).map_err(TcError::Clock)?;
    let now_ns = now.tv_sec() as u64 * 1_000_000_000 + now.tv_nsec() as u64;
    Ok(now_ns.saturating_add(remaining.as_nanos().min(u64::MAX as u128) as u64))
}

/// The classifier's configuration for one fault. Callers have validated the lists against
/// the same limits (`faults::MAX_PORT_RANGES`, `faults::MAX_CIDRS`); extra entries would be cut.
pub fn loss_config(
    percent: f64,
    direction: TcDirection,
    l4: L4Filter,
    ports: &[(u16, u16)],
    cidrs: &[IpNet],
    deadline_ns: u64,
) -> LossConfig {
    let mut config = LossConfig::EMPTY;
    config.deadline_ns = deadline_ns;
    // A random u32 below the threshold drops the packet; 100 % is 2^32, above every u32.
    config.threshold = ((percent / 100.0) * 4_294_967_296.0).round() as u64;
    config.filter = packet_filter(direction, l4, ports, cidrs);
    config
}

/// The filter part of a classifier's configuration; `l2_len` is filled in at attach time.
pub fn packet_filter(
    direction: TcDirection,
    l4: L4Filter,
    ports: &[(u16, u16)],
    cidrs: &[IpNet],
) -> PacketFilter {
    let mut filter = PacketFilter::ANY;
    filter.ingress = u8::from(direction == TcDirection::Ingress);
    filter.l4 = match l4 {
        L4Filter::Any => L4_ANY,
        L4Filter::Tcp => L4_TCP,
        L4Filter::Udp => L4_UDP,
    };
    for (slot, (first, last)) in filter
        .ports
        .iter_mut()
        .zip(ports.iter().take(MAX_PORT_RANGES))
    {
        *slot = PortRange {
            first: *first,
            last: *last,
        };
        filter.n_ports += 1;
    }
    for cidr in cidrs {
        match cidr {
            IpNet::V4(net) if (filter.n_v4 as usize) < MAX_CIDRS => {
                filter.v4[filter.n_v4 as usize] =
                    Cidr4::new(net.network().octets(), net.netmask().octets());
                filter.n_v4 += 1;
            }
            IpNet::V6(net) if (filter.n_v6 as usize) < MAX_CIDRS => {
                filter.v6[filter.n_v6 as usize] =
                    Cidr6::new(net.network().octets(), net.netmask().octets());
                filter.n_v6 += 1;
            }
            _ => {}
        }
    }
    filter
}

/// Bytes of link-layer header before the IP header on `device`, from its ARPHRD type.
pub fn l2_len(device: &str) -> Result<u16, TcError> {
    let link_type = link_type(device).map_err(|source| TcError::Io {
        what: "cannot read the link type of",
        path: PathBuf::from(device),
        source,
    })?;
    match link_type {
        // ARPHRD_ETHER, ARPHRD_LOOPBACK
        1 | 772 => Ok(14),
        // ARPHRD_TUNNEL, ARPHRD_TUNNEL6, ARPHRD_SIT, ARPHRD_IPGRE, ARPHRD_IP6GRE, ARPHRD_NONE
        // (WireGuard, tun): the packet starts with its IP header.
        768 | 769 | 776 | 778 | 823 | 65534 => Ok(0),
        _ => Err(TcError::LinkType {
            device: device.to_owned(),
            link_type: link_type.into(),
        }),
    }
}

/// The interface's ARPHRD type through SIOCGIFHWADDR, which answers for the calling thread's
/// network namespace (sysfs shows the namespace it was mounted in, which may be another one).
fn link_type(device: &str) -> io::Result<u16> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

    let name = device.as_bytes();
    // SAFETY: ifreq is plain old data; all zeroes is a valid value.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    if name.len() >= request.ifr_name.len() {
        return Err(io::Error::from_raw_os_error(libc::ENODEV));
    }
    for (slot, byte) in request.ifr_name.iter_mut().zip(name) {
        *slot = *byte as libc::c_char;
    }
    // SAFETY: a plain socket call; the descriptor is owned right away.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor nobody else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: SIOCGIFHWADDR reads the name from and writes the address into `request`.
    if unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCGIFHWADDR, &mut request) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: SIOCGIFHWADDR filled the hardware-address member of the union.
    Ok(unsafe { request.ifr_ifru.ifru_hwaddr.sa_family })
}

/// The pinned loss classifiers under one directory.
#[derive(Debug)]
pub struct Classifiers {
    root: PathBuf,
    spares: Spares,
}

/// Classifier objects loaded ahead, one per program: the verifier takes milliseconds for each
/// load, which a fault's apply then does not wait for. Every fault still gets a copy of its own
/// (program and maps), as before. A spare is held only by the agent's descriptors, so nothing
/// of it outlives the agent.
#[derive(Clone, Default)]
struct Spares(Arc<Mutex<HashMap<&'static str, Ebpf>>>);

impl fmt::Debug for Spares {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.lock().keys()).finish()
    }
}

impl Spares {
    fn lock(&self) -> MutexGuard<'_, HashMap<&'static str, Ebpf>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A copy of the object with `program` loaded: the spare if one is ready, else a fresh
    /// load. Either way the next spare is loaded in the background.
    fn take(&self, program: &'static str) -> Result<Ebpf, TcError> {
        let spare = self.lock().remove(program);
        let ebpf = match spare {
            Some(ebpf) => ebpf,
            None => load_fresh(program)?,
        };
        let spares = self.clone();
        let refill = move || match load_fresh(program) {
            Ok(ebpf) => {
                spares.lock().entry(program).or_insert(ebpf);
            }
            // The next fault loads its own and reports the error then, to its requester.
            Err(e) => tracing::debug!(program, error = %e, "cannot load a spare classifier"),
        };
        if let Err(e) = thread::Builder::new()
            .name("ebpf-spare".to_owned())
            .spawn(refill)
        {
            tracing::debug!(program, error = %e, "cannot start loading a spare classifier");
        }
        Ok(ebpf)
    }
}

/// Where a classifier is attached, as recorded in its pin's name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hook {
    /// The loss classifier on a TCX link; the pin holds the link.
    Tcx(TcDirection),
    /// The loss classifier as a cls_bpf filter in the interface's clsact qdisc.
    Cls(TcDirection),
    /// The steering classifier in the clsact ingress hook, redirecting to an IFB.
    SteerIngress,
    /// The steering classifier inside faultline's root qdisc, which owns it: removing that qdisc
    /// removes the filter, so the pin only records it.
    SteerRoot,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Attachment {
    hook: Hook,
    device: String,
}

impl Attachment {
    fn pin_name(&self) -> String {
        let (prefix, place) = match self.hook {
            Hook::Tcx(d) => ("tcx", d.to_string()),
            Hook::Cls(d) => ("cls", d.to_string()),
            Hook::SteerIngress => ("steer", "ingress".to_owned()),
            Hook::SteerRoot => ("steer", "root".to_owned()),
        };
        format!("{prefix}-{place}-{}", self.device)
    }

    fn from_pin_name(name: &str) -> Option<Self> {
        let mut parts = name.splitn(3, '-');
        let (prefix, place) = (parts.next()?, parts.next()?);
        let hook = match (prefix, place) {
            ("tcx", d) => Hook::Tcx(TcDirection::parse(d)?),
            ("cls", d) => Hook::Cls(TcDirection::parse(d)?),
            ("steer", "ingress") => Hook::SteerIngress,
            ("steer", "root") => Hook::SteerRoot,
            _ => return None,
        };
        let device = parts.next()?.to_owned();
        Some(Self { hook, device })
    }
}

/// Where the steering classifier of a shaping fault goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SteerHook {
    /// Into faultline's root qdisc of the interface, whose handle (major << 16) this is.
    Root(u32),
    /// The interface's ingress hook (clsact), redirecting to the IFB with this index.
    Ingress(u32),
}

impl Classifiers {
    pub fn new(root: PathBuf) -> Self {
        Self {
            root,
            spares: Spares::default(),
        }
    }

    fn dir(&self, id: &str) -> PathBuf {
        self.root.join(id)
    }

    /// The plan for `attach`, for dry runs and `faultline get`.
    pub fn describe(
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
            format!("ebpf: load tc classifier {PROGRAM} configured to {what}"),
            format!("ebpf: {how}"),
            format!(
                "ebpf: pin its maps and attachment under {} (the classifier stops dropping at the \
                 deadline by itself)",
                self.dir(id).display()
            ),
        ]
    }

    /// The plan for `attach_steer`.
    pub fn describe_steer(&self, id: &str, device: &str, hook: SteerHook, what: &str) -> String {
        let place = match hook {
            SteerHook::Root(handle) => format!(
                "as a cls_bpf filter of qdisc {:x}: on {device} (direct action, priority {NETLINK_PRIORITY})",
                handle >> 16
            ),
            SteerHook::Ingress(_) => format!(
                "to {device}'s clsact ingress hook as a cls_bpf filter with a mirred redirect to \
                 the IFB (priority {STEER_INGRESS_PRIORITY}), adding the clsact qdisc if it has none"
            ),
        };
        format!(
            "ebpf: load tc classifier {STEER_PROGRAM} to {what}; attach it {place}; pin it under {} \
             (it stops steering at the deadline by itself)",
            self.dir(id).display()
        )
    }

    /// Loads a fresh copy of the loss classifier with `config`, attaches it and pins it.
    pub fn attach(
        &self,
        id: &str,
        device: &str,
        direction: TcDirection,
        config: &LossConfig,
    ) -> Result<(), TcError> {
        let mut config = *config;
        config.filter.l2_len = l2_len(device)?;
        config.consume = u8::from(!uses_tcx(direction));
        let dir = self.prepare(id)?;
        // A failure part-way leaves pins behind, which `detach` (run by the engine after every
        // failed apply) reads to undo exactly what was done.
        let mut ebpf = self.spares.take(PROGRAM)?;
        configure(&mut ebpf, "CONFIG", &config)?;
        pin_maps(&ebpf, &dir, &[("CONFIG", "config"), ("STATS", "stats")])?;
        let program = classifier(&mut ebpf, PROGRAM)?;
        attach_program(program, &dir, device, direction, uses_tcx(direction))
    }

    /// Loads a fresh copy of the steering classifier with `config`, attaches it at `hook` and
    /// pins it. In the ingress hook it redirects to the IFB; in a root qdisc it names
    /// `config.classid`.
    pub fn attach_steer(
        &self,
        id: &str,
        device: &str,
        hook: SteerHook,
        config: &SteerConfig,
    ) -> Result<(), TcError> {
        use std::os::fd::{AsFd as _, AsRawFd as _};

        use crate::kernel::qdisc::{BpfFilter, FilterAction, Netlink};

        let mut config = *config;
        config.filter.l2_len = l2_len(device)?;
        let (pinned, parent, priority, action) = match hook {
            SteerHook::Root(handle) => {
                config.mode = STEER_CLASSIFY;
                (
                    Hook::SteerRoot,
                    handle,
                    NETLINK_PRIORITY,
                    FilterAction::Classify,
                )
            }
            SteerHook::Ingress(ifindex) => {
                config.mode = STEER_MATCH;
                (
                    Hook::SteerIngress,
                    CLSACT_INGRESS,
                    STEER_INGRESS_PRIORITY,
                    FilterAction::Redirect { ifindex },
                )
            }
        };
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
                hook: pinned,
                device: device.to_owned(),
            }
            .pin_name(),
        );
        // Pinned first: the pin is what tells `detach` (and a start-up sweep) that a filter may
        // be attached.
        program.pin(&pin_path).map_err(|source| TcError::Pin {
            path: pin_path,
            source,
        })?;
        if pinned == Hook::SteerIngress {
            add_clsact(device)?;
        }
        let fd = program.fd().map_err(TcError::Program)?;
        let raw = fd.as_fd().as_raw_fd() as u32;
        let ifindex = nix::net::if_::if_nametoindex(device).map_err(|e| TcError::Io {
            what: "no such interface:",
            path: PathBuf::from(device),
            source: e.into(),
        })?;
        block_on(async {
            let nl = Netlink::open()?;
            nl.add_bpf_filter(
                device,
                ifindex,
                &BpfFilter {
                    parent,
                    priority,
                    prog_fd: raw,
                    name: STEER_PROGRAM,
                    action,
                },
            )
            .await
        })
        .map_err(|e| TcError::SteerFilter(Box::new(e)))
    }

    fn prepare(&self, id: &str) -> Result<PathBuf, TcError> {
        ensure_bpffs(&self.root)?;
        let dir = self.dir(id);
        fs::create_dir_all(&dir).map_err(|source| TcError::Io {
            what: "cannot create the pin directory",
            path: dir.clone(),
            source,
        })?;
        Ok(dir)
    }

    /// Detaches a fault's classifiers and removes its pins. Idempotent: a fault with nothing
    /// pinned any more is fine. The interface and hook come from the pin names, which also
    /// serves the start-up sweep, where no journal entry tells them.
    pub fn detach(&self, id: &str) -> Result<(), TcError> {
        let dir = self.dir(id);
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(source) => {
                return Err(TcError::Io {
                    what: "cannot read the pin directory",
                    path: dir,
                    source,
                })
            }
        };
        let mut names: Vec<String> = entries
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        // Attachments first, so the maps outlive the program that reads them.
        names.sort_by_key(|n| Attachment::from_pin_name(n).is_none());
        for name in names {
            let path = dir.join(&name);
            let Some(Attachment { hook, device }) = Attachment::from_pin_name(&name) else {
                remove_pin(&path)?;
                continue;
            };
            match hook {
                Hook::Tcx(_) => {
                    let link =
                        PinnedLink::from_pin(&path).map_err(|source| TcError::PinnedLink {
                            path: path.clone(),
                            source,
                        })?;
                    // Unpinning drops the last reference: the kernel detaches the link.
                    link.unpin().map_err(|source| TcError::Io {
                        what: "cannot unpin",
                        path: path.clone(),
                        source,
                    })?;
                }
                Hook::Cls(direction) => {
                    detach_filter(&device, direction, PROGRAM)?;
                    remove_pin(&path)?;
                    remove_idle_clsact(&device)?;
                }
                Hook::SteerIngress => {
                    detach_filter(&device, TcDirection::Ingress, STEER_PROGRAM)?;
                    remove_pin(&path)?;
                    remove_idle_clsact(&device)?;
                }
                Hook::SteerRoot => remove_pin(&path)?,
            }
        }
        match fs::remove_dir(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(TcError::Io {
                what: "cannot remove the pin directory",
                path: dir,
                source,
            }),
        }
    }

    /// Detaches every pinned classifier whose fault id is not in `keep`; returns their ids.
    pub fn sweep(&self, keep: &[&str]) -> Result<Vec<String>, TcError> {
        let entries = match fs::read_dir(&self.root) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(TcError::Io {
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
            self.detach(&id)?;
            swept.push(id);
        }
        swept.sort();
        Ok(swept)
    }
}

/// The agent's one loader of the classifiers' object. The classifiers read no kernel struct (no
/// CO-RE relocations in the object), so they need none of the kernel's BTF; yet every
/// `EbpfLoader::new` parses all of /sys/kernel/btf/vmlinux (`Ebpf::load` twice), which was most
/// of a shaping fault's apply. One loader parses it once, at the first fault, and drops it at
/// once (kept, it would hold about 20 MiB for the agent's life). The lock also serializes loads.
fn loader() -> MutexGuard<'static, EbpfLoader<'static>> {
    static LOADER: OnceLock<Mutex<EbpfLoader<'static>>> = OnceLock::new();
    LOADER
        .get_or_init(|| {
            let mut loader = EbpfLoader::new();
            loader.btf(None);
            // glibc keeps the freed parse (megabytes in small blocks) in its arenas; give it
            // back, or the agent's memory stays some 13 MiB higher after its first fault.
            // SAFETY: malloc_trim only releases free memory; it has no preconditions.
            unsafe { libc::malloc_trim(0) };
            Mutex::new(loader)
        })
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
}

/// A fresh copy of faultline's eBPF object with `program` loaded (verified by the kernel).
fn load_fresh(program: &'static str) -> Result<Ebpf, TcError> {
    let mut ebpf = loader().load(EBPF_OBJECT).map_err(TcError::Load)?;
    classifier(&mut ebpf, program)?
        .load()
        .map_err(verifier_error)?;
    Ok(ebpf)
}

/// Writes `config` into `map`'s single entry.
fn configure<T: aya::Pod>(ebpf: &mut Ebpf, map: &'static str, config: &T) -> Result<(), TcError> {
    let data = ebpf.map_mut(map).ok_or(TcError::Missing(map))?;
    let mut array: Array<_, T> = Array::try_from(data).map_err(TcError::Map)?;
    array.set(0, config, 0).map_err(TcError::Map)
}

fn pin_maps(ebpf: &Ebpf, dir: &Path, maps: &[(&'static str, &str)]) -> Result<(), TcError> {
    for (name, file) in maps {
        let map = ebpf.map(name).ok_or(TcError::Missing(name))?;
        let path = dir.join(file);
        map.pin(&path)
            .map_err(|source| TcError::Pin { path, source })?;
    }
    Ok(())
}

fn classifier<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut SchedClassifier, TcError> {
    ebpf.program_mut(name)
        .ok_or(TcError::Missing(name))?
        .try_into()
        .map_err(TcError::Program)
}

/// Attaches the loaded loss classifier to `direction` of `device`, through TCX or cls_bpf, and
/// pins what records the attachment.
fn attach_program(
    program: &mut SchedClassifier,
    dir: &Path,
    device: &str,
    direction: TcDirection,
    tcx: bool,
) -> Result<(), TcError> {
    let hook = if tcx {
        Hook::Tcx(direction)
    } else {
        Hook::Cls(direction)
    };
    let (attach_type, priority) = (direction.attach_type(), NETLINK_PRIORITY);
    let attach_error = |source| TcError::Attach {
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
        let link: FdLink = link.try_into().map_err(|source| TcError::PinnedLink {
            path: pin_path.clone(),
            source,
        })?;
        // The pin holds the link, and the link holds the attachment, once this process
        // has closed its descriptors.
        link.pin(&pin_path).map_err(|source| TcError::Pin {
            path: pin_path,
            source,
        })?;
        return Ok(());
    }
    // Pinned first: the pin is what tells `detach` (and a start-up sweep) that a filter may be
    // attached, so it must exist before the filter does.
    program.pin(&pin_path).map_err(|source| TcError::Pin {
        path: pin_path,
        source,
    })?;
    add_clsact(device)?;
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

/// Adds a clsact qdisc to `device` unless it has one.
fn add_clsact(device: &str) -> Result<(), TcError> {
    match aya_tc::qdisc_add_clsact(device) {
        Ok(()) => Ok(()),
        Err(aya_tc::TcError::NetlinkError(e)) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
        Err(source) => Err(TcError::Clsact {
            device: device.to_owned(),
            source,
        }),
    }
}

/// Removes faultline's cls_bpf filter `program` from a clsact hook; gone already is fine.
fn detach_filter(device: &str, direction: TcDirection, program: &str) -> Result<(), TcError> {
    match aya_tc::qdisc_detach_program(device, direction.attach_type(), program) {
        Ok(()) => Ok(()),
        // Already gone, or the interface itself is gone.
        Err(aya_tc::TcError::IoError(e))
            if matches!(e.kind(), io::ErrorKind::NotFound)
                || e.raw_os_error() == Some(libc::ENODEV) =>
        {
            Ok(())
        }
        Err(source) => Err(TcError::Detach {
            device: device.to_owned(),
            direction,
            source,
        }),
    }
}

/// Removes the clsact qdisc of `device` when no filter is left on either of its hooks.
///
/// faultline adds the qdisc when an interface has none, and a clsact without filters does
/// nothing, so taking it away leaves the interface as the fault found it. A qdisc that still
/// holds anyone's filter stays.
fn remove_idle_clsact(device: &str) -> Result<(), TcError> {
    use futures_util::TryStreamExt as _;
    use rtnetlink::packet_route::tc::{TcAttribute, TcHandle};

    let Ok(index) = nix::net::if_::if_nametoindex(device) else {
        // The interface went away, and its qdiscs with it.
        return Ok(());
    };
    let index = index as i32;
    let error = |source| TcError::Qdisc {
        device: device.to_owned(),
        source,
    };
    block_on(async {
        let (connection, handle, _) = rtnetlink::new_connection().map_err(|e| TcError::Io {
            what: "cannot open a route netlink socket for",
            path: PathBuf::from(device),
            source: e,
        })?;
        let task = tokio::spawn(connection);
        let result = async {
            for hook in [TcHandle::MIN_INGRESS, TcHandle::MIN_EGRESS] {
                let mut request = handle.traffic_filter(index).get();
                request = if hook == TcHandle::MIN_INGRESS {
                    request.ingress()
                } else {
                    request.egress()
                };
                let filters: Vec<_> = request.execute().try_collect().await.map_err(error)?;
                if !filters.is_empty() {
                    return Ok(());
                }
            }
            let mut delete = handle.qdisc().del(index);
            let message = delete.message_mut();
            message.header.parent = TcHandle::CLSACT;
            message.header.handle = TcHandle {
                major: 0xffff,
                minor: 0,
            };
            // Only a clsact: an `ingress` qdisc is somebody else's, and the kernel refuses a
            // delete whose kind does not match.
            message
                .attributes
                .push(TcAttribute::Kind("clsact".to_owned()));
            match delete.execute().await {
                Ok(()) => Ok(()),
                Err(rtnetlink::Error::NetlinkError(e))
                    if matches!(
                        e.raw_code().abs(),
                        libc::ENOENT | libc::EINVAL | libc::ENODEV
                    ) =>
                {
                    Ok(())
                }
                Err(e) => Err(error(e)),
            }
        }
        .await;
        task.abort();
        result
    })
}

/// Runs a netlink future from the synchronous adapters: on the agent's runtime when there is
/// one (the engine calls adapters from blocking sections), else on a runtime of its own.
pub fn block_on<T>(future: impl std::future::Future<Output = T>) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) => handle.block_on(future),
        Err(_) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("cannot build a tokio runtime")
            .block_on(future),
    }
}

fn remove_pin(path: &Path) -> Result<(), TcError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(TcError::Io {
            what: "cannot unpin",
            path: path.to_owned(),
            source,
        }),
    }
}

/// Makes sure `root` exists on a BPF filesystem, mounting bpffs at /sys/fs/bpf when the host
/// (or a fresh mount namespace) has not.
fn ensure_bpffs(root: &Path) -> Result<(), TcError> {
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
        .map_err(|e| TcError::Io {
            what: "cannot mount the BPF filesystem at",
            path: bpf_fs.to_owned(),
            source: e.into(),
        })?;
    }
    fs::create_dir_all(root).map_err(|source| TcError::Io {
        what: "cannot create the pin directory",
        path: root.to_owned(),
        source,
    })?;
    if !on_bpffs(root) {
        return Err(TcError::NotBpfFs {
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
            Hook::SteerIngress,
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

    #[test]
    fn config_carries_filters_and_threshold() {
        let c = loss_config(
            25.0,
            TcDirection::Ingress,
            L4Filter::Udp,
            &[(53, 53), (8000, 8100)],
            &["10.1.0.0/16".parse().unwrap(), "fd00::/8".parse().unwrap()],
            42,
        );
        assert_eq!(c.threshold, 1 << 30);
        let f = &c.filter;
        assert_eq!(
            (f.ingress, f.l4, f.n_ports, f.n_v4, f.n_v6),
            (1, L4_UDP, 2, 1, 1)
        );
        assert_eq!(f.v4[0].addr.to_ne_bytes(), [10, 1, 0, 0]);
        assert_eq!(f.v4[0].mask.to_ne_bytes(), [255, 255, 0, 0]);
        assert_eq!(f.v6[0].mask[0].to_ne_bytes(), [0xff, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(f.v6[0].mask[1], 0);
        assert_eq!(c.deadline_ns, 42);
        assert_eq!(
            loss_config(100.0, TcDirection::Egress, L4Filter::Any, &[], &[], 1).threshold,
            1 << 32
        );
    }
}
