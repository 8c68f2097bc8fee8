//! The shaping families: netem (delay, jitter, loss, duplication, corruption, reordering, rate)
//! and rate (a tbf bandwidth cap), on egress or ingress.
//!
//! Only the traffic a fault names is shaped. Each fault has an IFB device of its own whose root
//! qdisc is the fault's netem or tbf; faultline's eBPF steering classifier, in the interface's
//! clsact hook of the fault's direction, redirects the targeted packets (protocol, ports,
//! networks, and on egress the cgroup of the sending socket) to it. Everything else passes the
//! hook untouched: the interface's root qdisc stays whatever it was (the kernel's default,
//! another tool's, a multi-queue device's `mq`), so no `force` is needed and untargeted traffic
//! keeps its path. On egress the IFB sends the shaped packets back out of the interface; on
//! ingress it hands them to the stack. The classifier stops steering at the deadline by itself,
//! so the fault ends on time even if the agent dies.

use std::{os::unix::fs::MetadataExt as _, time::Duration};

use serde::{Deserialize, Serialize};

mod netem;
mod rate;

pub(crate) use self::{
    netem::{DelayDistribution, NetemParams},
    rate::RateParams,
};
use super::{
    Claim, Connection, Deadline, Demands, Direction, Ended, Family, Host, PacketMatch, Protocol,
    Target,
};
use crate::{
    errors::{InvalidSpec, KernelError},
    kernel::{
        bpf::{
            config::{self as bpf_config, L4Filter, SteerConfig},
            TcDirection,
        },
        caps::{Capabilities, Capability},
        netdev,
        qdisc::{handle, shaping::ifb_name, show_handle, Leaf, LEAF_MAJOR},
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
        lacking::<P>(caps)
    }

    fn claims(&self) -> Vec<Claim> {
        vec![match self.target.direction {
            Direction::Egress => Claim::EgressShaper {
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
        let ifb = ifb_name(id);
        let what = format!(
            "{} for {}",
            self.params.describe(),
            humantime::format_duration(deadline.remaining)
        );
        vec![
            format!("netlink: create IFB device {ifb} and bring it up"),
            format!(
                "netlink: add {} {} as {ifb}'s root qdisc: {what}",
                leaf.kind,
                show_handle(handle(LEAF_MAJOR, 0))
            ),
            host.classifiers.describe_steer(
                id,
                device,
                self.tc_direction(),
                &ifb,
                &format!("send {} to it", self.what()),
            ),
            format!("{device}'s root qdisc: left as it is; untargeted packets do not leave it"),
            format!(
                "revert: remove the classifier (and a clsact qdisc it leaves idle), delete {ifb}"
            ),
        ]
    }

    fn apply(&self, id: &str, deadline: Deadline, host: &Host<'_>) -> Result<(), KernelError> {
        let config = self.steer_config(id, deadline, host)?;
        let ifb = host.shaping.install(id, &self.params.leaf())?;
        host.classifiers.attach_steer(
            id,
            &self.target.device,
            self.tc_direction(),
            ifb,
            &config,
        )?;
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
        // The classifier first, and the IFB only once it is gone: packets redirected to a
        // missing device are dropped, worse than shaped. The classifier stops at the deadline
        // by itself, and the start-up sweep removes what is left.
        host.classifiers.detach(id)?;
        let mut attempts = Attempts::default();
        attempts.note(host.shaping.remove(id));
        // A fault an older agent applied on egress replaced the root and recorded what was
        // there; with no record (every fault of this agent) this does nothing.
        attempts.note(host.shaping.restore_root(id));
        attempts.finish()
    }

    fn end(&self, id: &str, host: &Host<'_>) -> Result<Ended, KernelError> {
        if host.shaping.record_path(id).exists() {
            // An older agent's fault replaced the root: only putting it back ends the effect.
            return self.revert(id, host).map(|()| Ended::Clean);
        }
        // Once its classifier steers nothing no packet reaches the IFB: that ends the fault.
        // Its deadline moved to the past does that with one map write; the classifier's detach
        // and the IFB's deletion (which waits in the kernel, tens of milliseconds, for the
        // device's unregistration) follow the answer, in `revert`.
        Target::release(id, host);
        match host.classifiers.expire(id) {
            Ok(true) => {}
            Ok(false) => host.classifiers.detach(id)?,
            Err(e) => {
                tracing::warn!(id, error = %e, "cannot end the steering classifier by its deadline; detaching it");
                host.classifiers.detach(id)?;
            }
        }
        Ok(Ended::CleanupLeft)
    }

    fn effect(&self, id: &str, host: &Host<'_>) -> Result<super::effect::Effect, KernelError> {
        let steered = host.classifiers.steered(id)?.unwrap_or_default();
        let leaf = host.shaping.leaf_stats(id)?.unwrap_or_default();
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
        let mut lines = host.shaping.objects(id)?;
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

/// What a shaping fault lacks on this host: `(feature, what to do instead)`. Both directions
/// need the same: the leaf qdisc, IFB devices and eBPF tc classifiers.
fn lacking<P: Shaper>(caps: &Capabilities) -> Option<(String, String)> {
    let (name, leaf) = P::needs(caps);
    if !leaf.available {
        // The capability's detail already says what works instead.
        return Some((name.to_owned(), leaf.detail.clone()));
    }
    if !caps.ifb.available {
        return Some(("IFB devices (ifb)".to_owned(), caps.ifb.detail.clone()));
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
        match lacking::<P>(preflight.caps) {
            None => Readiness::Works(format!("{leaf}, both directions")),
            Some((feature, detail)) => Readiness::DoesNot {
                because: format!("{feature} is missing"),
                instead: detail,
            },
        }
    }
}
