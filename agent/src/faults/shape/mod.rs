//! The shaping families: netem (delay, jitter, loss, duplication, corruption, reordering, rate)
//! and rate (a tbf bandwidth cap), on egress or, through an IFB device, on ingress.
//!
//! Only the traffic a fault names is shaped. On egress, faultline's htb root holds the fault's
//! qdisc in a class of its own, and faultline's eBPF steering classifier sends the targeted
//! packets (protocol, ports, networks, the cgroup of the sending socket) to it; everything else
//! takes the default class, which does nothing. On ingress the same classifier redirects the
//! targeted packets to the fault's IFB device, whose root is the fault's qdisc. The classifier
//! stops steering at the deadline by itself, so the fault ends on time even if the agent dies.
//!
//! The interface's previous root qdisc is recorded (fsynced) before it is replaced and put back
//! exactly on revert; another tool's root is replaced only when the request says `force`.

use std::{os::unix::fs::MetadataExt as _, path::PathBuf, time::Duration};

use serde::{Deserialize, Serialize};

mod netem;
mod rate;

pub(crate) use self::{
    netem::{DelayDistribution, NetemParams},
    rate::RateParams,
};
use super::{
    Claim, Connection, Deadline, Demands, Direction, Family, Host, PacketMatch, Protocol, Target,
};
use crate::{
    errors::{EngineError, InvalidSpec, KernelError},
    kernel::{
        bpf::{
            config::{self as bpf_config, L4Filter, SteerConfig},
            SteerHook, TcDirection,
        },
        caps::{Capabilities, Capability},
        netdev,
        qdisc::{
            handle,
            shaping::{ifb_name, ShapingError},
            show_handle, Leaf, Prior, DEFAULT_MINOR, LEAF_MAJOR, ROOT_MAJOR, TARGET_MINOR,
        },
        rtnl::Rtnl,
        workload::{Workload, WorkloadError},
        Attempts,
    },
};

/// What a shaping fault applies to: one interface, one direction, the packets it names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct ShapeTarget {
    pub(crate) device: String,
    pub(crate) direction: Direction,
    #[serde(rename = "match", default)]
    pub(crate) matcher: PacketMatch,
    /// Only packets sent by sockets of this workload (its cgroup v2, found when the fault is
    /// applied); egress only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) workload: Option<Target>,
}

/// A shaping fault: where, and which qdisc does the shaping.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct ShapeSpec<P> {
    #[serde(flatten)]
    pub(crate) target: ShapeTarget,
    #[serde(flatten)]
    pub(crate) params: P,
}

pub(crate) type NetemSpec = ShapeSpec<NetemParams>;
pub(crate) type RateSpec = ShapeSpec<RateParams>;

