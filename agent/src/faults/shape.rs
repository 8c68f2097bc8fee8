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

use super::{Claim, Connection, Deadline, Direction, Family, Host, PacketMatch, Protocol};
use crate::{
    errors::{EngineError, InvalidSpec, KernelError},
    kernel::{
        caps::{Capabilities, Capability},
        netdev,
        qdisc::{
            self, handle, show_handle, HtbParts, Leaf, Netlink, Prior, Record, Refusal,
            DEFAULT_MINOR, IFB_PREFIX, LEAF_MAJOR, ROOT_MAJOR, TARGET_MINOR,
        },
        qdisc_opts::{Distribution, HtbClassOptions, HtbQdiscOptions, NetemOptions, TbfOptions},
        tc::{self, SteerConfig, SteerHook},
    },
};

/// Longest delay (and jitter) accepted: beyond this a "delay" is an outage, which `block` does
/// more honestly.
const MAX_DELAY: Duration = Duration::from_secs(60);
/// htb classes of faultline's tree are meant never to limit: 400 Gbit/s is more than any link.
const UNLIMITED_BYTES_PER_SEC: u64 = 50_000_000_000;

/// What a shaping fault applies to: one interface, one direction, the packets it names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShapeTarget {
    pub device: String,
    pub direction: Direction,
    #[serde(rename = "match", default)]
    pub matcher: PacketMatch,
    /// Only packets sent by sockets in this cgroup (a cgroup v2 path, relative to the cgroup2
    /// mount, such as `system.slice/nginx.service`); egress only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
}

/// netem parameters; percentages are `0..=100`, 0 meaning "not set".
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct NetemParams {
    #[serde(with = "super::secs")]
    pub delay: Duration,
    #[serde(with = "super::secs")]
    pub jitter: Duration,
    pub delay_correlation: f64,
    pub distribution: DelayDistribution,
    pub loss: f64,
    pub loss_correlation: f64,
    pub duplicate: f64,
    pub duplicate_correlation: f64,
    pub corrupt: f64,
    pub corrupt_correlation: f64,
    pub reorder: f64,
    pub reorder_correlation: f64,
    /// Reorder every `gap`-th packet instead of at random.
    pub gap: u32,
    /// netem's own rate limit, bits per second.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_bps: Option<u64>,
    /// Packets the qdisc holds; 0: netem's default, 1000.
    pub limit: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DelayDistribution {
    #[default]
    Uniform,
    Normal,
    Pareto,
    Paretonormal,
}

/// A bandwidth cap with tbf.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RateParams {
    /// Bits per second.
    pub rate_bps: u64,
    /// Bytes that may pass at once; unset: 20 ms worth of the rate, at least 16 KiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
    /// Longest a packet may wait before it is dropped; unset: 50 ms.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "super::opt_secs"
    )]
    pub latency: Option<Duration>,
}

/// A shaping fault: where, and which qdisc does the shaping.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShapeSpec<P> {
    #[serde(flatten)]
    pub target: ShapeTarget,
    #[serde(flatten)]
    pub params: P,
}

pub type NetemSpec = ShapeSpec<NetemParams>;
pub type RateSpec = ShapeSpec<RateParams>;

/// What differs between the shaping families: the leaf qdisc and the words for it.
pub trait Shaper: Send + Sync {
    fn validate(&self) -> Result<(), InvalidSpec>;
    /// The kernel facility the leaf needs.
    fn needs<'a>(&self, caps: &'a Capabilities) -> (&'static str, &'a Capability);
    fn leaf(&self) -> Leaf;
    /// `delay 100ms ± 10ms (normal), loss 1%`.
    fn describe(&self) -> String;
    /// Would every targeted packet be lost (and so a session cut)?
    fn cuts(&self) -> bool;
}

fn check_share(value: f64, field: &str) -> Result<(), InvalidSpec> {
    if value.is_finite() && (0.0..=100.0).contains(&value) {
        Ok(())
    } else {
        Err(InvalidSpec::new(
            field,
            format!("{value} is out of range, expected a percentage 0-100"),
        ))
    }
}

