//! The loss family: drop a share of an interface's packets with faultline's eBPF tc classifier.
//! It works where netem is missing, and the classifier checks the fault's deadline itself, so
//! the loss stops on time even when the agent is dead.

use serde::{Deserialize, Serialize};

use super::{
    check_percent, Claim, Connection, Deadline, Demands, Direction, Ended, Family, Host,
    PacketMatch, Protocol,
};
use crate::{
    errors::{InvalidSpec, KernelError},
    kernel::{
        bpf::{config as tc, TcDirection},
        caps::Capabilities,
        netdev,
    },
};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct LossSpec {
    pub(crate) device: String,
    pub(crate) direction: Direction,
    pub(crate) percent: f64,
    #[serde(rename = "match", default)]
    pub(crate) matcher: PacketMatch,
}

impl LossSpec {
    fn tc_direction(&self) -> TcDirection {
        match self.direction {
            Direction::Ingress => TcDirection::Ingress,
            Direction::Egress => TcDirection::Egress,
        }
    }

    fn config(&self, deadline: Deadline) -> Result<tc::LossConfig, KernelError> {
        let deadline_ns = tc::monotonic_deadline_ns(deadline.remaining)?;
        Ok(tc::loss_config(
            self.percent,
            self.tc_direction(),
            match self.matcher.protocol {
                Protocol::Any => tc::L4Filter::Any,
                Protocol::Tcp => tc::L4Filter::Tcp,
                Protocol::Udp => tc::L4Filter::Udp,
            },
            &self
                .matcher
                .ports
                .iter()
                .map(|r| (r.first, r.last))
                .collect::<Vec<_>>(),
            &self.matcher.cidrs,
            deadline_ns,
        ))
    }
}

impl Family for LossSpec {
    fn validate(&self, _host: &Host<'_>) -> Result<(), InvalidSpec> {
        check_percent(self.percent, "percent")?;
        self.matcher.validate()?;
        netdev::check_exists(&self.device)?;
        // The classifier must know where the IP header starts on this kind of link.
        netdev::l2_len(&self.device)?;
        Ok(())
    }

    fn missing_capability(&self, caps: &Capabilities) -> Option<(String, String)> {
        (!caps.cls_bpf.available).then(|| {
            (
                "eBPF tc classifiers".to_owned(),
                format!(
                    "{}; loss faults need BPF syscall access and cls_bpf/clsact or TCX",
                    caps.cls_bpf.detail
                ),
            )
        })
    }

    fn claims(&self) -> Vec<Claim> {
        vec![Claim::LossHook {
            device: self.device.clone(),
            direction: self.direction,
        }]
    }

    fn may_touch_port(&self, local_port: u16) -> bool {
        super::may_cut(self.direction, &self.matcher, local_port)
    }

    fn touches(&self, conn: &Connection) -> bool {
        // The classifier sees every interface's traffic; which interface carries the session
        // is not worth a route lookup: refusing a little too often is the safe side.
        let dport = match self.direction {
            Direction::Ingress => conn.local.port(),
            Direction::Egress => conn.remote.port(),
        };
        self.matcher.matches(Protocol::Tcp, conn.remote.ip(), dport)
    }

    fn plan(&self, id: &str, deadline: Deadline, host: &Host<'_>) -> Vec<String> {
        host.classifiers.describe(
            id,
            &self.device,
            self.tc_direction(),
            &format!(
                "drop {}% of {} for {}",
                self.percent,
                self.matcher.describe(self.direction),
                humantime::format_duration(deadline.remaining)
            ),
        )
    }

    fn apply(&self, id: &str, deadline: Deadline, host: &Host<'_>) -> Result<(), KernelError> {
        let config = self.config(deadline)?;
        // The handle only serves statistics; dropping it leaves the pinned attachment alone.
        host.classifiers
            .attach(id, &self.device, self.tc_direction(), &config)?;
        Ok(())
    }

    fn revert(&self, id: &str, host: &Host<'_>) -> Result<(), KernelError> {
        host.classifiers.detach(id)
    }

    fn end(&self, id: &str, host: &Host<'_>) -> Result<Ended, KernelError> {
        // The classifier stops at its own deadline: moving it to the past ends the loss with
        // one map write. The detach (netlink, or a TCX link's release) follows the answer.
        match host.classifiers.expire(id) {
            Ok(true) => Ok(Ended::CleanupLeft),
            Ok(false) => self.revert(id, host).map(|()| Ended::Clean),
            Err(e) => {
                tracing::warn!(id, error = %e, "cannot end the loss classifier by its deadline; detaching it");
                self.revert(id, host).map(|()| Ended::Clean)
            }
        }
    }

    fn effect(&self, id: &str, host: &Host<'_>) -> Result<super::effect::Effect, KernelError> {
        let (matched, dropped) = host.classifiers.loss_counts(id)?.unwrap_or_default();
        Ok(super::effect::Effect::new("packets matched")
            .hits(matched)
            .counter("packets_matched", matched)
            .counter("packets_dropped", dropped))
    }

    fn objects(&self, id: &str, host: &Host<'_>) -> Result<Vec<String>, KernelError> {
        Ok(host.classifiers.pins(id))
    }

    fn demands(&self) -> Demands {
        Demands {
            percents: vec![("loss percent", self.percent)],
            memory: None,
            disk: None,
        }
    }

    fn summary(&self) -> String {
        format!(
            "loss {}% {} {} on {}",
            self.percent,
            self.direction,
            self.matcher.describe(self.direction),
            self.device
        )
    }
}

impl super::readiness::Ready for LossSpec {
    fn readiness(preflight: &super::readiness::Preflight<'_>) -> super::readiness::Readiness {
        use super::readiness::Readiness;
        use crate::kernel::preflight::Cap;
        Readiness::lacking(preflight.privileges, &[Cap::NetAdmin])
            .or_else(|| Readiness::lacking_bpf(preflight.privileges))
            .unwrap_or_else(|| {
                Readiness::from_capability(
                    "eBPF tc classifiers",
                    &preflight.caps.cls_bpf,
                    "`faultline block --percent` drops a share of packets with nftables",
                )
            })
    }
}
