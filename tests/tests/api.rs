//! The gRPC surface as any client sees it: the standard health service, server reflection,
//! and the Watch stream of a fault's lifecycle.

use std::time::Duration;

use anyhow::{bail, ensure, Context as _, Result};
use faultline::api::{connect, AgentAddress};
use faultline_proto::v1::{self as pb, faults_client::FaultsClient};
use faultline_tests::{require_root, unique, Agent, Netns};
use tonic_health::pb::{
    health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest,
};
use tonic_reflection::pb::v1::{
    server_reflection_client::ServerReflectionClient, server_reflection_request::MessageRequest,
    server_reflection_response::MessageResponse, ServerReflectionRequest,
};

#[test]
fn health_reflection_and_watch_answer_like_any_grpc_server() -> Result<()> {
    if !require_root("health_reflection_and_watch_answer_like_any_grpc_server") {
        return Ok(());
    }
    let ns = Netns::create(&format!("fl-{}-{}-g", std::process::id(), unique()))?;
    // A short grace period: the block below acts on nothing, and Watch must warn of it.
    let agent = Agent::start_with(&ns, &["--ineffective-after", "1s"])?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let channel = connect(&AgentAddress::Unix(agent.socket())).await?;

        let mut health = HealthClient::new(channel.clone());
        for service in ["", "faultline.v1.Faults", "faultline.v1.Agent"] {
            let status = health
                .check(HealthCheckRequest {
                    service: service.to_owned(),
                })
                .await?
                .into_inner()
                .status;
            ensure!(
                status == ServingStatus::Serving as i32,
                "health of {service:?} is {status}, not SERVING"
            );
        }

        let mut reflection = ServerReflectionClient::new(channel.clone());
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut answers = reflection
            .server_reflection_info(tokio_stream::iter([request]))
            .await?
            .into_inner();
        let Some(MessageResponse::ListServicesResponse(list)) = answers
            .message()
            .await?
            .context("no reflection answer")?
            .message_response
        else {
            bail!("reflection did not list the services");
        };
        let names: Vec<&str> = list.service.iter().map(|s| s.name.as_str()).collect();
        for expected in [
            "faultline.v1.Faults",
            "faultline.v1.Agent",
            "grpc.health.v1.Health",
        ] {
            ensure!(
                names.contains(&expected),
                "reflection lists {names:?}, not {expected}"
            );
        }

        let mut faults = FaultsClient::new(channel);
        let mut events = faults
            .watch(pb::WatchRequest::default())
            .await?
            .into_inner();
        let spec = pb::BlockSpec {
            direction: pb::Direction::Ingress.into(),
            r#match: Some(pb::PacketMatch {
                protocol: pb::Protocol::Tcp.into(),
                ports: vec![pb::PortRange {
                    first: 8080,
                    last: 8080,
                }],
                cidrs: vec![],
            }),
            ..Default::default()
        };
        let applied = faults
            .apply(pb::ApplyRequest {
                spec: Some(pb::FaultSpec {
                    kind: Some(pb::fault_spec::Kind::Block(spec)),
                }),
                duration: Some(prost_types::Duration {
                    seconds: 30,
                    nanos: 0,
                }),
                ..Default::default()
            })
            .await?
            .into_inner();
        let id = applied.fault.context("Apply returned no fault")?.id;

        let mut seen = Vec::new();
        // Nothing reaches port 8080 here: within the grace period and a reading, a warning.
        let warning = loop {
            let event = tokio::time::timeout(Duration::from_secs(5), events.message())
                .await
                .with_context(|| format!("no ineffective warning within 5 s; saw {seen:?}"))??
                .context("the Watch stream ended")?;
            let fault = event.fault.context("an event without a fault")?;
            if fault.id == id {
                seen.push(pb::FaultState::try_from(fault.state)?);
                if fault.ineffective && !event.warning.is_empty() {
                    break event.warning;
                }
            }
        };
        ensure!(warning.contains("acted on nothing"), "{warning}");
        faults.revert(pb::RevertRequest { id: id.clone() }).await?;

        while !seen.contains(&pb::FaultState::Reverted) {
            let event = tokio::time::timeout(Duration::from_secs(5), events.message())
                .await
                .with_context(|| format!("no Reverted event within 5 s; saw {seen:?}"))??
                .context("the Watch stream ended")?;
            let fault = event.fault.context("an event without a fault")?;
            if fault.id == id {
                seen.push(pb::FaultState::try_from(fault.state)?);
            }
        }
        let active = seen.iter().position(|s| *s == pb::FaultState::Active);
        let reverted = seen.iter().position(|s| *s == pb::FaultState::Reverted);
        ensure!(
            matches!((active, reverted), (Some(a), Some(r)) if a < r),
            "Watch showed {seen:?}, expected Active before Reverted"
        );
        Ok(())
    })?;
    agent.assert_clean()
}
