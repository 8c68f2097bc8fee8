//! The bench's gRPC client of the agent: a channel over the agent's unix socket and the three
//! calls the bench makes (Faults/Apply, Faults/Revert, Agent/Info), so that an Apply or a Revert
//! is timed in this process, from the request to the agent's answer, with no CLI in between.
//!
//! The messages are declared here with prost's derive, holding only the fields the bench sets
//! or reads; the wire format needs nothing else (unknown fields in a reply are skipped). The
//! generated `faultline-proto` crate would need protoc to build xtask, and xtask must build
//! before `cargo xtask prereqs` has installed it. A unit test checks every tag below against
//! `proto/faultline/v1/*.proto`, so the two cannot drift apart silently.

use std::{path::Path, time::Duration};

use anyhow::{bail, Context as _, Result};
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::{
    codegen::http::uri::PathAndQuery,
    transport::{Channel, Endpoint, Uri},
};
use tonic_prost::ProstCodec;

/// `faultline.v1.Direction`.
pub const DIRECTION_INGRESS: i32 = 1;
pub const DIRECTION_EGRESS: i32 = 2;
/// `faultline.v1.Protocol`.
pub const PROTOCOL_TCP: i32 = 2;
/// `faultline.v1.FaultState`.
pub const STATE_ACTIVE: i32 = 2;
pub const STATE_REVERTED: i32 = 4;

