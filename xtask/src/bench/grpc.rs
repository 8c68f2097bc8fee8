//! The bench's gRPC client of the agent: a channel over the agent's unix socket and the three
//! calls the bench makes (Faults/Apply, Faults/Revert, Agent/Info), so that an Apply or a Revert
//! is timed in this process, from the request to the agent's answer, with no CLI in between.
//! The messages and clients are the ones generated from proto/ (faultline-proto), so the bench
//! speaks exactly what the agent serves.

use std::{path::Path, time::Duration};

use anyhow::{bail, Context as _, Result};
pub use faultline_proto::v1::FaultSpec;
use faultline_proto::v1::{
    agent_client::AgentClient, fault_spec::Kind, faults_client::FaultsClient,
    memory_stress_spec::Size, ApplyRequest, BlockSpec, CpuStressSpec, Direction, FaultState,
    InfoRequest, LossSpec, MemoryStressSpec, PacketMatch, PortRange, Protocol, RateSpec,
    RevertRequest, ShapeTarget,
};
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

/// A block fault: `--dir in --proto tcp --port PORT`.
pub fn block_in_tcp(port: u16) -> FaultSpec {
    FaultSpec {
        kind: Some(Kind::Block(BlockSpec {
            direction: Direction::Ingress.into(),
            r#match: Some(PacketMatch {
                protocol: Protocol::Tcp.into(),
                ports: vec![PortRange {
                    first: port.into(),
                    last: port.into(),
                }],
                cidrs: Vec::new(),
            }),
            ..Default::default()
        })),
    }
}

/// A tbf rate fault on all egress traffic of `device`: `rate --dev DEVICE --rate BPS`.
pub fn rate_egress(device: &str, rate_bps: u64) -> FaultSpec {
    FaultSpec {
        kind: Some(Kind::Rate(RateSpec {
            target: Some(ShapeTarget {
                device: device.to_owned(),
                direction: Direction::Egress.into(),
                ..Default::default()
            }),
            rate_bps,
            ..Default::default()
        })),
    }
}

/// `--proto tcp --port PORT`.
fn tcp_port(port: u16) -> PacketMatch {
    PacketMatch {
        protocol: Protocol::Tcp.into(),
        ports: vec![PortRange {
            first: port.into(),
            last: port.into(),
        }],
        cidrs: Vec::new(),
    }
}

/// A tbf rate fault on the egress TCP traffic of `device` to one port:
/// `rate --dev DEVICE --dir out --proto tcp --port PORT --rate BPS`.
pub fn rate_egress_port(device: &str, rate_bps: u64, port: u16) -> FaultSpec {
    FaultSpec {
        kind: Some(Kind::Rate(RateSpec {
            target: Some(ShapeTarget {
                device: device.to_owned(),
                direction: Direction::Egress.into(),
                r#match: Some(tcp_port(port)),
                ..Default::default()
            }),
            rate_bps,
            ..Default::default()
        })),
    }
}

/// A loss fault on the egress TCP traffic of `device` to one port:
/// `loss --dev DEVICE --dir out --proto tcp --port PORT --percent PERCENT`.
pub fn loss_egress_port(device: &str, percent: f64, port: u16) -> FaultSpec {
    FaultSpec {
        kind: Some(Kind::Loss(LossSpec {
            device: device.to_owned(),
            direction: Direction::Egress.into(),
            percent,
            r#match: Some(tcp_port(port)),
        })),
    }
}

/// A loss fault on inbound UDP to `port` on `device`: `loss --dev DEVICE --dir in --percent P`.
pub fn loss_in_udp(device: &str, port: u16, percent: f64) -> FaultSpec {
    FaultSpec {
        kind: Some(Kind::Loss(LossSpec {
            device: device.to_owned(),
            direction: Direction::Ingress.into(),
            percent,
            r#match: Some(PacketMatch {
                protocol: Protocol::Udp.into(),
                ports: vec![PortRange {
                    first: port.into(),
                    last: port.into(),
                }],
                cidrs: Vec::new(),
            }),
        })),
    }
}

/// A CPU stress of one core: `stress cpu --load LOAD --cores 1`.
pub fn cpu(load: f64) -> FaultSpec {
    FaultSpec {
        kind: Some(Kind::Cpu(CpuStressSpec {
            load,
            cores: Some(1),
            ..Default::default()
        })),
    }
}

/// A memory stress: `stress memory --bytes BYTES`.
pub fn memory(bytes: u64) -> FaultSpec {
    FaultSpec {
        kind: Some(Kind::Memory(MemoryStressSpec {
            size: Some(Size::Bytes(bytes)),
            ..Default::default()
        })),
    }
}

/// A connected client of one agent.
#[derive(Clone)]
pub struct Client {
    faults: FaultsClient<Channel>,
    agent: AgentClient<Channel>,
}

impl Client {
    /// Connects to the agent's unix socket (the endpoint's URI is required but unused).
    pub async fn connect(socket: &Path) -> Result<Self> {
        let path = socket.to_owned();
        let channel =
            Endpoint::from_static("http://localhost")
                .connect_timeout(Duration::from_secs(5))
                .connect_with_connector(tower::service_fn(move |_: Uri| {
                    let path = path.clone();
                    async move {
                        Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?))
                    }
                }))
                .await
                .with_context(|| format!("connecting to {}", socket.display()))?;
        Ok(Self {
            faults: FaultsClient::new(channel.clone()),
            agent: AgentClient::new(channel),
        })
    }

    /// `Agent/Info`: whether the agent answers.
    pub async fn info(&mut self) -> Result<()> {
        self.agent
            .info(InfoRequest {})
            .await
            .map(drop)
            .map_err(|s| anyhow::anyhow!("Agent/Info: {}: {}", s.code(), s.message()))
    }

    /// `Faults/Apply`; fails unless the agent answers with an active fault. Returns its id.
    pub async fn apply(&mut self, spec: FaultSpec, duration: Duration) -> Result<String> {
        let request = ApplyRequest {
            spec: Some(spec),
            duration: Some(prost_types::Duration {
                seconds: duration.as_secs() as i64,
                nanos: duration.subsec_nanos() as i32,
            }),
            ..Default::default()
        };
        let reply = self
            .faults
            .apply(request)
            .await
            .map_err(|s| anyhow::anyhow!("Faults/Apply: {}: {}", s.code(), s.message()))?
            .into_inner();
        let fault = reply
            .fault
            .context("Faults/Apply answered without a fault")?;
        if fault.state() != FaultState::Active {
            bail!(
                "Faults/Apply answered with fault {} in state {:?} ({}), not active",
                fault.id,
                fault.state(),
                fault.reason
            );
        }
        Ok(fault.id)
    }

    /// `Faults/Revert`; fails unless the agent answers with the fault reverted.
    pub async fn revert(&mut self, id: &str) -> Result<()> {
        let fault = self
            .faults
            .revert(RevertRequest { id: id.to_owned() })
            .await
            .map_err(|s| anyhow::anyhow!("Faults/Revert {id}: {}: {}", s.code(), s.message()))?
            .into_inner();
        if fault.state() != FaultState::Reverted {
            bail!(
                "Faults/Revert {id} answered with state {:?} ({}), not reverted",
                fault.state(),
                fault.reason
            );
        }
        Ok(())
    }
}