fn ms(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// `10mbit`, `1.5gbit`, as tc writes rates.
pub fn show_rate(bps: u64) -> String {
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

impl Shaper for NetemParams {
    fn validate(&self) -> Result<(), InvalidSpec> {
        for (value, field) in [
            (self.delay_correlation, "delay-correlation"),
            (self.loss, "loss"),
            (self.loss_correlation, "loss-correlation"),
            (self.duplicate, "duplicate"),
            (self.duplicate_correlation, "duplicate-correlation"),
            (self.corrupt, "corrupt"),
            (self.corrupt_correlation, "corrupt-correlation"),
            (self.reorder, "reorder"),
            (self.reorder_correlation, "reorder-correlation"),
        ] {
            check_share(value, field)?;
        }
        for (value, field) in [(self.delay, "delay"), (self.jitter, "jitter")] {
            if value > MAX_DELAY {
                return Err(InvalidSpec::new(
                    field,
                    format!(
                        "{} is too long, at most {} is accepted",
                        ms(value),
                        ms(MAX_DELAY)
                    ),
                ));
            }
        }
        if !self.jitter.is_zero() && self.delay.is_zero() {
            return Err(InvalidSpec::new(
                "jitter",
                "jitter varies a delay: give --delay as well",
            ));
        }
        if self.distribution != DelayDistribution::Uniform && self.jitter.is_zero() {
            return Err(InvalidSpec::new(
                "distribution",
                "a delay distribution shapes the jitter: give --jitter as well",
            ));
        }
        if self.reorder > 0.0 && self.delay.is_zero() {
            return Err(InvalidSpec::new(
                "reorder",
                "netem reorders by sending some packets at once while the others wait: give \
                 --delay as well",
            ));
        }
        if self.gap > 0 && self.reorder == 0.0 {
            return Err(InvalidSpec::new(
                "gap",
                "a gap spaces reordering: give --reorder as well",
            ));
        }
        if self.rate_bps == Some(0) {
            return Err(InvalidSpec::new(
                "rate",
                "0 is not a rate, expected e.g. 10mbit",
            ));
        }
        if self.limit > 1_000_000 {
            return Err(InvalidSpec::new(
                "limit",
                format!(
                    "{} packets is too many, at most 1000000 are accepted",
                    self.limit
                ),
            ));
        }
        let nothing = self.delay.is_zero()
            && self.loss == 0.0
            && self.duplicate == 0.0
            && self.corrupt == 0.0
            && self.rate_bps.is_none();
        if nothing {
            return Err(InvalidSpec::new(
                "netem",
                "nothing to do: give at least one of delay, loss, duplicate, corrupt, rate",
            ));
        }
        Ok(())
    }

    fn needs<'a>(&self, caps: &'a Capabilities) -> (&'static str, &'a Capability) {
        ("netem (sch_netem)", &caps.netem)
    }

    fn leaf(&self) -> Leaf {
        let options = NetemOptions {
            limit: self.limit,
            delay: self.delay,
            jitter: self.jitter,
            delay_correlation: self.delay_correlation,
            distribution: match self.distribution {
                DelayDistribution::Uniform => Distribution::Uniform,
                DelayDistribution::Normal => Distribution::Normal,
                DelayDistribution::Pareto => Distribution::Pareto,
                DelayDistribution::Paretonormal => Distribution::ParetoNormal,
            },
            loss: self.loss,
            loss_correlation: self.loss_correlation,
            duplicate: self.duplicate,
            duplicate_correlation: self.duplicate_correlation,
            corrupt: self.corrupt,
            corrupt_correlation: self.corrupt_correlation,
            reorder: self.reorder,
            reorder_correlation: self.reorder_correlation,
            gap: self.gap,
            rate_bytes_per_sec: self.rate_bps.map(|b| b / 8),
        };
        Leaf {
            kind: "netem",
            options: options.encode(),
        }
    }

    fn describe(&self) -> String {
        let mut parts = Vec::new();
        let corr = |c: f64| {
            if c > 0.0 {
                format!(" (correlation {c}%)")
            } else {
                String::new()
            }
        };
        if !self.delay.is_zero() {
            let mut d = format!("delay {}", ms(self.delay));
            if !self.jitter.is_zero() {
                d.push_str(&format!(" ± {}", ms(self.jitter)));
                if self.distribution != DelayDistribution::Uniform {
                    d.push_str(&format!(" {:?}", self.distribution).to_lowercase());
                }
            }
            d.push_str(&corr(self.delay_correlation));
            parts.push(d);
        }
        for (value, c, name) in [
            (self.loss, self.loss_correlation, "loss"),
            (self.duplicate, self.duplicate_correlation, "duplicate"),
            (self.corrupt, self.corrupt_correlation, "corrupt"),
            (self.reorder, self.reorder_correlation, "reorder"),
        ] {
            if value > 0.0 {
                parts.push(format!("{name} {value}%{}", corr(c)));
            }
        }
        if self.gap > 0 {
            parts.push(format!("gap {}", self.gap));
        }
        if let Some(rate) = self.rate_bps {
            parts.push(format!("rate {}", show_rate(rate)));
        }
        if self.limit > 0 {
            parts.push(format!("limit {}", self.limit));
        }
        parts.join(", ")
    }

    fn cuts(&self) -> bool {
        self.loss >= 100.0
    }
}

impl RateParams {
    fn bytes_per_sec(&self) -> u64 {
        (self.rate_bps / 8).max(1)
    }

    fn burst_bytes(&self) -> u32 {
        self.burst.unwrap_or_else(|| {
            (self.bytes_per_sec() / 50).clamp(16 << 10, u64::from(u32::MAX)) as u32
        })
    }

    fn latency(&self) -> Duration {
        self.latency.unwrap_or(Duration::from_millis(50))
    }
}

impl Shaper for RateParams {
    fn validate(&self) -> Result<(), InvalidSpec> {
        if self.rate_bps < 8 {
            return Err(InvalidSpec::new(
                "rate",
                format!("{}bit/s is too slow, expected at least 8bit", self.rate_bps),
            ));
        }
        if let Some(burst) = self.burst {
            if burst < 1600 {
                return Err(InvalidSpec::new(
                    "burst",
                    format!("{burst} bytes cannot pass a full-size packet, expected at least 1600"),
                ));
            }
        }
        if let Some(latency) = self.latency {
            if latency.is_zero() || latency > Duration::from_secs(10) {
                return Err(InvalidSpec::new(
                    "latency",
                    format!("{} is out of range, expected 1ms to 10s", ms(latency)),
                ));
            }
        }
        Ok(())
    }

    fn needs<'a>(&self, caps: &'a Capabilities) -> (&'static str, &'a Capability) {
        ("tbf (sch_tbf)", &caps.tbf)
    }

    fn leaf(&self) -> Leaf {
        Leaf {
            kind: "tbf",
            options: TbfOptions {
                rate_bytes_per_sec: self.bytes_per_sec(),
                burst_bytes: self.burst_bytes(),
                latency: self.latency(),
                mtu: 0,
            }
            .encode(),
        }
    }

    fn describe(&self) -> String {
        format!(
            "rate {} (burst {} bytes, latency {})",
            show_rate(self.rate_bps),
            self.burst_bytes(),
            ms(self.latency())
        )
    }

    fn cuts(&self) -> bool {
        false
    }
}

