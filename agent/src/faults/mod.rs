//! The fault families and the one trait they implement. A family owns how its spec is checked
//! against the host, which kernel objects it needs exclusively, the plan it shows for a dry run,
//! and how it is applied and reverted through the kernel adapters. It owns no policy: deadlines,
//! conflicts, guards and the journal belong to the engine, which treats every family alike.

use std::{fmt, net::IpAddr, sync::Arc, time::Duration};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::{
    config::AgentConfig,
    errors::{InvalidSpec, KernelError},
    kernel::{
        bpf::Classifiers,
        caps::Capabilities,
        disk::Disks,
        freezer::Freezer,
        nft::Firewall,
        process::{Repeats, Signalled},
        qdisc::shaping::Shaping,
        workers::Workers,
        workload::Workloads,
        Adapter, Swept,
    },
};

pub(crate) mod block;
pub(crate) mod disk;
pub(crate) mod effect;
pub(crate) mod kill;
pub(crate) mod loss;
pub(crate) mod pause;
pub(crate) mod readiness;
pub(crate) mod shape;
pub(crate) mod stress;
pub(crate) mod target;

pub(crate) use block::BlockSpec;
pub(crate) use loss::LossSpec;
pub(crate) use shape::{NetemSpec, RateSpec};
pub(crate) use target::Target;

/// The most port ranges and CIDRs one fault may name: enough to describe a service, small
/// enough that the kernel objects stay a handful of rules and the eBPF filter a bounded loop.
pub(crate) const MAX_PORT_RANGES: usize = 16;
pub(crate) const MAX_CIDRS: usize = 8;

/// Which packets of the host a network fault is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Direction {
    /// Packets the host receives.
    Ingress,
    /// Packets the host sends.
    Egress,
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::Ingress => "in",
            Direction::Egress => "out",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Protocol {
    #[default]
    Any,
    Tcp,
    Udp,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Any => "any",
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        })
    }
}

/// An inclusive range of ports, never containing port 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct PortRange {
    pub(crate) first: u16,
    pub(crate) last: u16,
}

impl PortRange {
    /// Checks a range as a caller wrote it; `field` names it in the error.
    pub(crate) fn new(first: u32, last: u32, field: &str) -> Result<Self, InvalidSpec> {
        let check = |p: u32| {
            u16::try_from(p).ok().filter(|p| *p != 0).ok_or_else(|| {
                InvalidSpec::new(field, format!("{p} is out of range, expected 1-65535"))
            })
        };
        let (first, last) = (check(first)?, check(last)?);
        if first > last {
            return Err(InvalidSpec::new(
                field,
                format!("range {first}-{last} is reversed, expected first <= last"),
            ));
        }
        Ok(Self { first, last })
    }

    pub(crate) fn contains(&self, port: u16) -> bool {
        (self.first..=self.last).contains(&port)
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

/// Which packets a network fault touches; an empty list matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct PacketMatch {
    #[serde(default)]
    pub(crate) protocol: Protocol,
    /// Destination port of the packet in the fault's direction.
    #[serde(default)]
    pub(crate) ports: Vec<PortRange>,
    /// The remote side: destination on egress, source on ingress.
    #[serde(default)]
    pub(crate) cidrs: Vec<IpNet>,
}

impl PacketMatch {
    pub(crate) fn validate(&self) -> Result<(), InvalidSpec> {
        if self.ports.len() > MAX_PORT_RANGES {
            return Err(InvalidSpec::new(
                "port",
                format!(
                    "{} port ranges given, at most {MAX_PORT_RANGES} are accepted",
                    self.ports.len()
                ),
            ));
        }
        if self.cidrs.len() > MAX_CIDRS {
            return Err(InvalidSpec::new(
                "cidr",
                format!(
                    "{} CIDRs given, at most {MAX_CIDRS} are accepted",
                    self.cidrs.len()
                ),
            ));
        }
        Ok(())
    }

    /// Would a packet with this protocol, remote address and destination port match?
    pub(crate) fn matches(&self, protocol: Protocol, remote: IpAddr, dport: u16) -> bool {
        let proto_ok = self.protocol == Protocol::Any || self.protocol == protocol;
        let port_ok = self.ports.is_empty() || self.ports.iter().any(|r| r.contains(dport));
        let addr_ok = self.cidrs.is_empty() || self.cidrs.iter().any(|c| c.contains(&remote));
        proto_ok && port_ok && addr_ok
    }

