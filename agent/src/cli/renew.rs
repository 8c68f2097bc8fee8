//! `faultline renew ID... [--lease DURATION]`: what a controller runs to keep its leased faults
//! alive. Exit status 0 when every lease was renewed, 3 when an id is unknown, 4 when a fault
//! has ended or has no lease; the renewed ones are renewed either way.

use std::time::Duration;

use clap::Args;
use faultline_proto::v1 as pb;
use serde_json::json;

use super::{
    apply::client,
    args::{parse_duration, Global, Output},
    output::{self, Failure},
};

#[derive(Debug, Args)]
pub(crate) struct Options {
    /// The faults whose leases to renew
    #[arg(value_name = "ID", required = true)]
    pub(crate) ids: Vec<String>,
    /// A new lease period for all of them, counted from now and kept for later renewals
    /// (default: each keeps its own)
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub(crate) lease: Option<Duration>,
}

pub(crate) async fn run(global: &Global, o: Options) -> Result<(), Failure> {
    let asked = o.ids.len();
    let response = client(global)
        .await?
        .renew_lease(pb::RenewLeaseRequest {
            ids: o.ids,
            lease: o
                .lease
                .and_then(|d| prost_types::Duration::try_from(d).ok()),
        })
        .await?
        .into_inner();
    let renewed: Vec<_> = response.renewed.into_iter().map(output::fault).collect();
    match global.output {
        Output::Json => output::print_json(&json!({
            "renewed": renewed.iter().map(output::fault_json).collect::<Vec<_>>(),
            "not_renewed": response.not_renewed.iter().map(|n| json!({
                "id": n.id,
                "reason": reason_name(n.reason),
                "detail": n.detail,
            })).collect::<Vec<_>>(),
        })),
        Output::Text => {
            for fault in &renewed {
                match (fault.lease(), fault.lease_expires_at()) {
                    (Some(lease), Some(at)) => println!(
                        "fault {} lease renewed: {}, expires {}",
                        fault.id(),
                        humantime::format_duration(lease),
                        humantime::format_rfc3339_seconds(at)
                    ),
                    _ => println!("fault {} lease renewed", fault.id()),
                }
            }
        }
    }
    if response.not_renewed.is_empty() {
        return Ok(());
    }
    let message = format!(
        "{} of {asked} leases not renewed: {}",
        response.not_renewed.len(),
        response
            .not_renewed
            .iter()
            .map(|n| format!("{}: {}", n.id, n.detail))
            .collect::<Vec<_>>()
            .join("; ")
    );
    let unknown = response
        .not_renewed
        .iter()
        .any(|n| n.reason == i32::from(pb::NotRenewedReason::Unknown));
    Err(if unknown {
        Failure::not_found(message)
    } else {
        Failure::refused(message)
    })
}

fn reason_name(reason: i32) -> &'static str {
    match pb::NotRenewedReason::try_from(reason) {
        Ok(pb::NotRenewedReason::Unknown) => "unknown",
        Ok(pb::NotRenewedReason::Ended) => "ended",
        Ok(pb::NotRenewedReason::NoLease) => "no_lease",
        Ok(pb::NotRenewedReason::Pending) => "pending",
        Ok(pb::NotRenewedReason::Unspecified) | Err(_) => "unspecified",
    }
}
