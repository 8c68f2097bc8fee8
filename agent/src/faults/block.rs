//! The block family: drop or reject packets with nftables rules in faultline's own table. Each
//! fault gets its own base chain(s), so its revert deletes exactly what it created and faults
//! never interfere with each other or with the host's own firewall tables.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::{
    check_percent, Claim, Connection, Deadline, Demands, Direction, Ended, Family, Host,
    PacketMatch, Protocol,
};
use crate::{
    errors::{InvalidSpec, KernelError},
    kernel::{caps::Capabilities, netdev, nft},
};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct BlockSpec {
    pub(crate) direction: Direction,
    #[serde(rename = "match", default)]
    pub(crate) matcher: PacketMatch,
    /// Answer with a TCP reset / ICMP unreachable instead of a silent drop.
    #[serde(default)]
    pub(crate) reject: bool,
    /// Share of matching packets blocked; `None` blocks all of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) percent: Option<f64>,
    /// Limit the block to one interface.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) device: Option<String>,
}

impl BlockSpec {
    fn rules_hook(&self) -> nft::Hook {
        match self.direction {
            Direction::Ingress => nft::Hook::Input,
            Direction::Egress => nft::Hook::Output,
        }
    }

    fn rules(&self, id: &str, deadline: Deadline) -> nft::BlockRules {
        let (mut v4, mut v6) = (Vec::new(), Vec::new());
        for cidr in &self.matcher.cidrs {
            match cidr {
                ipnet::IpNet::V4(net) => v4.push(*net),
                ipnet::IpNet::V6(net) => v6.push(*net),
            }
        }
        nft::BlockRules {
            fault_id: id.to_owned(),
            hook: self.rules_hook(),
            l4: match self.matcher.protocol {
                Protocol::Any => nft::L4::Any,
                Protocol::Tcp => nft::L4::Tcp,
                Protocol::Udp => nft::L4::Udp,
            },
            ports: self
                .matcher
                .ports
                .iter()
                .map(|r| r.first..=r.last)
                .collect(),
            v4,
            v6,
            device: self.device.clone(),
            verdict: if self.reject {
                nft::Verdict::Reject
            } else {
                nft::Verdict::Drop
            },
            percent: self.percent,
            lifetime: deadline.remaining,
        }
    }
}

impl Family for BlockSpec {
    fn validate(&self, _host: &Host<'_>) -> Result<(), InvalidSpec> {
        self.matcher.validate()?;
        if let Some(percent) = self.percent {
            check_percent(percent, "percent")?;
        }
        if let Some(device) = &self.device {
            netdev::check_exists(device)?;
        }
        Ok(())
    }

    fn missing_capability(&self, caps: &Capabilities) -> Option<(String, String)> {
        (!caps.nftables.available).then(|| {
            (
                "nftables".to_owned(),
                format!(
                    "{}; block faults need nf_tables (CONFIG_NF_TABLES, nft_reject, nft_numgen)",
                    caps.nftables.detail
                ),
            )
        })
    }

    fn claims(&self) -> Vec<Claim> {
        // Every block lives in its own chain: two blocks coexist and a packet is blocked
        // when either matches, which is what a user asking for both means.
        Vec::new()
    }

    fn may_touch_port(&self, local_port: u16) -> bool {
        super::may_cut(self.direction, &self.matcher, local_port)
    }

    fn touches(&self, conn: &Connection) -> bool {
        // A TCP session is cut when either direction's packets are blocked; the fault only
        // sees its own direction, where the remote port or the local port is the destination.
        let (remote, dport): (IpAddr, u16) = match self.direction {
            Direction::Ingress => (conn.remote.ip(), conn.local.port()),
            Direction::Egress => (conn.remote.ip(), conn.remote.port()),
        };
        self.matcher.matches(Protocol::Tcp, remote, dport)
    }

    fn plan(&self, id: &str, deadline: Deadline, _host: &Host<'_>) -> Vec<String> {
        nft::describe(&self.rules(id, deadline))
    }

    fn apply(&self, id: &str, deadline: Deadline, _host: &Host<'_>) -> Result<(), KernelError> {
        nft::apply(&self.rules(id, deadline))?;
        Ok(())
    }

    fn revert(&self, id: &str, _host: &Host<'_>) -> Result<(), KernelError> {
        nft::remove(id)?;
        Ok(())
    }

    fn end(&self, id: &str, host: &Host<'_>) -> Result<Ended, KernelError> {
        // Flushing the fault's rules ends it; its chain and the table go after the answer.
        if nft::stop(id, self.rules_hook())? {
            Ok(Ended::CleanupLeft)
        } else {
            self.revert(id, host).map(|()| Ended::Clean)
        }
    }

