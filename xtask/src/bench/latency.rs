//! Apply and revert latency: faultline's gRPC `Apply` (until the agent answers with the fault
//! active) and `Revert` (until it answers with the fault reverted), timed in this process over
//! the agent's unix socket on an open channel, against running the `nft` and `tc` binaries for
//! the same change in the same namespace, as tools that shell out do. The four series run
//! interleaved, one apply and revert of each per round, so they share the machine's moments.

use std::{
    fs,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context as _, Result};
use serde_json::{json, Value};

use super::{
    faster,
    grpc::{self, Client, FaultSpec},
    interrupted, CallCosts, Ctx, Row, Section, Summary,
};
use crate::exec;

/// Rounds run first and not counted: the first calls pay for page faults and warm caches.
const WARMUP: usize = 10;
/// The blocked port.
const PORT: u16 = 7000;
/// Long enough that no fault expires during the bench.
const FAULT_FOR: Duration = Duration::from_secs(600);
/// The tbf rate, in bits per second and as tc writes it.
const RATE_BPS: u64 = 10_000_000;
const RATE: &str = "10mbit";
/// faultline's default tbf burst at this rate: 20 ms of it (25 000 bytes; at least 16 KiB),
/// and its default latency, so the tc baseline asks the kernel for the same qdisc.
const TC_BURST: &str = "25000";
const TC_LATENCY: &str = "50ms";
/// The baseline's own table, beside faultline's `inet faultline`.
const NFT_TABLE: &str = "faultline_bench";

/// Apply and revert times of one way of making a change, in milliseconds.
#[derive(Default)]
struct Series {
    apply: Vec<f64>,
    revert: Vec<f64>,
}

/// The floor with what every acknowledged call pays on top, as the apply rows name it.
const CALL_FLOOR: &str =
    "the floor + a gRPC call answered from memory + an fdatasync'ed audit line";

