//! `faultline health`: the standard gRPC health check (`grpc.health.v1.Health/Check`) of the
//! agent, for probes that run a command, such as Kubernetes' exec probes (kubelet's own gRPC
//! probe cannot reach a unix socket or speak the remote listener's mutual TLS).

use clap::Args;
use serde_json::json;
use tonic_health::pb::{
    health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest,
};

use super::{
    args::{Global, Output},
    connect::channel,
    output::{self, Failure},
};

#[derive(Debug, Args)]
pub(crate) struct Options {
    /// The service to check (faultline.v1.Faults, faultline.v1.Agent, faultline.v1.Metrics);
    /// default: the agent as a whole
    #[arg(long, default_value = "")]
    pub(crate) service: String,
}

/// Exits 0 when the agent answers SERVING, 5 (unreachable) otherwise.
pub(crate) async fn run(global: &Global, o: Options) -> Result<(), Failure> {
    let answer = HealthClient::new(channel(global).await?)
        .check(HealthCheckRequest {
            service: o.service.clone(),
        })
        .await?
        .into_inner();
    let status = ServingStatus::try_from(answer.status).unwrap_or(ServingStatus::Unknown);
    match global.output {
        Output::Json => output::print_json(&json!({
            "service": o.service,
            "status": status.as_str_name(),
        })),
        Output::Text => println!("{}", status.as_str_name()),
    }
    if status != ServingStatus::Serving {
        return Err(Failure::unreachable(
            &global.agent,
            format!("it reports {}", status.as_str_name()),
        ));
    }
    Ok(())
}
