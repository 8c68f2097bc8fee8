//! clap types shared by the subcommands: where the agent is, how to print, and the flags every
//! network fault takes.

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use clap::{Args, ValueEnum};
use faultline_proto::v1 as pb;

use crate::config::DEFAULT_SOCKET;

#[derive(Debug, Clone, Args)]
pub(crate) struct Global {
    /// The agent to talk to: a unix socket path, unix:PATH, or https://HOST:PORT (its remote
    /// listener, with --tls-cert, --tls-key and --ca)
    #[arg(long, global = true, env = "FAULTLINE_AGENT", default_value = DEFAULT_SOCKET)]
    pub(crate) agent: String,
    /// This side's certificate (PEM): the client's for an https:// agent, the agent's own for
    /// `serve --listen`
    #[arg(long, global = true, env = "FAULTLINE_TLS_CERT", value_name = "FILE")]
    pub(crate) tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM)
    #[arg(long, global = true, env = "FAULTLINE_TLS_KEY", value_name = "FILE")]
    pub(crate) tls_key: Option<PathBuf>,
    /// The CA the agent's certificate must chain to (PEM), for an https:// agent
    #[arg(long, global = true, env = "FAULTLINE_CA", value_name = "FILE")]
    pub(crate) ca: Option<PathBuf>,
    /// Output format
    #[arg(long, short = 'o', global = true, value_enum, default_value_t = Output::Text)]
    pub(crate) output: Output,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Output {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Dir {
    /// Packets the host receives
    In,
    /// Packets the host sends
    Out,
}

impl From<Dir> for pb::Direction {
    fn from(d: Dir) -> Self {
        match d {
            Dir::In => pb::Direction::Ingress,
            Dir::Out => pb::Direction::Egress,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub(crate) enum Proto {
    #[default]
    Any,
    Tcp,
    Udp,
}

/// Which packets: protocol, destination ports, remote addresses.
#[derive(Debug, Clone, Args)]
pub(crate) struct MatchArgs {
    /// Protocol of the packets
    #[arg(long, value_enum, default_value_t = Proto::Any)]
    pub(crate) proto: Proto,
    /// Destination port or range (8080, 8000-8100); repeat or separate with commas
    #[arg(long = "port", value_name = "PORT[-PORT]", value_delimiter = ',', value_parser = parse_port_range)]
    pub(crate) ports: Vec<pb::PortRange>,
    /// Remote address or CIDR (10.0.0.0/8, 2001:db8::/32); repeat or separate with commas
    #[arg(long = "cidr", value_name = "CIDR", value_delimiter = ',')]
    pub(crate) cidrs: Vec<String>,
}

impl MatchArgs {
    pub(crate) fn to_proto(&self) -> pb::PacketMatch {
        pb::PacketMatch {
            protocol: match self.proto {
                Proto::Any => pb::Protocol::Any,
                Proto::Tcp => pb::Protocol::Tcp,
                Proto::Udp => pb::Protocol::Udp,
            }
            .into(),
            ports: self.ports.clone(),
            cidrs: self.cidrs.clone(),
        }
    }
}

/// The workload a fault is aimed at: at most one of these. The agent finds it in its host's
/// cgroup tree when the fault is applied (`faultline get` shows where), and ends the fault if it
/// disappears.
#[derive(Debug, Clone, Default, Args)]
#[group(id = "workload", multiple = false)]
pub(crate) struct WorkloadArgs {
    /// A systemd unit, by its cgroup (nginx means nginx.service; session-3.scope, user.slice)
    #[arg(long, value_name = "NAME")]
    pub(crate) unit: Option<String>,
    /// A container (docker, containerd, CRI-O, podman): its id or a unique prefix of it
    #[arg(long, value_name = "ID")]
    pub(crate) container: Option<String>,
    /// A Kubernetes pod on this node: its UID or a unique prefix of it
    #[arg(long, value_name = "UID")]
    pub(crate) pod: Option<String>,
    /// A cgroup path below the cgroup root, as in /proc/PID/cgroup (system.slice/nginx.service)
    #[arg(long, value_name = "PATH")]
    pub(crate) cgroup: Option<String>,
    /// Processes, by pid; repeat or separate with commas
    #[arg(long = "pid", value_name = "PID", value_delimiter = ',')]
    pub(crate) pids: Vec<u32>,
}

impl WorkloadArgs {
    /// The proto target; `None` when no workload is named.
    pub(crate) fn to_proto(&self) -> Option<pb::Target> {
        use pb::target::Kind;
        let kind = if let Some(unit) = &self.unit {
            Kind::Unit(unit.clone())
        } else if let Some(id) = &self.container {
            Kind::Container(id.clone())
        } else if let Some(uid) = &self.pod {
            Kind::Pod(uid.clone())
        } else if let Some(path) = &self.cgroup {
            Kind::Cgroup(path.clone())
        } else if !self.pids.is_empty() {
            Kind::Pids(pb::PidSet {
                pids: self.pids.clone(),
            })
        } else {
            return None;
        };
        Some(pb::Target { kind: Some(kind) })
    }
}

/// How long, how labelled, and how to run a fault.
#[derive(Debug, Clone, Args)]
pub(crate) struct ApplyArgs {
    /// How long the fault lasts (30s, 1m30s, 2h); it is reverted then
    #[arg(long = "for", value_name = "DURATION", value_parser = parse_duration)]
    pub(crate) duration: Duration,
    /// Revert the fault early unless its lease is renewed within this period (faultline renew
    /// ID); without --detach this command renews it every third of the period while it waits,
    /// so the fault ends soon after the command dies. At least 1s, at most --for
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub(crate) lease: Option<Duration>,
    /// A label to attach (key=value); repeatable
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
    pub(crate) labels: Vec<(String, String)>,
    /// Apply even where the safety guard refuses (SSH sessions, the agent's own control port)
    #[arg(long)]
    pub(crate) force: bool,
    /// Print the kernel operations and touch nothing
    #[arg(long)]
    pub(crate) dry_run: bool,
    /// Return as soon as the fault is active, printing its id; the agent reverts it at its deadline
    #[arg(long)]
    pub(crate) detach: bool,
}

impl ApplyArgs {
    pub(crate) fn request(&self, spec: pb::fault_spec::Kind) -> pb::ApplyRequest {
        pb::ApplyRequest {
            spec: Some(pb::FaultSpec { kind: Some(spec) }),
            duration: prost_types::Duration::try_from(self.duration).ok(),
            lease: self
                .lease
                .and_then(|d| prost_types::Duration::try_from(d).ok()),
            labels: self
                .labels
                .iter()
                .cloned()
                .collect::<BTreeMap<_, _>>()
                .into_iter()
                .collect(),
            dry_run: self.dry_run,
            force: self.force,
        }
    }
}

/// `30s`, `1m30s`, `500ms`, `2h`.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text)
        .map_err(|e| format!("{e} (expected e.g. 30s, 1m30s, 500ms, 2h)"))
}

/// `8080` or `8000-8100`; range checks are the agent's, so every interface gets the same ones.
pub(crate) fn parse_port_range(text: &str) -> Result<pb::PortRange, String> {
    let number = |s: &str| {
        s.trim().parse::<u32>().map_err(|_| {
            format!("{s:?} is not a port number (expected 1-65535, or a range like 8000-8100)")
        })
    };
    match text.split_once('-') {
        Some((first, last)) => Ok(pb::PortRange {
            first: number(first)?,
            last: number(last)?,
        }),
        None => {
            let port = number(text)?;
            Ok(pb::PortRange {
                first: port,
                last: port,
            })
        }
    }
}

fn parse_label(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("{text:?} is not KEY=VALUE"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_and_durations_parse_as_users_write_them() {
        let r = parse_port_range("8000-8100").unwrap();
        assert_eq!((r.first, r.last), (8000, 8100));
        let r = parse_port_range("53").unwrap();
        assert_eq!((r.first, r.last), (53, 53));
        assert!(parse_port_range("http").is_err());
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert!(parse_duration("soon").is_err());
        assert_eq!(
            parse_label("team=sre").unwrap(),
            ("team".to_owned(), "sre".to_owned())
        );
    }
}