/// How an apply compares with its floor, and the share of the floor that the call's own costs
/// (outside the floor, paid by every acknowledged call) already take.
fn against_floor(apply: f64, floor: f64, call: f64) -> String {
    format!(
        "{:.2}x; the call's own costs alone are {:.2}x the floor",
        apply / floor,
        call / floor
    )
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Runs `command` (built once, run again each time) and returns how long it took from the
/// fork to its exit; fails unless it exits 0.
fn timed(command: &mut Command) -> Result<Duration> {
    let started = Instant::now();
    let output = command
        .output()
        .with_context(|| format!("cannot start `{}`", exec::display(command)))?;
    let took = started.elapsed();
    if !output.status.success() {
        bail!(
            "`{}` failed ({}): {}",
            exec::display(command),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(took)
}

fn timed_fault(ctx: &Ctx, client: &mut Client, spec: &FaultSpec) -> Result<(Duration, Duration)> {
    let request = spec.clone();
    let started = Instant::now();
    let id = ctx.rt.block_on(client.apply(request, FAULT_FOR))?;
    let apply = started.elapsed();
    let started = Instant::now();
    ctx.rt.block_on(client.revert(&id))?;
    Ok((apply, started.elapsed()))
}

pub fn run(ctx: &Ctx, runs: usize) -> Result<Section> {
    let lab = ctx.lab()?;
    let ns = &lab.a.ns;
    let dev = lab.a.dev.as_str();
    let agent = ctx.agent(ns, &[])?;
    let mut client = ctx.rt.block_on(Client::connect(&agent.socket()))?;
    let block = grpc::block_in_tcp(PORT);
    let rate = grpc::rate_egress(dev, RATE_BPS);

    let nft_apply_script = format!(
        "add table inet {NFT_TABLE}; add chain inet {NFT_TABLE} in {{ type filter hook input \
         priority 0; policy accept; }}; add rule inet {NFT_TABLE} in tcp dport {PORT} drop"
    );
    let quiet = |mut c: Command| {
        c.stdin(Stdio::null());
        c
    };
    let mut nft_apply = quiet(super::lab::command(ns, "nft", [nft_apply_script.as_str()]));
    let mut nft_revert = quiet(super::lab::command(
        ns,
        "nft",
        ["delete", "table", "inet", NFT_TABLE],
    ));
    let mut tc_apply = quiet(super::lab::command(
        ns,
        "tc",
        [
            "qdisc", "replace", "dev", dev, "root", "tbf", "rate", RATE, "burst", TC_BURST,
            "latency", TC_LATENCY,
        ],
    ));
    let mut tc_revert = quiet(super::lab::command(
        ns,
        "tc",
        ["qdisc", "del", "dev", dev, "root"],
    ));

    check_effects(ctx, &mut client, ns, dev, &block, &rate)?;
    let check_tool =
        |apply: &mut Command, revert: &mut Command, list: &[&str], expect: &str| -> Result<()> {
            timed(apply)?;
            let shown = ns.exec_ok(list)?;
            ensure!(
                shown.contains(expect),
                "`{}` after the baseline's apply shows no `{expect}`: {shown}",
                list.join(" ")
            );
            timed(revert).map(drop)
        };
    check_tool(
        &mut nft_apply,
        &mut nft_revert,
        &["nft", "list", "table", "inet", NFT_TABLE],
        &format!("dport {PORT} drop"),
    )?;
    check_tool(
        &mut tc_apply,
        &mut tc_revert,
        &["tc", "qdisc", "show", "dev", dev, "root"],
        "tbf",
    )?;

    // What the agent's SSH guard reads before it applies a block (established connections on
    // protected ports), timed in the same rounds to show how much of an apply it is. A thread
    // that entered the namespace reads its own view through /proc/thread-self.
    let scan = || -> Result<f64> {
        ns.run(|| -> std::io::Result<f64> {
            let started = Instant::now();
            for table in ["tcp", "tcp6"] {
                // In 8 KiB reads, as the agent's procfs reader does: each read of a procfs
                // seq_file past its buffer walks the table again.
                let mut file = fs::File::open(format!("/proc/thread-self/net/{table}"))?;
                std::io::copy(&mut file, &mut std::io::sink())?;
            }
            Ok(ms(started.elapsed()))
        })?
        .context("reading /proc/thread-self/net/tcp{,6}")
    };
    // The floors under each side, timed in the same rounds: what a crash-safe journal entry
    // costs on this filesystem (faultline writes one, fsynced, before it touches the kernel),
    // and what starting a process costs (every shell-out pays it before doing anything).
    let journal_like = ctx.dir.join("bench-journal");
    fs::create_dir_all(&journal_like).context("creating the journal floor's directory")?;
    let durable_write = || -> Result<f64> {
        let started = Instant::now();
        let tmp = journal_like.join(".entry.json.tmp");
        let mut file = fs::File::create(&tmp)?;
        std::io::Write::write_all(&mut file, &[b' '; 1200])?;
        file.sync_all()?;
        fs::rename(&tmp, journal_like.join("entry.json"))?;
        fs::File::open(&journal_like)?.sync_all()?;
        Ok(ms(started.elapsed()))
    };
    // What every acknowledged call pays besides its own work, as in the revert section. Neither
    // part is in the apply's floor; beside it they show how much of the gap is the call itself.
    let mut costs = CallCosts::open(&journal_like.join("audit-like.log"))?;
    let mut spawn_true = quiet(super::lab::command(ns, "true", [] as [&str; 0]));
    // The kernel's own time for the block's changes, on a socket kept open (see [`floor`]).
    let mut floor = super::floor::NftFloor::start(ns, &ctx.nft_floor)?;
    // The same for the rate fault, on a route netlink socket kept open (see [`rate_floor`]).
    let mut rate_floor = super::rate_floor::RateFloor::start(
        ns,
        dev,
        RATE_BPS,
        TC_BURST.parse().context("the tbf burst")?,
        Duration::from_millis(50),
    )?;
    let lifetime_ms = FAULT_FOR.as_millis() as u64;
    let mut kernel = Series::default();
    let mut rate_kernel = Series::default();
    let (mut scans, mut writes, mut spawns, mut calls) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut details = serde_json::Map::new();
    let (mut fl_block, mut fl_rate, mut nft, mut tc) = (
        Series::default(),
        Series::default(),
        Series::default(),
        Series::default(),
    );
    for round in 0..WARMUP + runs {
        interrupted()?;
        let counted = round >= WARMUP;
        let record = |series: &mut Series, (a, r): (Duration, Duration)| {
            if counted {
                series.apply.push(ms(a));
                series.revert.push(ms(r));
            }
        };
        record(&mut fl_block, timed_fault(ctx, &mut client, &block)?);
        record(&mut nft, (timed(&mut nft_apply)?, timed(&mut nft_revert)?));
        record(&mut fl_rate, timed_fault(ctx, &mut client, &rate)?);
        record(&mut tc, (timed(&mut tc_apply)?, timed(&mut tc_revert)?));
        let scanned = scan()?;
        let written = durable_write().context("timing a journal-like durable write")?;
        let spawned = ms(timed(&mut spawn_true)?);
        let (line, call) = costs.time(ctx, &mut client)?;
        let call_cost = ms(line + call);
        let kernel_apply = floor.apply(PORT, lifetime_ms)?;
        let kernel_end = floor.end()?;
        floor.remove()?;
        record(&mut kernel, (kernel_apply, kernel_end));
        let rate_apply = rate_floor.apply().context("the rate floor's apply")?;
        let rate_end = rate_floor.end().context("the rate floor's end")?;
        rate_floor.remove().context("the rate floor's removal")?;
        record(&mut rate_kernel, (rate_apply, rate_end));
        if counted {
            scans.push(scanned);
            writes.push(written);
            spawns.push(spawned);
            calls.push(call_cost);
        }
    }
    // The apply's floor, summed per round so that both halves share a moment.
    let apply_floor: Vec<f64> = kernel
        .apply
        .iter()
        .zip(&writes)
        .map(|(k, w)| k + w)
        .collect();
    let rate_apply_floor: Vec<f64> = rate_kernel
        .apply
        .iter()
        .zip(&writes)
        .map(|(k, w)| k + w)
        .collect();
    // The same floors with the call's own costs added, per round.
    let with_call =
        |floor: &[f64]| -> Vec<f64> { floor.iter().zip(&calls).map(|(f, c)| f + c).collect() };
    let (apply_floor_call, rate_apply_floor_call) = (
        Summary::of(&with_call(&apply_floor)),
        Summary::of(&with_call(&rate_apply_floor)),
    );
    let calls = Summary::of(&calls);
    details.insert("call_costs_ms".to_owned(), calls.json());
    let scans = Summary::of(&scans);
    let (writes, spawns) = (Summary::of(&writes), Summary::of(&spawns));
    details.insert("tcp_table_scan_ms".to_owned(), scans.json());
    details.insert("durable_write_ms".to_owned(), writes.json());
    details.insert("process_start_ms".to_owned(), spawns.json());

    // The floors: an apply journals (one fsynced write) and then changes the kernel; a revert
    // ends the effect with one batch.
    let mut floor = |name: &str, apply: &[f64], kernel: &Series| {
        let summaries = (
            Summary::of(apply),
            Summary::of(&kernel.apply),
            Summary::of(&kernel.revert),
        );
        details.insert(
            format!("{name} floor"),
            json!({ "apply_ms": summaries.0.json(), "kernel_apply_ms": summaries.1.json(),
                    "kernel_end_ms": summaries.2.json() }),
        );
        summaries
    };
    let (apply_floor, kernel_apply, kernel_end) = floor("block", &apply_floor, &kernel);
    let (rate_apply_floor, rate_kernel_apply, rate_kernel_end) =
        floor("rate", &rate_apply_floor, &rate_kernel);
    let mut rows = Vec::new();
    for (fault, fl, tool, tool_name) in [
        ("block", &fl_block, &nft, "`nft` binary"),
        ("rate (tbf)", &fl_rate, &tc, "`tc` binary"),
    ] {
        for (what, f, b) in [
            ("apply", &fl.apply, &tool.apply),
            ("revert", &fl.revert, &tool.revert),
        ] {
            let (fs, bs) = (Summary::of(f), Summary::of(b));
            details.insert(
                format!("{fault} {what}"),
                json!({ "faultline_ms": fs.json(), "baseline_ms": bs.json(), "baseline": tool_name }),
            );
            for (p, fv, bv) in [("p50", fs.p50, bs.p50), ("p99", fs.p99, bs.p99)] {
                let row = Row::new(format!("{fault} {what} {p}"), "ms")
                    .values(fv, bv, tool_name)
                    .speedup();
                let speedup = bv / fv;
                let row = match (p, what) {
                    ("p50", "apply") => row.goal(
                        &format!("faster than the {tool_name}"),
                        speedup > 1.0,
                        faster(speedup),
                    ),
                    ("p50", _) => row.goal(
                        "< 1 ms (the effect ended when the answer came)",
                        fv < 1.0,
                        format!("{fv:.3} ms"),
                    ),
                    _ => row,
                };
                rows.push(row);
            }
            if what == "apply" {
                let (floor, with_call, floor_name) = if fault == "block" {
                    (
                        &apply_floor,
                        &apply_floor_call,
                        "floor: fsynced write + one nf_tables batch",
                    )
                } else {
                    (
                        &rate_apply_floor,
                        &rate_apply_floor_call,
                        "floor: fsynced write + the route netlink changes",
                    )
                };
                rows.push(
                    Row::new(format!("{fault} apply p50, against its floor"), "ms")
                        .values(fs.p50, floor.p50, floor_name)
                        .ratio(|r| format!("{r:.2}x the floor"))
                        .goal(
                            "≤ 1.25x the floor",
                            fs.p50 <= 1.25 * floor.p50,
                            against_floor(fs.p50, floor.p50, calls.p50),
                        ),
                );
                rows.push(
                    Row::new(
                        format!("{fault} apply p50, against its floor and the call's own costs"),
                        "ms",
                    )
                    .values(fs.p50, with_call.p50, CALL_FLOOR)
                    .ratio(|r| format!("{r:.2}x")),
                );
            }
            if fault == "block" && what == "revert" {
                rows.push(
                    Row::new("block revert p50, against its floor", "ms")
                        .values(fs.p50, kernel_end.p50, "floor: one nf_tables batch")
                        .ratio(|r| format!("{r:.2}x the floor")),
                );
            }
        }
    }
    let method = format!(
        "One agent in a namespace of its own (a veth pair to a second one), with its journal on \
         the agent's default filesystem. faultline: the time of one gRPC call made by xtask on an \
         open channel over the agent's unix socket — `Faults/Apply` until the answer with the \
         fault `active` (the agent validates, journals with fsync, changes the kernel, writes \
         its fsynced audit line), `Faults/Revert` until the answer with it `reverted`. Faults: \
         `block --dir in --proto tcp --port {PORT}` (a table, a chain and a rule in nftables \
         over netlink) and `rate --dev <veth> --rate {RATE}` (an IFB device of the fault's \
         own with the tbf as its root, a clsact qdisc on the veth and the eBPF steering \
         classifier in its egress hook, redirecting to the IFB; the veth's root is not \
         touched; revert removes the classifier, the clsact qdisc and the IFB). \
         Baselines: the time from fork to exit of one process in the same namespace — `nft \
         '<add table; add chain; add rule>'` and `nft delete table` (one process each, the \
         fewest a shell-out tool can use), `tc qdisc replace dev <veth> root tbf rate {RATE} \
         burst {TC_BURST} latency {TC_LATENCY}` and `tc qdisc del dev <veth> root`. {runs} \
         rounds after {WARMUP} uncounted ones; each round applies and reverts with all four, \
         in turn. Before timing, each side's change was checked in the kernel \
         (`nft list`, `tc qdisc show`). For scale, in the same rounds (p50, p99): one \
         journal-like durable write on the agents' filesystem (1.2 KB written, fsynced, \
         renamed, directory fsynced; faultline's apply makes one before touching the kernel, \
         and its revert removes the entry after its answer) took {:.3} ms, {:.3} ms; starting `true` in the \
         namespace (what every shell-out pays first) {:.3} ms, {:.3} ms; reading \
         /proc/net/tcp and /proc/net/tcp6 in the namespace (the kernel walks its whole TCP \
         hash table; the agent's SSH guard does it only for a fault that could touch a \
         protected port, which an inbound block of port {PORT} cannot) {:.3} ms, {:.3} ms. The \
         `nft` baseline's delete took {:.1}x its add (p50): the kernel's answer to its batch \
         comes at once, but closing a netfilter netlink socket flushes nf_tables' pending \
         destructions, which wait for an RCU grace period (strace of `nft delete table`: \
         sendmsg 0.1 ms, close 10 ms). faultline keeps its one socket open, and its revert \
         answers once the effect has ended (the block's rules flushed); the chain and table \
         are removed, the revert verified and the journal entry removed after the answer. \
         The revert's answer still waits for its fsynced audit line. Floors, in the same \
         rounds: the same nf_tables changes as faultline's block (table, live set with two \
         elements, base chain, rule) sent as one batch by xtask on a netlink socket it keeps \
         open took {:.3} ms (p50) to be acknowledged, and the batch that ends the block (the \
         chain's flush) {:.3} ms; the apply's floor is that batch plus the journal-like \
         write, summed per round, {:.3} ms (p50). The rate fault's floor, in the same rounds: \
         the same route netlink changes as faultline's rate fault (an IFB device created and \
         brought up, its index looked up, then one batch of its tbf root, a clsact qdisc on the \
         veth and a cls_bpf filter with a mirred redirect to the IFB, the smallest program the \
         kernel takes), sent by xtask on a socket it keeps open, took {:.3} ms (p50) until the \
         last was acknowledged, and the filter's removal (what ends the effect) {:.3} ms; with \
         the journal-like write, summed per round, {:.3} ms (p50). What every acknowledged \
         call pays besides its work, in the same rounds, is in neither floor: a gRPC call \
         answered from memory (`Agent/Info`, same channel) and an audit-like line (300 bytes \
         appended to a file on the agents' filesystem and fdatasync'ed, as the audit log's is \
         before every answer), {:.3} ms (p50) together; the rows \"against its floor and the \
         call's own costs\" add them to each floor, per round.",
        writes.p50,
        writes.p99,
        spawns.p50,
        spawns.p99,
        scans.p50,
        scans.p99,
        Summary::of(&nft.revert).p50 / Summary::of(&nft.apply).p50,
        kernel_apply.p50,
        kernel_end.p50,
        apply_floor.p50,
        rate_kernel_apply.p50,
        rate_kernel_end.p50,
        rate_apply_floor.p50,
        calls.p50,
    );
    drop(client);
    drop(agent);
    Ok(Section {
        title: "Apply and revert latency".to_owned(),
        method,
        rows,
        details: Value::Object(details),
    })
}

/// Checks once, outside the timing, that faultline's applies really change the kernel and its
/// reverts put it back.
fn check_effects(
    ctx: &Ctx,
    client: &mut Client,
    ns: &super::lab::Netns,
    dev: &str,
    block: &FaultSpec,
    rate: &FaultSpec,
) -> Result<()> {
    let root = || ns.exec_ok(&["tc", "qdisc", "show", "dev", dev, "root"]);
    let before = root()?;
    let id = ctx.rt.block_on(client.apply(block.clone(), FAULT_FOR))?;
    let table = ns.exec_ok(&["nft", "list", "table", "inet", "faultline"])?;
    ensure!(
        table.contains(&format!("dport {PORT}")),
        "the block is not in nftables: {table}"
    );
    ctx.rt.block_on(client.revert(&id))?;
    ensure!(
        ns.exec_ok(&["nft", "list", "table", "inet", "faultline"])
            .is_err(),
        "table inet faultline is still there after revert"
    );
    let id = ctx.rt.block_on(client.apply(rate.clone(), FAULT_FOR))?;
    let ifb = format!("fl-{id}");
    let shaped = ns.exec_ok(&["tc", "qdisc", "show", "dev", &ifb])?;
    ensure!(
        shaped.contains("tbf fa01:"),
        "faultline's tbf is not on {ifb}: {shaped}"
    );
    let during = root()?;
    ensure!(
        during == before,
        "the rate fault changed the root qdisc of {dev}: {during} (before: {before})"
    );
    ctx.rt.block_on(client.revert(&id))?;
    let after = root()?;
    ensure!(
        after == before,
        "the root qdisc of {dev} after revert differs: {after} (before: {before})"
    );
    Ok(())
}