/// What differs between the shaping families: the leaf qdisc and the words for it.
pub(crate) trait Shaper: Send + Sync {
    fn validate(&self) -> Result<(), InvalidSpec>;
    /// The kernel facility the leaf needs.
    fn needs(caps: &Capabilities) -> (&'static str, &Capability)
    where
        Self: Sized;
    fn leaf(&self) -> Leaf;
    /// `delay 100ms ± 10ms (normal), loss 1%`.
    fn describe(&self) -> String;
    /// Would every targeted packet be lost (and so a session cut)?
    fn cuts(&self) -> bool;
    /// The shares of packets it takes, for the policy's `max_percent`.
    fn percents(&self) -> Vec<(&'static str, f64)>;
}

pub(super) fn ms(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// `10mbit`, `1.5gbit`, as tc writes rates.
pub(crate) fn show_rate(bps: u64) -> String {
    let units = [
        (1_000_000_000, "gbit"),
        (1_000_000, "mbit"),
        (1_000, "kbit"),
    ];
    for (scale, unit) in units {
        if bps >= scale {
            let value = bps as f64 / scale as f64;
            return format!("{}{unit}", (value * 1000.0).round() / 1000.0);
        }
    }
    format!("{bps}bit")
}

/// The id the kernel gives the workload's cgroup v2 directory (its inode number), as
/// `bpf_skb_ancestor_cgroup_id` reports it for a socket in that cgroup or below it, and its
/// depth below the root.
fn cgroup_id(workload: &Workload) -> Result<(u64, u32), String> {
    let placement = workload.placements.iter().find(|p| p.v2).ok_or_else(|| {
        format!(
            "{} has no cgroup in a cgroup v2 hierarchy ({}); targeting a workload's traffic \
             needs its cgroup v2, where the kernel tells which cgroup a socket belongs to",
            workload.what,
            workload.where_()
        )
    })?;
    let level = placement.path.split('/').filter(|p| !p.is_empty()).count() as u32;
    std::fs::metadata(&placement.dir)
        .map(|meta| (meta.ino(), level))
        .map_err(|e| format!("{}: {e}", placement.dir.display()))
}

impl<P: Shaper> ShapeSpec<P> {
    fn tc_direction(&self) -> TcDirection {
        match self.target.direction {
            Direction::Ingress => TcDirection::Ingress,
            Direction::Egress => TcDirection::Egress,
        }
    }

    fn steer_config(
        &self,
        id: &str,
        deadline: Deadline,
        host: &Host<'_>,
    ) -> Result<SteerConfig, KernelError> {
        let m = &self.target.matcher;
        let mut config = SteerConfig::EMPTY;
        config.deadline_ns = bpf_config::monotonic_deadline_ns(deadline.remaining)?;
        config.filter = bpf_config::packet_filter(
            self.tc_direction(),
            match m.protocol {
                Protocol::Any => L4Filter::Any,
                Protocol::Tcp => L4Filter::Tcp,
                Protocol::Udp => L4Filter::Udp,
            },
            &m.ports
                .iter()
                .map(|r| (r.first, r.last))
                .collect::<Vec<_>>(),
            &m.cidrs,
        );
        if let Some(target) = &self.target.workload {
            // Validated before; a workload gone since is an error of the apply.
            let workload = target.resolve(id, host)?;
            (config.cgroup_id, config.cgroup_level) =
                cgroup_id(&workload).map_err(WorkloadError::NotFound)?;
        }
        Ok(config)
    }

    fn what(&self) -> String {
        let mut what = self.target.matcher.describe(self.target.direction);
        if let Some(target) = &self.target.workload {
            what.push_str(&format!(" from {target}"));
        }
        what
    }

    /// The root of the target interface now, and what replacing it would record.
    fn inspect(&self, host: &Host<'_>, ifindex: u32) -> Result<Prior, EngineError> {
        let admission = |e: ShapingError| EngineError::Apply {
            id: "(admission)".to_owned(),
            source: e.into(),
        };
        let rtnl = Rtnl::open().map_err(|e| admission(e.into()))?;
        let tree = host.shaping.tree(&rtnl, ifindex).map_err(admission)?;
        tree.prior(host.force)
            .map_err(|refusal| EngineError::Occupied {
                detail: refusal.message(&self.target.device),
            })
    }
}

fn describe_prior(prior: &Prior) -> String {
    match prior {
        Prior::KernelDefault { kind } => format!("{kind}, the kernel's default"),
        Prior::Installed(q) => format!("{}, installed by another tool", q.describe()),
    }
}

impl<P: Shaper + Serialize> Family for ShapeSpec<P> {
    fn validate(&self, host: &Host<'_>) -> Result<(), InvalidSpec> {
        self.params.validate()?;
        self.target.matcher.validate()?;
        netdev::check_exists(&self.target.device)?;
        netdev::l2_len(&self.target.device)?;
        if let Some(target) = &self.target.workload {
            if self.target.direction == Direction::Ingress {
                return Err(InvalidSpec::new(
                    target.field(),
                    "only egress traffic (--dir out) can be targeted by workload: a received \
                     packet is classified before any socket owns it",
                ));
            }
            let workload = target.check(host)?;
            cgroup_id(&workload).map_err(|e| InvalidSpec::new(target.field(), e))?;
        }
        Ok(())
    }

    fn missing_capability(&self, caps: &Capabilities) -> Option<(String, String)> {
        lacking::<P>(self.target.direction, caps)
    }

    fn admit(&self, host: &Host<'_>) -> Result<(), EngineError> {
        if self.target.direction == Direction::Ingress {
            return Ok(());
        }
        let ifindex = netdev::check_exists(&self.target.device).map_err(InvalidSpec::from)?;
        self.inspect(host, ifindex).map(|_| ())
    }

    fn claims(&self) -> Vec<Claim> {
        vec![match self.target.direction {
            Direction::Egress => Claim::RootQdisc {
                device: self.target.device.clone(),
            },
            Direction::Ingress => Claim::IngressShaper {
                device: self.target.device.clone(),
            },
        }]
    }

    fn may_touch_port(&self, local_port: u16) -> bool {
        self.params.cuts()
            && super::may_cut(self.target.direction, &self.target.matcher, local_port)
    }

    fn touches(&self, conn: &Connection) -> bool {
        if !self.params.cuts() {
            return false;
        }
        let dport = match self.target.direction {
            Direction::Ingress => conn.local.port(),
            Direction::Egress => conn.remote.port(),
        };
        self.target
            .matcher
            .matches(Protocol::Tcp, conn.remote.ip(), dport)
    }

    fn plan(&self, id: &str, deadline: Deadline, host: &Host<'_>) -> Vec<String> {
        let device = &self.target.device;
        let leaf = self.params.leaf();
        let what = format!(
            "{} for {}",
            self.params.describe(),
            humantime::format_duration(deadline.remaining)
        );
        let steer = |hook| {
            host.classifiers.describe_steer(
                id,
                device,
                hook,
                &format!("send {} to it", self.what()),
            )
        };
        match self.target.direction {
            Direction::Egress => {
                let root = handle(ROOT_MAJOR, 0);
                let prior = netdev::check_exists(device)
                    .ok()
                    .map(|ifindex| match self.inspect(host, ifindex) {
                        Ok(prior) => describe_prior(&prior),
                        Err(e) => format!("cannot be replaced: {e}"),
                    })
                    .unwrap_or_else(|| "unknown".to_owned());
                vec![
                    format!(
                        "record: {device}'s root qdisc now ({prior}), in {}",
                        host.shaping.record_path(id).display()
                    ),
                    format!(
                        "netlink: replace {device}'s root qdisc with htb {} (default class {}), \
                         in one request",
                        show_handle(root),
                        show_handle(handle(ROOT_MAJOR, DEFAULT_MINOR))
                    ),
                    format!(
                        "netlink: add htb classes {} (untargeted traffic) and {} (the fault's), \
                         neither limiting",
                        show_handle(handle(ROOT_MAJOR, DEFAULT_MINOR)),
                        show_handle(handle(ROOT_MAJOR, TARGET_MINOR))
                    ),
                    format!(
                        "netlink: add {} {} under {}: {what}",
                        leaf.kind,
                        show_handle(handle(LEAF_MAJOR, 0)),
                        show_handle(handle(ROOT_MAJOR, TARGET_MINOR))
                    ),
                    steer(SteerHook::Root(root)),
                    format!(
                        "revert: put the recorded root qdisc back on {device} in one request \
                         (the kernel's default: delete faultline's root)"
                    ),
                ]
            }
            Direction::Ingress => {
                let ifb = ifb_name(id);
                vec![
                    format!("netlink: create IFB device {ifb} and bring it up"),
                    format!(
                        "netlink: add {} {} as {ifb}'s root qdisc: {what}",
                        leaf.kind,
                        show_handle(handle(LEAF_MAJOR, 0))
                    ),
                    steer(SteerHook::Ingress(0)),
                    format!(
                        "revert: remove the classifier (and a clsact qdisc it leaves idle), \
                         delete {ifb}"
                    ),
                ]
            }
        }
    }

    fn apply(&self, id: &str, deadline: Deadline, host: &Host<'_>) -> Result<(), KernelError> {
        let device = &self.target.device;
        let leaf = self.params.leaf();
        let mut config = self.steer_config(id, deadline, host)?;
        match self.target.direction {
            Direction::Egress => {
                let ifindex = nix::net::if_::if_nametoindex(device.as_str()).map_err(|e| {
                    ShapingError::Io {
                        what: "no such interface:",
                        path: PathBuf::from(device),
                        source: e.into(),
                    }
                })?;
                let root = host
                    .shaping
                    .install_egress(id, device, ifindex, host.force, &leaf)?;
                config.classid = handle(ROOT_MAJOR, TARGET_MINOR);
                host.classifiers
                    .attach_steer(id, device, SteerHook::Root(root), &config)?;
            }
            Direction::Ingress => {
                let ifb_index = host.shaping.install_ingress(id, &leaf)?;
                host.classifiers.attach_steer(
                    id,
                    device,
                    SteerHook::Ingress(ifb_index),
                    &config,
                )?;
            }
        }
        Ok(())
    }

    fn watched(&self) -> bool {
        self.target.workload.is_some()
    }

    fn target_gone(&self, id: &str, host: &Host<'_>) -> Option<String> {
        Target::gone(id, host)
    }

    fn revert(&self, id: &str, host: &Host<'_>) -> Result<(), KernelError> {
        Target::release(id, host);
        match self.target.direction {
            Direction::Egress => {
                // Independent objects: each is tried whatever became of the other.
                let mut attempts = Attempts::default();
                attempts.note(host.shaping.restore_root(id));
                attempts.note(host.classifiers.detach(id));
                attempts.finish()
            }
            Direction::Ingress => {
                // The classifier first, and the IFB only once it is gone: packets redirected
                // to a missing device are dropped, worse than shaped. The classifier stops at
                // the deadline by itself, and the start-up sweep removes what is left.
                host.classifiers.detach(id)?;
                Ok(host.shaping.remove_ingress(id)?)
            }
        }
    }

    fn effect(&self, id: &str, host: &Host<'_>) -> Result<super::effect::Effect, KernelError> {
        let steered = host.classifiers.steered(id)?.unwrap_or_default();
        let egress = (self.target.direction == Direction::Egress).then_some(&*self.target.device);
        let leaf = host.shaping.leaf_stats(id, egress)?.unwrap_or_default();
        Ok(super::effect::Effect::new("packets steered")
            .hits(steered)
            .counter("packets_steered", steered)
            .counter("qdisc_packets_sent", leaf.packets)
            .counter("qdisc_bytes_sent", leaf.bytes)
            .counter("qdisc_packets_dropped", leaf.drops)
            .counter("qdisc_overlimits", leaf.overlimits)
            .counter("qdisc_backlog_bytes", leaf.backlog_bytes))
    }

    fn objects(&self, id: &str, host: &Host<'_>) -> Result<Vec<String>, KernelError> {
        let egress = (self.target.direction == Direction::Egress).then_some(&*self.target.device);
        let mut lines = host.shaping.objects(id, egress)?;
        lines.extend(host.classifiers.pins(id));
        Ok(lines)
    }

    fn demands(&self) -> Demands {
        Demands {
            percents: self.params.percents(),
            memory: None,
            disk: None,
        }
    }

    fn summary(&self) -> String {
        format!(
            "{} {} {} on {}",
            self.params.describe(),
            self.target.direction,
            self.what(),
            self.target.device
        )
    }
}

/// What a shaping fault in `direction` lacks on this host: `(feature, what to do instead)`.
fn lacking<P: Shaper>(direction: Direction, caps: &Capabilities) -> Option<(String, String)> {
    let (name, leaf) = P::needs(caps);
    if !leaf.available {
        // The capability's detail already says what works instead.
        return Some((name.to_owned(), leaf.detail.clone()));
    }
    let around = match direction {
        Direction::Egress => ("htb (sch_htb)", &caps.htb),
        Direction::Ingress => ("IFB devices (ifb)", &caps.ifb),
    };
    if !around.1.available {
        return Some((around.0.to_owned(), around.1.detail.clone()));
    }
    (!caps.cls_bpf.available).then(|| {
        (
            "eBPF tc classifiers".to_owned(),
            format!(
                "{}; shaping faults steer their traffic with one",
                caps.cls_bpf.detail
            ),
        )
    })
}

impl<P: Shaper + Serialize> super::readiness::Ready for ShapeSpec<P> {
    fn readiness(preflight: &super::readiness::Preflight<'_>) -> super::readiness::Readiness {
        use super::readiness::Readiness;
        use crate::kernel::preflight::Cap;
        if let Some(no) = Readiness::lacking(preflight.privileges, &[Cap::NetAdmin])
            .or_else(|| Readiness::lacking_bpf(preflight.privileges))
        {
            return no;
        }
        let (leaf, _) = P::needs(preflight.caps);
        match (
            lacking::<P>(Direction::Egress, preflight.caps),
            lacking::<P>(Direction::Ingress, preflight.caps),
        ) {
            (None, None) => Readiness::Works(format!("{leaf}, both directions")),
            (None, Some((feature, _))) => {
                Readiness::Works(format!("{leaf}, egress only: ingress needs {feature}"))
            }
            (Some((feature, _)), None) => {
                Readiness::Works(format!("{leaf}, ingress only: egress needs {feature}"))
            }
            (Some((feature, detail)), Some(_)) => Readiness::DoesNot {
                because: format!("{feature} is missing"),
                instead: detail,
            },
        }
    }
}