/// The two htb pieces of faultline's egress tree.
fn htb_parts() -> HtbParts {
    HtbParts {
        qdisc: HtbQdiscOptions {
            default_minor: u32::from(DEFAULT_MINOR),
        }
        .encode(),
        class: HtbClassOptions {
            rate_bytes_per_sec: UNLIMITED_BYTES_PER_SEC,
            ceil_bytes_per_sec: UNLIMITED_BYTES_PER_SEC,
            burst_bytes: 256 << 10,
            cburst_bytes: 256 << 10,
            // htb's own upper bound without complaints in the kernel log.
            quantum: 200_000,
            prio: 0,
        }
        .encode(),
    }
}

/// The IFB device of an ingress fault.
pub fn ifb_name(id: &str) -> String {
    format!("{IFB_PREFIX}{id}")
}

/// The cgroup v2 hierarchy's mount point, from /proc/self/mountinfo.
fn cgroup2_mount() -> Option<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    text.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        (right.split_whitespace().next()? == "cgroup2")
            .then(|| left.split_whitespace().nth(4).map(PathBuf::from))
            .flatten()
    })
}

/// The id the kernel gives a cgroup v2 directory (its inode number), as `bpf_skb_cgroup_id`
/// reports it for a socket in that cgroup.
fn cgroup_id(path: &str) -> Result<u64, InvalidSpec> {
    let mount = cgroup2_mount().ok_or_else(|| {
        InvalidSpec::new(
            "cgroup",
            "this host has no cgroup v2 hierarchy mounted; targeting a cgroup needs it",
        )
    })?;
    let relative = path.trim_start_matches('/');
    let dir = mount.join(relative);
    let meta = std::fs::metadata(&dir).map_err(|e| {
        InvalidSpec::new(
            "cgroup",
            format!(
                "{path:?}: no such cgroup v2 directory {} ({e}); expected a path below {}, as \
                 in the 0:: line of /proc/<pid>/cgroup",
                dir.display(),
                mount.display()
            ),
        )
    })?;
    if !meta.is_dir() || relative.split('/').any(|p| p == "..") {
        return Err(InvalidSpec::new(
            "cgroup",
            format!(
                "{path:?} is not a cgroup directory below {}",
                mount.display()
            ),
        ));
    }
    Ok(meta.ino())
}