/// `google.protobuf.Duration`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ProtoDuration {
    #[prost(int64, tag = "1")]
    pub seconds: i64,
    #[prost(int32, tag = "2")]
    pub nanos: i32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PortRange {
    #[prost(uint32, tag = "1")]
    pub first: u32,
    #[prost(uint32, tag = "2")]
    pub last: u32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PacketMatch {
    #[prost(int32, tag = "1")]
    pub protocol: i32,
    #[prost(message, repeated, tag = "2")]
    pub ports: Vec<PortRange>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct BlockSpec {
    #[prost(int32, tag = "1")]
    pub direction: i32,
    #[prost(message, optional, tag = "2")]
    pub r#match: Option<PacketMatch>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ShapeTarget {
    #[prost(string, tag = "1")]
    pub device: String,
    #[prost(int32, tag = "2")]
    pub direction: i32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct RateSpec {
    #[prost(message, optional, tag = "1")]
    pub target: Option<ShapeTarget>,
    #[prost(uint64, tag = "2")]
    pub rate_bps: u64,
}

/// `FaultSpec`'s `oneof kind`, as the two members the bench uses: on the wire a oneof is its
/// one present field.
#[derive(Clone, PartialEq, prost::Message)]
pub struct FaultSpec {
    #[prost(message, optional, tag = "1")]
    pub block: Option<BlockSpec>,
    #[prost(message, optional, tag = "6")]
    pub rate: Option<RateSpec>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ApplyRequest {
    #[prost(message, optional, tag = "1")]
    pub spec: Option<FaultSpec>,
    #[prost(message, optional, tag = "2")]
    pub duration: Option<ProtoDuration>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Fault {
    #[prost(string, tag = "1")]
    pub id: String,
    #[prost(int32, tag = "4")]
    pub state: i32,
    #[prost(string, tag = "8")]
    pub reason: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ApplyResponse {
    #[prost(message, optional, tag = "1")]
    pub fault: Option<Fault>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct RevertRequest {
    #[prost(string, tag = "1")]
    pub id: String,
}

/// `InfoRequest`, and `InfoResponse` read as nothing: the bench only needs the answer.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Empty {}

/// A block fault: `--dir in --proto tcp --port PORT`.
pub fn block_in_tcp(port: u16) -> FaultSpec {
    FaultSpec {
        block: Some(BlockSpec {
            direction: DIRECTION_INGRESS,
            r#match: Some(PacketMatch {
                protocol: PROTOCOL_TCP,
                ports: vec![PortRange {
                    first: port.into(),
                    last: port.into(),
                }],
            }),
        }),
        rate: None,
    }
}

/// A tbf rate fault on all egress traffic of `device`: `rate --dev DEVICE --rate BPS`.
pub fn rate_egress(device: &str, rate_bps: u64) -> FaultSpec {
    FaultSpec {
        block: None,
        rate: Some(RateSpec {
            target: Some(ShapeTarget {
                device: device.to_owned(),
                direction: DIRECTION_EGRESS,
            }),
            rate_bps,
        }),
    }
}

/// A connected client of one agent.
#[derive(Clone)]
pub struct Client {
    grpc: tonic::client::Grpc<Channel>,
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
            grpc: tonic::client::Grpc::new(channel),
        })
    }

    async fn unary<Q, R>(&mut self, path: &'static str, request: Q) -> Result<R, tonic::Status>
    where
        Q: prost::Message + Send + Sync + 'static,
        R: prost::Message + Default + Send + Sync + 'static,
    {
        self.grpc
            .ready()
            .await
            .map_err(|e| tonic::Status::unavailable(format!("the channel is not ready: {e}")))?;
        let codec = ProstCodec::<Q, R>::default();
        self.grpc
            .unary(
                tonic::Request::new(request),
                PathAndQuery::from_static(path),
                codec,
            )
            .await
            .map(tonic::Response::into_inner)
    }

    /// `Agent/Info`: whether the agent answers.
    pub async fn info(&mut self) -> Result<()> {
        self.unary::<Empty, Empty>("/faultline.v1.Agent/Info", Empty {})
            .await
            .map(drop)
            .map_err(|s| anyhow::anyhow!("Agent/Info: {}: {}", s.code(), s.message()))
    }

    /// `Faults/Apply`; fails unless the agent answers with an active fault. Returns its id.
    pub async fn apply(&mut self, spec: FaultSpec, duration: Duration) -> Result<String> {
        let request = ApplyRequest {
            spec: Some(spec),
            duration: Some(ProtoDuration {
                seconds: duration.as_secs() as i64,
                nanos: duration.subsec_nanos() as i32,
            }),
        };
        let reply: ApplyResponse = self
            .unary("/faultline.v1.Faults/Apply", request)
            .await
            .map_err(|s| anyhow::anyhow!("Faults/Apply: {}: {}", s.code(), s.message()))?;
        let fault = reply
            .fault
            .context("Faults/Apply answered without a fault")?;
        if fault.state != STATE_ACTIVE {
            bail!(
                "Faults/Apply answered with fault {} in state {} ({}), not active",
                fault.id,
                fault.state,
                fault.reason
            );
        }
        Ok(fault.id)
    }

    /// `Faults/Revert`; fails unless the agent answers with the fault reverted.
    pub async fn revert(&mut self, id: &str) -> Result<()> {
        let fault: Fault = self
            .unary(
                "/faultline.v1.Faults/Revert",
                RevertRequest { id: id.to_owned() },
            )
            .await
            .map_err(|s| anyhow::anyhow!("Faults/Revert {id}: {}: {}", s.code(), s.message()))?;
        if fault.state != STATE_REVERTED {
            bail!(
                "Faults/Revert {id} answered with state {} ({}), not reverted",
                fault.state,
                fault.reason
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (proto file, message, field declaration as written there) for every field above.
    const FIELDS: &[(&str, &str, &str)] = &[
        ("faults", "PortRange", "uint32 first = 1;"),
        ("faults", "PortRange", "uint32 last = 2;"),
        ("faults", "PacketMatch", "Protocol protocol = 1;"),
        ("faults", "PacketMatch", "repeated PortRange ports = 2;"),
        ("faults", "BlockSpec", "Direction direction = 1;"),
        ("faults", "BlockSpec", "PacketMatch match = 2;"),
        ("faults", "ShapeTarget", "string device = 1;"),
        ("faults", "ShapeTarget", "Direction direction = 2;"),
        ("faults", "RateSpec", "ShapeTarget target = 1;"),
        ("faults", "RateSpec", "uint64 rate_bps = 2;"),
        ("faults", "FaultSpec", "BlockSpec block = 1;"),
        ("faults", "FaultSpec", "RateSpec rate = 6;"),
        ("faults", "ApplyRequest", "FaultSpec spec = 1;"),
        (
            "faults",
            "ApplyRequest",
            "google.protobuf.Duration duration = 2;",
        ),
        ("faults", "ApplyResponse", "Fault fault = 1;"),
        ("faults", "Fault", "string id = 1;"),
        ("faults", "Fault", "FaultState state = 4;"),
        ("faults", "Fault", "string reason = 8;"),
        ("faults", "RevertRequest", "string id = 1;"),
        ("faults", "Direction", "DIRECTION_INGRESS = 1;"),
        ("faults", "Direction", "DIRECTION_EGRESS = 2;"),
        ("faults", "Protocol", "PROTOCOL_TCP = 2;"),
        ("faults", "FaultState", "FAULT_STATE_ACTIVE = 2;"),
        ("faults", "FaultState", "FAULT_STATE_REVERTED = 4;"),
        (
            "agent",
            "Agent",
            "rpc Info(InfoRequest) returns (InfoResponse);",
        ),
        (
            "faults",
            "Faults",
            "rpc Apply(ApplyRequest) returns (ApplyResponse);",
        ),
        (
            "faults",
            "Faults",
            "rpc Revert(RevertRequest) returns (Fault);",
        ),
    ];

    /// The body of `message NAME {`, `enum NAME {` or `service NAME {`, to its closing brace.
    fn block<'a>(proto: &'a str, name: &str) -> Option<&'a str> {
        let start = ["message", "enum", "service"]
            .iter()
            .find_map(|kind| proto.find(&format!("\n{kind} {name} {{")))?;
        let body = &proto[start..];
        let mut depth = 0;
        for (i, c) in body.char_indices() {
            match c {
                '{' => depth += 1,
                '}' if depth == 1 => return Some(&body[..i]),
                '}' => depth -= 1,
                _ => {}
            }
        }
        None
    }

    #[test]
    fn hand_written_messages_match_the_proto_files() {
        for (file, message, field) in FIELDS {
            let path =
                crate::host::workspace_root().join(format!("proto/faultline/v1/{file}.proto"));
            let proto = std::fs::read_to_string(&path).unwrap();
            let body = block(&proto, message)
                .unwrap_or_else(|| panic!("no {message} in {}", path.display()));
            let oneof_or_plain = body
                .lines()
                .map(|l| l.trim().trim_start_matches("optional "))
                .any(|l| l == *field);
            assert!(oneof_or_plain, "{message} in {file}.proto has no `{field}`");
        }
    }

    #[test]
    fn the_block_spec_encodes_like_the_generated_code() {
        use prost::Message as _;
        // The protobuf encoding of BlockSpec{direction: INGRESS, match: {protocol: TCP, ports:
        // [{7000, 7000}]}}, enums as varints: field 1 = 1; field 2, 10 bytes { field 1 = 2;
        // field 2, 6 bytes { field 1 = 7000; field 2 = 7000 } }.
        let spec = block_in_tcp(7000).block.unwrap();
        assert_eq!(
            spec.encode_to_vec(),
            [0x08, 0x01, 0x12, 0x0a, 0x08, 0x02, 0x12, 0x06, 0x08, 0xd8, 0x36, 0x10, 0xd8, 0x36]
        );
    }
}