    fn effect(&self, id: &str, _host: &Host<'_>) -> Result<super::effect::Effect, KernelError> {
        let counts = nft::counts(id)?;
        let blocked = if self.reject { "rejected" } else { "dropped" };
        Ok(super::effect::Effect::new("packets matched")
            .hits(counts.matched.packets)
            .counter("packets_matched", counts.matched.packets)
            .counter("bytes_matched", counts.matched.bytes)
            .counter(&format!("packets_{blocked}"), counts.blocked.packets)
            .counter(&format!("bytes_{blocked}"), counts.blocked.bytes))
    }

    fn objects(&self, id: &str, _host: &Host<'_>) -> Result<Vec<String>, KernelError> {
        Ok(nft::objects(id)?)
    }

    fn demands(&self) -> Demands {
        Demands {
            // Without --percent a block takes every matching packet.
            percents: vec![("block percent", self.percent.unwrap_or(100.0))],
            memory: None,
            disk: None,
        }
    }

    fn summary(&self) -> String {
        let mut out = format!(
            "block {} {}",
            self.direction,
            self.matcher.describe(self.direction)
        );
        if let Some(device) = &self.device {
            out.push_str(&format!(" on {device}"));
        }
        if let Some(percent) = self.percent {
            out.push_str(&format!(" {percent}%"));
        }
        out.push_str(if self.reject { " (reject)" } else { " (drop)" });
        out
    }
}

impl super::readiness::Ready for BlockSpec {
    fn readiness(preflight: &super::readiness::Preflight<'_>) -> super::readiness::Readiness {
        use super::readiness::Readiness;
        use crate::kernel::preflight::Cap;
        Readiness::lacking(preflight.privileges, &[Cap::NetAdmin]).unwrap_or_else(|| {
            Readiness::from_capability(
                "nftables",
                &preflight.caps.nftables,
                "load nf_tables (CONFIG_NF_TABLES, nft_reject, nft_numgen); a share of packets \
                 can be dropped with `faultline loss` (eBPF) instead",
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;
    use crate::faults::PortRange;

    fn ssh() -> Connection {
        Connection {
            local: "10.0.0.1:22".parse::<SocketAddr>().unwrap(),
            remote: "192.0.2.9:51000".parse::<SocketAddr>().unwrap(),
        }
    }

    fn block(direction: Direction, ports: &[u16], cidrs: &[&str]) -> BlockSpec {
        BlockSpec {
            direction,
            matcher: PacketMatch {
                protocol: Protocol::Any,
                ports: ports
                    .iter()
                    .map(|p| PortRange {
                        first: *p,
                        last: *p,
                    })
                    .collect(),
                cidrs: cidrs.iter().map(|c| c.parse().unwrap()).collect(),
            },
            reject: false,
            percent: None,
            device: None,
        }
    }

    #[test]
    fn inbound_block_of_the_ssh_port_touches_an_ssh_session() {
        assert!(block(Direction::Ingress, &[22], &[]).touches(&ssh()));
        assert!(block(Direction::Ingress, &[], &["192.0.2.0/24"]).touches(&ssh()));
        assert!(!block(Direction::Ingress, &[80], &[]).touches(&ssh()));
        assert!(!block(Direction::Ingress, &[22], &["198.51.100.0/24"]).touches(&ssh()));
    }

    #[test]
    fn outbound_block_matches_the_remote_port_of_a_session() {
        // Our replies go to the client's ephemeral port, so an outbound port-22 block does
        // not touch an inbound SSH session, while an outbound block of its address does.
        assert!(!block(Direction::Egress, &[22], &[]).touches(&ssh()));
        assert!(block(Direction::Egress, &[], &["192.0.2.9/32"]).touches(&ssh()));
    }

    #[test]
    fn udp_only_block_never_touches_tcp() {
        let mut spec = block(Direction::Ingress, &[22], &[]);
        spec.matcher.protocol = Protocol::Udp;
        assert!(!spec.touches(&ssh()));
    }

    #[test]
    fn the_guard_skips_listing_sessions_only_where_no_session_on_the_port_can_match() {
        // Inbound, the local port is the destination: known before any lookup.
        assert!(block(Direction::Ingress, &[22], &[]).may_touch_port(22));
        assert!(block(Direction::Ingress, &[], &["192.0.2.0/24"]).may_touch_port(22));
        assert!(!block(Direction::Ingress, &[7000], &[]).may_touch_port(22));
        // Outbound, the destination is the client's port: any session might match.
        assert!(block(Direction::Egress, &[7000], &[]).may_touch_port(22));
        let mut udp = block(Direction::Egress, &[], &[]);
        udp.matcher.protocol = Protocol::Udp;
        assert!(!udp.may_touch_port(22));
        // Never a skip where `touches` would say yes.
        for spec in [
            block(Direction::Ingress, &[22], &[]),
            block(Direction::Ingress, &[], &["192.0.2.0/24"]),
            block(Direction::Egress, &[], &["192.0.2.9/32"]),
        ] {
            assert!(!spec.touches(&ssh()) || spec.may_touch_port(ssh().local.port()));
        }
    }
}
