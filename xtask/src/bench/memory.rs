//! Steady memory: the agent's resident set (VmRSS) after the first fault of each kind, against
//! after 1000 faults of those kinds, applied and reverted in turn over gRPC. A long-running
//! agent must not grow with the faults it has seen: finished faults are kept in bounded number,
//! and what a fault allocated is given back.

use std::time::Duration;

use anyhow::{Context as _, Result};
use serde_json::json;

use super::{
    grpc, interrupted,
    overhead::{rss_bytes, status_bytes},
    Ctx, Row, Section,
};

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
    // The resident set in its two parts: the heap and stacks (anonymous), and the pages of
    // the binary and libraries it has run (file-backed, shared with the page cache).
    let parts = || -> Result<(f64, f64, f64)> {
        Ok((
            mib(rss_bytes(pid)?),
            mib(status_bytes(pid, "RssAnon")?),
            mib(status_bytes(pid, "RssFile")?),
        ))
    };
    let (first, first_anon, first_file) = parts()?;
    cycle(FAULTS)?;
    super::pause(Duration::from_secs(1))?;
    let (after, after_anon, after_file) = parts()?;
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
        format!(
            "{growth:+.2} MiB, {after:.1} MiB; anonymous {first_anon:.1} -> {after_anon:.1}, \
             file-backed (the binary's pages) {first_file:.1} -> {after_file:.1}"
        ),
    )];
    let method = format!(
        "One agent in a namespace of its own (a veth pair to a second one). One fault of each \
         kind ({}) applied and reverted over gRPC, then the agent's VmRSS read from \
         /proc/<pid>/status after a second's pause; then {FAULTS} more faults of those kinds \
         in turn, each applied and reverted, and VmRSS again after a second's pause; each \
         split into RssAnon (heap, stacks) and RssFile (pages of the binary it has run).",
        names.join(", ")
    );
    drop(client);
    drop(agent);
    Ok(Section {
        title: "Steady memory".to_owned(),
        method,
        rows,
        details: json!({
            "rss_first_mib": first, "rss_after_mib": after, "faults": FAULTS,
            "anon_first_mib": first_anon, "anon_after_mib": after_anon,
            "file_first_mib": first_file, "file_after_mib": after_file,
        }),
    })
}