    /// Could a TCP packet to `dport` (`None`: a port not known yet) match, whatever its remote
    /// address?
    pub(crate) fn may_match_tcp(&self, dport: Option<u16>) -> bool {
        let proto_ok = matches!(self.protocol, Protocol::Any | Protocol::Tcp);
        let port_ok = match dport {
            Some(port) => self.ports.is_empty() || self.ports.iter().any(|r| r.contains(port)),
            None => true,
        };
        proto_ok && port_ok
    }

    /// `tcp dport 80,8000-8100 from 10.0.0.0/8` -- for plans and messages.
    pub(crate) fn describe(&self, direction: Direction) -> String {
        let mut out = self.protocol.to_string();
        if !self.ports.is_empty() {
            let ports: Vec<String> = self.ports.iter().map(ToString::to_string).collect();
            out.push_str(&format!(" dport {}", ports.join(",")));
        }
        if !self.cidrs.is_empty() {
            let cidrs: Vec<String> = self.cidrs.iter().map(ToString::to_string).collect();
            let side = match direction {
                Direction::Ingress => "from",
                Direction::Egress => "to",
            };
            out.push_str(&format!(" {side} {}", cidrs.join(",")));
        }
        out
    }
}

/// A share of packets, in percent: `0 < p <= 100`.
pub(crate) fn check_percent(value: f64, field: &str) -> Result<f64, InvalidSpec> {
    if value.is_finite() && value > 0.0 && value <= 100.0 {
        Ok(value)
    } else {
        Err(InvalidSpec::new(
            field,
            format!("{value} is out of range, expected 0 < percent <= 100"),
        ))
    }
}

/// Durations as seconds (a float) in the journal and JSON output.
pub(crate) mod secs {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let secs = f64::deserialize(d)?;
        Duration::try_from_secs_f64(secs).map_err(serde::de::Error::custom)
    }
}

/// [`secs`] for optional durations.
pub(crate) mod opt_secs {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&d.as_secs_f64()),
            None => s.serialize_none(),
        }
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        Option::<f64>::deserialize(d)?
            .map(Duration::try_from_secs_f64)
            .transpose()
            .map_err(serde::de::Error::custom)
    }
}