impl<P: Shaper> ShapeSpec<P> {
    fn tc_direction(&self) -> tc::TcDirection {
        match self.target.direction {
            Direction::Ingress => tc::TcDirection::Ingress,
            Direction::Egress => tc::TcDirection::Egress,
        }
    }

    fn steer_config(&self, deadline: Deadline) -> Result<SteerConfig, KernelError> {
        let m = &self.target.matcher;
        let mut config = SteerConfig::EMPTY;
        config.deadline_ns = tc::monotonic_deadline_ns(deadline.remaining)?;
        config.filter = tc::packet_filter(
            self.tc_direction(),
            match m.protocol {
                Protocol::Any => tc::L4Filter::Any,
                Protocol::Tcp => tc::L4Filter::Tcp,
                Protocol::Udp => tc::L4Filter::Udp,
            },
            &m.ports
                .iter()
                .map(|r| (r.first, r.last))
                .collect::<Vec<_>>(),
            &m.cidrs,
        );
        if let Some(cgroup) = &self.target.cgroup {
            // Validated before; a cgroup removed since is an error of the apply.
            config.cgroup_id = cgroup_id(cgroup).map_err(|e| {
                KernelError::from(qdisc::QdiscError::Io {
                    what: "the target cgroup is gone:",
                    path: PathBuf::from(cgroup),
                    source: std::io::Error::new(std::io::ErrorKind::NotFound, e.reason),
                })
            })?;
        }
        Ok(config)
    }

    fn what(&self) -> String {
        let mut what = self.target.matcher.describe(self.target.direction);
        if let Some(cgroup) = &self.target.cgroup {
            what.push_str(&format!(" from cgroup {cgroup}"));
        }
        what
    }

    /// The root of the target interface now, and what replacing it would record.
    fn inspect(&self, nl: &Netlink, ifindex: u32, force: bool) -> Result<Prior, EngineError> {
        let tree = tc::block_on(nl.tree(ifindex)).map_err(|e| EngineError::Apply {
            id: "(admission)".to_owned(),
            source: e.into(),
        })?;
        tree.prior(force).map_err(|refusal| EngineError::Occupied {
            detail: refusal_message(&self.target.device, &refusal),
        })
    }
}

fn refusal_message(device: &str, refusal: &Refusal) -> String {
    match refusal {
        Refusal::Ours(root) => format!(
            "{device}'s root qdisc is faultline's own ({}) but no active fault holds it: \
             restart the agent to sweep it",
            root.describe()
        ),
        Refusal::Foreign(root) => format!(
            "{device}'s root qdisc {} was installed by another tool; pass --force (force: true) \
             to replace it for the fault's duration (it is restored exactly on revert)",
            root.describe()
        ),
        Refusal::Tree { root, children } => {
            let kids: Vec<String> = children.iter().map(|c| c.describe()).collect();
            format!(
                "{device}'s root qdisc {} holds a tree (classes or child qdiscs{}{}) that \
                 faultline could not restore exactly, so it does not replace it, even with \
                 force; shape another interface, or remove that tree first",
                root.describe(),
                if kids.is_empty() { "" } else { ": " },
                kids.join(", ")
            )
        }
    }
}

