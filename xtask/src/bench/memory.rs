//! Steady memory: the agent's resident set (VmRSS) after the first fault of each kind, against
//! after 1000 faults of those kinds, applied and reverted in turn over gRPC. A long-running
//! agent must not grow with the faults it has seen: finished faults are kept in bounded number,
//! and what a fault allocated is given back.

use std::time::Duration;

use anyhow::{Context as _, Result};
use serde_json::json;

use super::{grpc, interrupted, overhead::rss_bytes, Ctx, Row, Section};

/// Faults applied and reverted after the first of each kind.
const FAULTS: usize = 1000;
/// How long each fault is asked for: longer than it lives.
const FAULT_FOR: Duration = Duration::from_secs(600);
/// Allowed growth over the first round, and the ceiling, in MiB (issue 18's goal).
const GROWTH_MIB: f64 = 3.0;
const CEILING_MIB: f64 = 20.0;

pub fn run(ctx: &Ctx) -> Result<Section> {
    let lab = ctx.lab()?;
    let ns = &lab.a.ns;
    let dev = lab.a.dev.as_str();
    let agent = ctx.agent(ns, &[])?;
    let pid = agent.pid().context("the agent has no pid")?;
    let mut client = ctx.rt.block_on(grpc::Client::connect(&agent.socket()))?;
    let kinds = [
        ("block", grpc::block_in_tcp(7000)),
        ("loss", grpc::loss_in_udp(dev, 7001, 10.0)),
        ("rate", grpc::rate_egress(dev, 10_000_000)),
        ("cpu", grpc::cpu(5.0)),
        ("memory", grpc::memory(4 << 20)),
    ];
    let mut cycle = |n: usize| -> Result<()> {
        for i in 0..n {
            interrupted()?;
            let (kind, spec) = &kinds[i % kinds.len()];
            let id = ctx
                .rt
                .block_on(client.apply(spec.clone(), FAULT_FOR))
                .with_context(|| format!("applying a {kind} fault"))?;
            ctx.rt
                .block_on(client.revert(&id))
                .with_context(|| format!("reverting a {kind} fault"))?;
        }
        Ok(())
    };
    let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
    cycle(kinds.len())?;
    // The clean-ups that follow the answers, and the allocator, settle.
    super::pause(Duration::from_secs(1))?;
    let first = mib(rss_bytes(pid)?);
    cycle(FAULTS)?;
    super::pause(Duration::from_secs(1))?;
    let after = mib(rss_bytes(pid)?);
    let growth = after - first;
    let names: Vec<&str> = kinds.iter().map(|(k, _)| *k).collect();
    let rows = vec![Row::new(
        format!("agent resident memory (VmRSS) after {FAULTS} faults"),
        "MiB",
    )
    .values(after, first, "after the first of each kind")
    .ratio(|_| format!("{growth:+.2} MiB"))
    .goal(
        &format!("within {GROWTH_MIB} MiB of the first round, under {CEILING_MIB} MiB"),
        growth <= GROWTH_MIB && after < CEILING_MIB,
        format!("{growth:+.2} MiB, {after:.1} MiB"),
    )];
    let method = format!(
        "One agent in a namespace of its own (a veth pair to a second one). One fault of each \
         kind ({}) applied and reverted over gRPC, then the agent's VmRSS read from \
         /proc/<pid>/status after a second's pause; then {FAULTS} more faults of those kinds \
         in turn, each applied and reverted, and VmRSS again after a second's pause.",
        names.join(", ")
    );
    drop(client);
    drop(agent);
    Ok(Section {
        title: "Steady memory".to_owned(),
        method,
        rows,
        details: json!({ "rss_first_mib": first, "rss_after_mib": after, "faults": FAULTS }),
    })
}