/// Declares the fault families: one line each, `Variant(Spec) = "kind"`. This is the one list
/// of families; from it come the [`FaultSpec`] enum (whose serde tag is the kind, as the journal
/// and `faultline ls -o json` write it), [`FaultSpec::KINDS`] (the names a policy may list), and
/// the dispatch to each family's [`Family`] implementation.
macro_rules! families {
    ($($(#[$doc:meta])* $variant:ident($spec:ty) = $kind:literal,)*) => {
        /// What a fault does, one variant per family.
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        #[serde(tag = "kind")]
        pub(crate) enum FaultSpec {
            $($(#[$doc])* #[serde(rename = $kind)] $variant($spec),)*
        }

        impl FaultSpec {
            /// Every family's kind name, as requests, listings and policies name it.
            pub(crate) const KINDS: &'static [&'static str] = &[$($kind),*];

            pub(crate) fn family(&self) -> &dyn Family {
                match self {
                    $(FaultSpec::$variant(spec) => spec,)*
                }
            }

            /// Whether each family would work on this host, in the order of this list.
            pub(crate) fn readiness(
                preflight: &readiness::Preflight<'_>,
            ) -> Vec<(&'static str, readiness::Readiness)> {
                vec![$(($kind, <$spec as readiness::Ready>::readiness(preflight)),)*]
            }

            /// The family's kind name (`block`, `netem`, ...).
            pub(crate) fn kind(&self) -> &'static str {
                match self {
                    $(FaultSpec::$variant(_) => $kind,)*
                }
            }
        }
    };
}

families! {
    Block(BlockSpec) = "block",
    Loss(LossSpec) = "loss",
    CpuStress(stress::CpuStressSpec) = "cpu",
    MemoryStress(stress::MemoryStressSpec) = "memory",
    Netem(NetemSpec) = "netem",
    Rate(RateSpec) = "rate",
    DiskFill(disk::DiskFillSpec) = "disk_fill",
    DiskIo(disk::DiskIoSpec) = "disk_io",
    DiskSlow(disk::DiskSlowSpec) = "disk_slow",
    Kill(kill::KillSpec) = "kill",
    Pause(pause::PauseSpec) = "pause",
}

/// What a fault takes of the host, in the terms an operator's policy bounds.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Demands {
    /// Shares of packets or of CPU time, bounded by `max_percent`, each named as its CLI flag
    /// is (`loss percent`, `cpu load`).
    pub(crate) percents: Vec<(&'static str, f64)>,
    /// Bytes of memory, bounded by `max_memory`.
    pub(crate) memory: Option<u64>,
    /// Bytes of disk space, bounded by `max_disk`.
    pub(crate) disk: Option<u64>,
}

/// A kernel object that only one fault at a time may own; two faults claiming the same object
/// would fight over it, so the engine refuses the second.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Claim {
    /// The eBPF loss classifier slot of an interface's hook.
    LossHook {
        device: String,
        direction: Direction,
    },
    /// The egress steering classifier of an interface (egress shaping).
    EgressShaper { device: String },
    /// The ingress steering classifier of an interface (ingress shaping).
    IngressShaper { device: String },
    /// A cgroup's I/O limits on one disk (`MAJ:MIN`).
    IoLimits { cgroup: String, device: String },
    /// The freezer of a workload, as the request names it (the freezer adapter also refuses
    /// a cgroup another fault froze, however it was named).
    Pause { target: String },
}

impl fmt::Display for Claim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Claim::LossHook { device, direction } => {
                let hook = match direction {
                    Direction::Ingress => "ingress",
                    Direction::Egress => "egress",
                };
                write!(f, "the {hook} loss classifier on {device}")
            }
            Claim::EgressShaper { device } => {
                write!(f, "the egress shaping classifier on {device}")
            }
            Claim::IngressShaper { device } => {
                write!(f, "the ingress shaping classifier on {device}")
            }
            Claim::IoLimits { cgroup, device } => {
                write!(f, "the I/O limits of cgroup {cgroup} on {device}")
            }
            Claim::Pause { target } => write!(f, "the freezer of {target}"),
        }
    }
}

/// Could a fault in `direction` matching `matcher` touch a TCP connection on `local_port`? On
/// ingress the local port is the packets' destination; on egress the destination is the
/// remote port, unknown until the connection is looked up.
pub(crate) fn may_cut(direction: Direction, matcher: &PacketMatch, local_port: u16) -> bool {
    match direction {
        Direction::Ingress => matcher.may_match_tcp(Some(local_port)),
        Direction::Egress => matcher.may_match_tcp(None),
    }
}

/// An established TCP connection the safety guard protects, seen from this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Connection {
    pub(crate) local: std::net::SocketAddr,
    pub(crate) remote: std::net::SocketAddr,
}

/// The kernel adapters, built once for the agent's life. Families reach them through a
/// [`Host`]; the engine knows them only as a whole, to sweep at start-up.
pub(crate) struct Adapters {
    caps: Capabilities,
    firewall: Firewall,
    classifiers: Classifiers,
    shaping: Shaping,
    workers: Workers,
    disks: Disks,
    freezer: Freezer,
    workloads: Arc<Workloads>,
    repeats: Repeats,
    signalled: Arc<Signalled>,
    protected_ports: Vec<u16>,
    report: Arc<dyn Report>,
}

impl Adapters {
    pub(crate) fn new(config: &AgentConfig, caps: Capabilities) -> Self {
        Self {
            firewall: Firewall {
                available: caps.nftables.available,
            },
            classifiers: Classifiers::new(config.bpf_pin_dir.clone()),
            shaping: Shaping::new(&config.state_dir),
            workers: Workers::new(
                caps.cgroups.clone().map(|c| {
                    let c = c.with_parent(&config.cgroup_parent);
                    match &config.cgroup_home {
                        Some(home) => c.with_home(home.clone()),
                        None => c,
                    }
                }),
                config.memory_reserve,
                &config.state_dir,
            ),
            disks: Disks::new(
                &config.state_dir,
                config.state_reserve,
                caps.cgroups.clone(),
            ),
            freezer: Freezer::new(&config.state_dir),
            workloads: Arc::new(Workloads::new(&config.cgroup_parent)),
            repeats: Repeats::default(),
            signalled: Arc::default(),
            protected_ports: config.protected_ports.clone(),
            report: Arc::new(Unreported),
            caps,
        }
    }