fn describe_prior(prior: &Prior) -> String {
    match prior {
        Prior::KernelDefault { kind } => format!("{kind}, the kernel's default"),
        Prior::Installed(q) => format!("{}, installed by another tool", q.describe()),
    }
}

impl<P: Shaper + Serialize> Family for ShapeSpec<P> {
    fn validate(&self, _host: &Host<'_>) -> Result<(), InvalidSpec> {
        self.params.validate()?;
        self.target.matcher.validate()?;
        netdev::check_exists(&self.target.device)?;
        tc::l2_len(&self.target.device).map_err(|e| InvalidSpec::new("dev", e.to_string()))?;
        if let Some(cgroup) = &self.target.cgroup {
            if self.target.direction == Direction::Ingress {
                return Err(InvalidSpec::new(
                    "cgroup",
                    "only egress traffic (--dir out) can be targeted by cgroup: a received \
                     packet is classified before any socket owns it",
                ));
            }
            cgroup_id(cgroup)?;
        }
        Ok(())
    }

    fn missing_capability(&self, caps: &Capabilities) -> Option<(String, String)> {
        let (name, leaf) = self.params.needs(caps);
        if !leaf.available {
            // The capability's detail already says what works instead.
            return Some((name.to_owned(), leaf.detail.clone()));
        }
        let around = match self.target.direction {
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

    fn admit(&self, host: &Host<'_>) -> Result<(), EngineError> {
        if self.target.direction == Direction::Ingress {
            return Ok(());
        }
        let ifindex = netdev::check_exists(&self.target.device)?;
        let nl = Netlink::open().map_err(|e| EngineError::Apply {
            id: "(admission)".to_owned(),
            source: e.into(),
        })?;
        self.inspect(&nl, ifindex, host.force).map(|_| ())
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
                    .and_then(|ifindex| {
                        let nl = Netlink::open().ok()?;
                        Some(match self.inspect(&nl, ifindex, host.force) {
                            Ok(prior) => describe_prior(&prior),
                            Err(e) => format!("cannot be replaced: {e}"),
                        })
                    })
                    .unwrap_or_else(|| "unknown".to_owned());
                vec![
                    format!(
                        "record: {device}'s root qdisc now ({prior}), in {}",
                        host.qdisc_records.path(id).display()
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
        let mut config = self.steer_config(deadline)?;
        let nl = Netlink::open()?;
        match self.target.direction {
            Direction::Egress => {
                let ifindex = nix::net::if_::if_nametoindex(device.as_str())
                    .map_err(|_| qdisc::QdiscError::NoDevice(device.clone()))?;
                let prior =
                    tc::block_on(nl.tree(ifindex))?
                        .prior(host.force)
                        .map_err(|refusal| qdisc::QdiscError::Io {
                            what: "the root qdisc changed since admission:",
                            path: PathBuf::from(device),
                            source: std::io::Error::other(refusal_message(device, &refusal)),
                        })?;
                // Recorded before the root is touched: a crash from here on is reverted from it.
                host.qdisc_records.save(
                    id,
                    &Record {
                        device: device.clone(),
                        prior,
                    },
                )?;
                let root = handle(ROOT_MAJOR, 0);
                let target = handle(ROOT_MAJOR, TARGET_MINOR);
                let htb = htb_parts();
                tc::block_on(async {
                    nl.replace_root(device, ifindex, "htb", root, &htb.qdisc)
                        .await?;
                    for minor in [DEFAULT_MINOR, TARGET_MINOR] {
                        nl.add_class(device, ifindex, root, handle(ROOT_MAJOR, minor), &htb.class)
                            .await?;
                    }
                    nl.add_qdisc(device, ifindex, target, handle(LEAF_MAJOR, 0), &leaf)
                        .await
                })?;
                config.classid = target;
                host.classifiers
                    .attach_steer(id, device, SteerHook::Root(root), &config)?;
            }
            Direction::Ingress => {
                let ifb = ifb_name(id);
                let ifb_index = tc::block_on(async {
                    let index = nl.create_ifb(&ifb).await?;
                    nl.replace_root(&ifb, index, leaf.kind, handle(LEAF_MAJOR, 0), &leaf.options)
                        .await?;
                    Ok::<_, qdisc::QdiscError>(index)
                })?;
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

    fn revert(&self, id: &str, host: &Host<'_>) -> Result<(), KernelError> {
        let nl = Netlink::open()?;
        match self.target.direction {
            Direction::Egress => {
                restore_root(&nl, id, host)?;
                host.classifiers.detach(id)?;
            }
            Direction::Ingress => {
                // The classifier first, so no packet is redirected to a device that is going.
                host.classifiers.detach(id)?;
                tc::block_on(nl.delete_link(&ifb_name(id)))?;
            }
        }
        Ok(())
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

/// Puts back the root qdisc recorded for fault `id`, if faultline's root is still there, and
/// forgets the record. Used by revert and by the start-up sweep.
pub fn restore_root(nl: &Netlink, id: &str, host: &Host<'_>) -> Result<(), KernelError> {
    let Some(record) = host.qdisc_records.load(id)? else {
        // Never recorded: the root was never replaced.
        return Ok(());
    };
    let device = &record.device;
    if let Ok(ifindex) = nix::net::if_::if_nametoindex(device.as_str()) {
        let tree = tc::block_on(nl.tree(ifindex))?;
        match tree.root.filter(|root| qdisc::is_ours(root.handle)) {
            Some(ours) => tc::block_on(async {
                match &record.prior {
                    Prior::KernelDefault { .. } => {
                        nl.delete_root(device, ifindex, ours.handle).await
                    }
                    Prior::Installed(q) => {
                        nl.replace_root(device, ifindex, &q.kind, q.handle, &q.options)
                            .await
                    }
                }
            })?,
            None => tracing::info!(
                id,
                device = %device,
                "faultline's root qdisc is not on the interface (never installed, or replaced \
                 by someone since); leaving the interface as it is"
            ),
        }
    }
    host.qdisc_records.remove(id)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn netem() -> NetemParams {
        NetemParams {
            delay: Duration::from_millis(100),
            ..Default::default()
        }
    }

    #[test]
    fn netem_parameters_are_checked_together() {
        assert!(netem().validate().is_ok());
        let e = NetemParams::default().validate().unwrap_err();
        assert_eq!(e.field, "netem");
        let e = NetemParams {
            jitter: Duration::from_millis(5),
            loss: 1.0,
            ..Default::default()
        }
        .validate()
        .unwrap_err();
        assert_eq!(e.field, "jitter");
        let e = NetemParams {
            distribution: DelayDistribution::Normal,
            ..netem()
        }
        .validate()
        .unwrap_err();
        assert_eq!(e.field, "distribution");
        let e = NetemParams {
            reorder: 25.0,
            loss: 1.0,
            ..Default::default()
        }
        .validate()
        .unwrap_err();
        assert_eq!(e.field, "reorder");
        let e = NetemParams {
            loss: 120.0,
            ..netem()
        }
        .validate()
        .unwrap_err();
        assert!(e.reason.contains("0-100"), "{}", e.reason);
        let e = NetemParams {
            delay: Duration::from_secs(61),
            ..Default::default()
        }
        .validate()
        .unwrap_err();
        assert_eq!(e.field, "delay");
    }

    #[test]
    fn descriptions_read_like_tc() {
        let p = NetemParams {
            jitter: Duration::from_millis(10),
            distribution: DelayDistribution::Normal,
            loss: 1.5,
            rate_bps: Some(10_000_000),
            ..netem()
        };
        assert_eq!(
            p.describe(),
            "delay 100ms ± 10ms normal, loss 1.5%, rate 10mbit"
        );
        assert_eq!(show_rate(1_500_000_000), "1.5gbit");
        assert_eq!(show_rate(999), "999bit");
    }

    #[test]
    fn rate_defaults_scale_with_the_rate() {
        let slow = RateParams {
            rate_bps: 1_000_000,
            burst: None,
            latency: None,
        };
        assert_eq!(slow.burst_bytes(), 16 << 10);
        let fast = RateParams {
            rate_bps: 10_000_000_000,
            ..slow.clone()
        };
        assert_eq!(fast.burst_bytes(), 25_000_000);
        assert!(RateParams {
            rate_bps: 4,
            ..slow
        }
        .validate()
        .is_err());
    }

    #[test]
    fn only_total_loss_counts_as_cutting_a_session() {
        assert!(!netem().cuts());
        assert!(NetemParams {
            loss: 100.0,
            ..Default::default()
        }
        .cuts());
    }
}
