//! Revert of every kind: the time from a `Faults/Revert` request to its answer, which comes
//! once the fault's effect has ended (the rest of the clean-up follows the answer), for each
//! kind of fault this host runs; issue 18's goal is 1 ms (p50). Beside it, the floor every
//! revert pays in the same rounds: a gRPC call answered from memory, and the audit log's line,
//! appended and fsynced (fdatasync) before the answer, on the agent's filesystem.

use std::{
    fs,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use faultline_proto::v1::{
    fault_spec::Kind, kill_spec::Pick, target, DiskFillSpec, DiskIoSpec, IoLimits, KillSpec,
    PauseSpec, PidSet, Target,
};
use serde_json::json;

use super::{grpc, interrupted, CallCosts, Ctx, Row, Section, Summary};

/// Rounds per kind, after one uncounted.
const ROUNDS: usize = 40;
/// How long each fault is asked for: longer than it lives.
const FAULT_FOR: Duration = Duration::from_secs(600);
const GOAL_MS: f64 = 1.0;

/// A process for the kill and pause faults to act on, killed and reaped when dropped.
struct Sleeper(Child);

impl Sleeper {
    fn start() -> Result<Self> {
        Command::new("sleep")
            .arg("600")
            .stdin(Stdio::null())
            .spawn()
            .map(Self)
            .context("starting sleep")
    }

    fn pids(&self) -> Option<Target> {
        Some(Target {
            kind: Some(target::Kind::Pids(PidSet {
                pids: vec![self.0.id()],
            })),
        })
    }
}

impl Drop for Sleeper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn run(ctx: &Ctx) -> Result<Section> {
    let lab = ctx.lab()?;
    let ns = &lab.a.ns;
    let dev = lab.a.dev.as_str();
    let agent = ctx.agent(ns, &[])?;
    let mut client = ctx.rt.block_on(grpc::Client::connect(&agent.socket()))?;
    let disk_dir = ctx.dir.join("revert-disk");
    fs::create_dir_all(&disk_dir).context("creating the disk faults' directory")?;
    let path = disk_dir.to_string_lossy().into_owned();
    let disk_fill = grpc::FaultSpec {
        kind: Some(Kind::DiskFill(DiskFillSpec {
            path: path.clone(),
            amount: Some(faultline_proto::v1::disk_fill_spec::Amount::Bytes(64 << 20)),
            floor: None,
        })),
    };
    // Held to 1 MiB/s, so that the workers cost the rest of the bench nothing.
    let disk_io = grpc::FaultSpec {
        kind: Some(Kind::DiskIo(DiskIoSpec {
            path,
            size: 8 << 20,
            limits: Some(IoLimits {
                write_bps: Some(1 << 20),
                ..Default::default()
            }),
            ..Default::default()
        })),
    };
    let pause = Sleeper::start()?;
    let victim = Sleeper::start()?;
    type Make<'a> = Box<dyn Fn() -> Result<grpc::FaultSpec> + 'a>;
    let kinds: Vec<(&str, Make<'_>)> = vec![
        ("block", Box::new(|| Ok(grpc::block_in_tcp(7000)))),
        ("loss", Box::new(|| Ok(grpc::loss_in_udp(dev, 7001, 10.0)))),
        ("rate", Box::new(|| Ok(grpc::rate_egress(dev, 10_000_000)))),
        ("cpu", Box::new(|| Ok(grpc::cpu(5.0)))),
        ("memory", Box::new(|| Ok(grpc::memory(4 << 20)))),
        ("disk fill", Box::new(|| Ok(disk_fill.clone()))),
        ("disk io", Box::new(|| Ok(disk_io.clone()))),
        (
            "kill",
            // SIGCONT, harmless, so one process serves every round. A kill cannot be undone:
            // its revert only stops the repeating (`--every`) it is given here.
            Box::new(|| {
                Ok(grpc::FaultSpec {
                    kind: Some(Kind::Kill(KillSpec {
                        target: victim.pids(),
                        signal: libc::SIGCONT,
                        every: Some(prost_types::Duration {
                            seconds: 60,
                            nanos: 0,
                        }),
                        pick: Some(Pick::Count(1)),
                        ..Default::default()
                    })),
                })
            }),
        ),
        (
            "pause",
            Box::new(|| {
                Ok(grpc::FaultSpec {
                    kind: Some(Kind::Pause(PauseSpec {
                        target: pause.pids(),
                    })),
                })
            }),
        ),
    ];
    let mut costs = CallCosts::open(&ctx.dir.join("revert-audit-floor.log"))?;
    let (mut audit_floor, mut empty_call, mut floors) = (Vec::new(), Vec::new(), Vec::new());
    let mut reverts: Vec<Vec<f64>> = vec![Vec::new(); kinds.len()];
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    for round in 0..=ROUNDS {
        for (i, (kind, make)) in kinds.iter().enumerate() {
            interrupted()?;
            let spec = make()?;
            let id = ctx
                .rt
                .block_on(client.apply(spec, FAULT_FOR))
                .with_context(|| format!("applying a {kind} fault"))?;
            let started = Instant::now();
            ctx.rt
                .block_on(client.revert(&id))
                .with_context(|| format!("reverting a {kind} fault"))?;
            let took = started.elapsed();
            let (fsync, call) = costs.time(ctx, &mut client)?;
            if round > 0 {
                reverts[i].push(ms(took));
                audit_floor.push(ms(fsync));
                empty_call.push(ms(call));
                floors.push(ms(fsync + call));
            }
        }
    }
    let floor = Summary::of(&floors);
    let mut rows = Vec::new();
    let mut details = serde_json::Map::new();
    for ((kind, _), series) in kinds.iter().zip(&reverts) {
        let s = Summary::of(series);
        details.insert(kind.to_string(), s.json());
        rows.push(
            Row::new(format!("{kind} revert p50"), "ms")
                .values(s.p50, floor.p50, "floor: a gRPC call + an fsynced line")
                .ratio(|r| format!("{r:.1}x the floor"))
                .goal(
                    &format!("< {GOAL_MS} ms (the effect ended when the answer came)"),
                    s.p50 < GOAL_MS,
                    format!("{:.3} ms (p99 {:.3} ms)", s.p50, s.p99),
                ),
        );
    }
    let (call, fsync) = (Summary::of(&empty_call), Summary::of(&audit_floor));
    rows.push(
        Row::new(
            "the floor's parts, p50: a gRPC call answered from memory (`Agent/Info`)",
            "ms",
        )
        .values(call.p50, fsync.p50, "a line appended and fdatasync'ed"),
    );
    details.insert("audit_line_fsync_ms".to_owned(), fsync.json());
    details.insert("empty_call_ms".to_owned(), call.json());
    details.insert("floor_ms".to_owned(), floor.json());
    let names: Vec<&str> = kinds.iter().map(|(k, _)| *k).collect();
    let method = format!(
        "One agent in a namespace of its own (a veth pair to a second one). {ROUNDS} rounds \
         after one uncounted; each applies and reverts one fault of each kind in turn ({}), \
         timing `Faults/Revert` over gRPC on an open channel from the request to the answer \
         with the fault reverted: the agent answers once the effect has ended and removes what \
         no longer acts after the answer. Faults: `block --dir in --proto tcp --port 7000`; \
         `loss --dir in --proto udp --port 7001 --percent 10`; `rate --rate 10mbit` on the \
         veth; `stress cpu --load 5 --cores 1`; `stress memory --size 4MiB`; `disk fill \
         --size 64MiB` and `disk io --size 8MiB --write-bps 1MiB/s` in a directory on the \
         agent's filesystem; `kill --pid <a sleep> --signal CONT --count 1 --every 60s` (a \
         kill cannot be undone: its revert stops the repeating); `pause --pid <another \
         sleep>` (SIGSTOP, SIGCONT on revert). Floor, in the same rounds, summed per round: \
         what every revert's answer waits for besides ending the effect — a gRPC call \
         answered from memory (`Agent/Info`, same channel) and the revert's audit line (a 300-byte \
         line appended to a file on the agent's filesystem and fdatasync'ed, as the audit \
         log's is before the answer).",
        names.join(", ")
    );
    drop(kinds);
    drop(client);
    drop(agent);
    drop(pause);
    drop(victim);
    let _ = fs::remove_dir_all(&disk_dir);
    Ok(Section {
        title: "Revert of every kind".to_owned(),
        method,
        rows,
        details: json!(details),
    })
}