    /// Where families' status lines go (the engine, which keeps them with the fault).
    pub(crate) fn with_report(mut self, report: Arc<dyn Report>) -> Self {
        self.report = report;
        self
    }

    pub(crate) fn caps(&self) -> &Capabilities {
        &self.caps
    }

    /// What a family works with for one request; `force` as the request said.
    pub(crate) fn host(&self, force: bool) -> Host<'_> {
        Host {
            classifiers: &self.classifiers,
            shaping: &self.shaping,
            workers: &self.workers,
            disks: &self.disks,
            freezer: &self.freezer,
            workloads: &self.workloads,
            repeats: &self.repeats,
            signalled: &self.signalled,
            protected_ports: &self.protected_ports,
            report: Arc::clone(&self.report),
            force,
        }
    }

    /// Prepares ahead, in the background, what the next fault's apply would otherwise wait
    /// for (the classifiers' spares). Called after an apply has answered, not during one: the
    /// preparation's CPU would slow the apply down.
    pub(crate) fn prepare_ahead(&self) {
        self.classifiers.prepare_ahead();
    }

    /// Sweeps every adapter in turn: each removes what belongs to no fault in `keep`. What
    /// pauses froze is thawed first; a classifier goes before the qdisc tree it steers into;
    /// I/O workers before the files they hold open.
    pub(crate) fn sweep(&self, keep: &[&str]) -> Swept {
        let adapters: [&dyn Adapter; 6] = [
            &self.freezer,
            &self.firewall,
            &self.workers,
            &self.disks,
            &self.classifiers,
            &self.shaping,
        ];
        let mut swept = Swept::default();
        for adapter in adapters {
            swept.extend(adapter.sweep(keep));
        }
        swept
    }
}

/// What families may use of the host while planning, applying and reverting.
pub(crate) struct Host<'a> {
    pub(crate) classifiers: &'a Classifiers,
    pub(crate) shaping: &'a Shaping,
    pub(crate) workers: &'a Workers,
    pub(crate) disks: &'a Disks,
    pub(crate) freezer: &'a Freezer,
    /// Finds the workloads faults are aimed at (see [`Target`]).
    pub(crate) workloads: &'a Arc<Workloads>,
    /// Actions a fault repeats every period (a kill `--every`).
    pub(crate) repeats: &'a Repeats,
    /// The processes each kill fault has signalled.
    pub(crate) signalled: &'a Arc<Signalled>,
    /// The local ports whose sessions the safety guard protects (unless `force`).
    pub(crate) protected_ports: &'a [u16],
    /// Where a family says what its fault found and did (an owned handle, for a family's own
    /// threads).
    pub(crate) report: Arc<dyn Report>,
    /// The request said to act on what the safety guard protects.
    pub(crate) force: bool,
}

/// Where a family reports what its fault found and did while it is applied and active (the
/// workload it resolved, the processes it signalled): the engine keeps the lines with the
/// fault (`faultline get` shows them), sends them to watchers and writes each to the audit log.
pub(crate) trait Report: Send + Sync {
    fn note(&self, id: &str, line: String);
}

/// Reports nowhere: adapters built without an engine (tests, `faultline info`).
struct Unreported;

impl Report for Unreported {
    fn note(&self, _id: &str, _line: String) {}
}

/// When a fault stops by itself.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Deadline {
    /// Time left from the moment the fault is applied.
    pub(crate) remaining: Duration,
}

/// What [`Family::end`] left of a fault whose effect it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ended {
    /// Nothing: the fault's objects are gone.
    Clean,
    /// Objects that no longer act (an emptied chain, its table, a cgroup whose processes were
    /// killed): the engine runs [`Family::revert`] for them after it has answered, with the
    /// fault still journalled until they are gone.
    CleanupLeft,
}

/// One fault family. The engine calls these in order: `validate`, `claims`, `plan`, then
/// `apply`, and `end` at the end, then `revert` if `end` left clean-up (`revert` alone after
/// a crash, on a spec read back from the journal, and on a retry).
pub(crate) trait Family: Send + Sync {
    /// Semantic checks against the host (devices exist, combinations make sense), before
    /// anything is touched. Field-level parsing already happened at the API edge.
    fn validate(&self, host: &Host<'_>) -> Result<(), InvalidSpec>;

    /// A kernel facility this family needs and the host lacks: `(feature, what to do instead)`.
    fn missing_capability(&self, _caps: &Capabilities) -> Option<(String, String)> {
        None
    }

    /// Conditions of the host at this moment that refuse a valid request: a missing cgroup
    /// controller, the memory reserve. Checked after `validate`, before anything is touched.
    fn admit(&self, _host: &Host<'_>) -> Result<(), crate::errors::EngineError> {
        Ok(())
    }

    /// Kernel objects this fault takes for itself.
    fn claims(&self) -> Vec<Claim>;

    /// Would the fault touch this connection's packets (in its direction)?
    fn touches(&self, conn: &Connection) -> bool;

    /// Could the fault touch some TCP connection on this local port, whatever its remote end?
    /// `false` spares the guard listing connections, which walks the kernel's whole TCP hash
    /// table (milliseconds on a large host, even with few sockets). The safe answer is `true`.
    fn may_touch_port(&self, _local_port: u16) -> bool {
        true
    }

    /// The kernel operations, one line each, for a dry run and for the record.
    fn plan(&self, id: &str, deadline: Deadline, host: &Host<'_>) -> Vec<String>;

    /// Creates the fault's kernel objects; on error, whatever was created is removed again.
    fn apply(&self, id: &str, deadline: Deadline, host: &Host<'_>) -> Result<(), KernelError>;

    /// Removes the fault's kernel objects. Idempotent: objects already gone are not an error.
    fn revert(&self, id: &str, host: &Host<'_>) -> Result<(), KernelError>;

    /// Ends the fault's effect as soon as the kernel allows, leaving for later what does not
    /// end it (what waits on the kernel: an RCU grace period, processes exiting, a directory's
    /// removal). The engine answers a revert once this returns, and then runs
    /// [`Family::revert`] if [`Ended::CleanupLeft`]. The default is the whole revert.
    fn end(&self, id: &str, host: &Host<'_>) -> Result<Ended, KernelError> {
        self.revert(id, host).map(|()| Ended::Clean)
    }

    /// What the fault has done so far, read from its kernel objects' own counters (an
    /// applied fault's; a reverted one's objects and counters are gone). Required: a family
    /// shows its effect, or an operator cannot tell a fault that acted from one that did not.
    fn effect(&self, id: &str, host: &Host<'_>) -> Result<effect::Effect, KernelError>;

    /// The fault's kernel objects as they are now, one line each (`nftables chain inet
    /// faultline fl-<id>-in: 2 rule(s)`, `bpf pin ...`, `cgroup ...`), read from the kernel.
    /// The engine compares readings while the fault runs (a change behind faultline's back is
    /// reported) and after its revert (whatever is left is residue). Required: a family whose
    /// revert cannot be verified could leave things behind unseen.
    fn objects(&self, id: &str, host: &Host<'_>) -> Result<Vec<String>, KernelError>;
    /// Whether the fault acts on something that may disappear while it is active (a workload):
    /// the engine then asks [`Family::target_gone`] every second.
    fn watched(&self) -> bool {
        false
    }

    /// Why what the fault acts on is gone, if it is; the engine then reverts the fault with
    /// reason `target gone: <this>`. Asked only of [`Family::watched`] families, off the async
    /// runtime; it must be cheap (a few reads of /proc and /sys).
    fn target_gone(&self, _id: &str, _host: &Host<'_>) -> Option<String> {
        None
    }

    /// What the fault takes of the host, for the operator policy's limits (`max_percent`,
    /// `max_memory`, `max_disk`; `max_duration` bounds every request alike). Required: a new family says
    /// what it takes, even when that is nothing a limit bounds.
    fn demands(&self) -> Demands;

    /// One line for humans: `block in tcp dport 22 (drop)`.
    fn summary(&self) -> String;
}
