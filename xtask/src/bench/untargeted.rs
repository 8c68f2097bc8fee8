//! What a fault costs the traffic it does not target: with a rate fault (tbf) and with a loss
//! fault aimed at one TCP port, the throughput of iperf3 with several parallel streams and the
//! round-trip time of a TCP request/response exchange, both to other ports of the same
//! interface, against the same traffic with no fault. On a veth pair with the kernel's one TX
//! queue and on one with four (a multi-queue device, as most NICs are, where a single-queue
//! root qdisc would make every CPU take one lock).
//!
//! The three conditions (no fault, rate, loss) run interleaved, in a rotating order, over
//! several rounds, so that they share the machine's moments; each figure is the median over
//! the rounds.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context as _, Result};
use serde_json::{json, Value};

use super::{
    grpc::{self, Client, FaultSpec},
    interrupted,
    lab::{command, Daemon, Lab},
    median, pause, Ctx, Row, Section, Summary,
};
use crate::exec;

/// The port the faults aim at: nothing in the lab uses it.
const TARGET_PORT: u16 = 9;
const IPERF_PORT: u16 = 5201;
const RR_PORT: u16 = 7100;
const ROUNDS: usize = 7;
const STREAMS: &str = "4";
/// Seconds of each iperf3 run.
const IPERF_SECONDS: &str = "3";
const RR_TIME: Duration = Duration::from_secs(2);
/// Bytes of each request and of each response.
const RR_BYTES: usize = 64;
/// The targeted port's cap and loss: values a user would choose; neither matters to untargeted
/// traffic unless the design makes it pay.
const RATE_BPS: u64 = 10_000_000;
const LOSS_PERCENT: f64 = 30.0;
const FAULT_FOR: Duration = Duration::from_secs(300);
/// Within 2 % of no fault.
const TOLERANCE: f64 = 0.02;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Condition {
    NoFault,
    Rate,
    Loss,
}

impl Condition {
    const ALL: [Condition; 3] = [Condition::NoFault, Condition::Rate, Condition::Loss];

    fn name(self) -> &'static str {
        match self {
            Condition::NoFault => "no fault",
            Condition::Rate => "rate fault on another port",
            Condition::Loss => "loss fault on another port",
        }
    }

    fn spec(self, dev: &str) -> Option<FaultSpec> {
        match self {
            Condition::NoFault => None,
            Condition::Rate => Some(grpc::rate_egress_port(dev, RATE_BPS, TARGET_PORT)),
            Condition::Loss => Some(grpc::loss_egress_port(dev, LOSS_PERCENT, TARGET_PORT)),
        }
    }
}

/// Per condition: throughput (bit/s) and request/response p50 (µs) of each round.
#[derive(Default, Clone)]
struct Figures {
    throughput: Vec<f64>,
    rr_p50: Vec<f64>,
}

/// A lab whose veth pair has `queues` TX/RX queues (`None`: the kernel's one).
fn lab(ctx: &Ctx, queues: Option<u16>) -> Result<Lab> {
    let a = ctx.netns()?;
    let b = ctx.netns()?;
    let (_, n) = ctx.name();
    Lab::join_with_queues(
        a,
        b,
        faultline_lab::Addressing {
            dev_prefix: "fbq",
            net: 78,
            subnet: (n % 250 + 1) as u8,
        },
        queues,
    )
}

/// Throughput in bit/s of `iperf3 -P STREAMS` from `lab.a` to the server in `lab.b`, as the
/// receiver counted it.
fn iperf(lab: &Lab) -> Result<f64> {
    let server = lab.b.v4.to_string();
    let port = IPERF_PORT.to_string();
    let mut client = command(
        &lab.a.ns,
        "iperf3",
        [
            "-c",
            &server,
            "-p",
            &port,
            "-P",
            STREAMS,
            "-t",
            IPERF_SECONDS,
            "-J",
        ],
    );
    let out = exec::capture(&mut client)?;
    let report: Value =
        serde_json::from_str(&out).with_context(|| format!("iperf3 -J printed {out}"))?;
    report["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .with_context(|| format!("iperf3's report has no received rate: {report}"))
}

/// Round trips of `RR_BYTES` requests answered by an echo server in `lab.b`, one at a time on
/// one connection, for `RR_TIME`; returns each round trip's time in µs.
fn request_response(lab: &Lab) -> Result<Vec<f64>> {
    let addr = SocketAddr::new(lab.b.v4.into(), RR_PORT);
    let listener = faultline_lab::traffic::tcp_listen(&lab.b.ns, addr)?;
    thread::scope(|scope| {
        let server = scope.spawn(move || -> Result<()> {
            let (mut stream, _) = listener.accept().context("accept")?;
            stream.set_nodelay(true)?;
            stream.set_read_timeout(Some(Duration::from_secs(10)))?;
            let mut buf = [0u8; RR_BYTES];
            loop {
                match stream.read_exact(&mut buf) {
                    Ok(()) => stream.write_all(&buf)?,
                    Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
                    Err(e) => return Err(e).context("echo server"),
                }
            }
        });
        let client = (|| -> Result<Vec<f64>> {
            let mut stream: TcpStream =
                faultline_lab::traffic::tcp_connect(&lab.a.ns, addr, Duration::from_secs(5))??;
            stream.set_nodelay(true)?;
            stream.set_read_timeout(Some(Duration::from_secs(10)))?;
            let request = [0x5au8; RR_BYTES];
            let mut response = [0u8; RR_BYTES];
            let mut rtts = Vec::with_capacity(100_000);
            let started = Instant::now();
            while started.elapsed() < RR_TIME {
                let sent = Instant::now();
                stream.write_all(&request)?;
                stream.read_exact(&mut response)?;
                rtts.push(sent.elapsed().as_secs_f64() * 1e6);
            }
            ensure!(response == request, "the echo server answered other bytes");
            Ok(rtts)
        })();
        let served = server.join().expect("echo server thread panicked");
        let rtts = client?;
        served?;
        Ok(rtts)
    })
}

/// The figures of one device: every condition, interleaved over `ROUNDS`.
fn measure(ctx: &Ctx, queues: Option<u16>) -> Result<Vec<Figures>> {
    let lab = lab(ctx, queues)?;
    let dev = lab.a.dev.clone();
    let agent = ctx.agent(&lab.a.ns, &[])?;
    let mut client = ctx.rt.block_on(Client::connect(&agent.socket()))?;
    let port = IPERF_PORT.to_string();
    let _iperf_server = Daemon::spawn(
        "the iperf3 server",
        command(&lab.b.ns, "iperf3", ["-s", "-p", &port]),
        &ctx.dir.join(format!("iperf3-{}.log", lab.b.dev)),
        Duration::from_secs(5),
    )?;
    // The server listens within a moment; a first run also warms the path.
    let mut warm = Err(anyhow::anyhow!("not run"));
    for _ in 0..50 {
        pause(Duration::from_millis(100))?;
        warm = iperf(&lab);
        if warm.is_ok() {
            break;
        }
    }
    warm.context("the iperf3 server does not answer")?;

    let mut figures = vec![Figures::default(); Condition::ALL.len()];
    for round in 0..ROUNDS {
        for k in 0..Condition::ALL.len() {
            interrupted()?;
            let i = (round + k) % Condition::ALL.len();
            let condition = Condition::ALL[i];
            let id = match condition.spec(&dev) {
                Some(spec) => Some(ctx.rt.block_on(client.apply(spec, FAULT_FOR))?),
                None => None,
            };
            let measured =
                (|| -> Result<(f64, Vec<f64>)> { Ok((iperf(&lab)?, request_response(&lab)?)) })();
            if let Some(id) = &id {
                ctx.rt.block_on(client.revert(id))?;
            }
            let (throughput, rtts) = measured.with_context(|| condition.name())?;
            if rtts.is_empty() {
                bail!(
                    "no request/response round trip completed ({})",
                    condition.name()
                );
            }
            figures[i].throughput.push(throughput);
            figures[i].rr_p50.push(Summary::of(&rtts).p50);
        }
    }
    Ok(figures)
}

pub fn run(ctx: &Ctx) -> Result<Section> {
    let mut rows = Vec::new();
    let mut details = serde_json::Map::new();
    for (device, queues) in [("veth, 1 TX queue", None), ("veth, 4 TX queues", Some(4))] {
        let figures = measure(ctx, queues)?;
        let none = &figures[0];
        let (base_tput, base_rr) = (median(&none.throughput), median(&none.rr_p50));
        // How far the unfaulted rounds alone spread: a ratio within it is not told apart from
        // the machine's own variation.
        let spread = |v: &[f64], scale: f64, unit: &str| {
            let (lo, hi) = v
                .iter()
                .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), x| {
                    (lo.min(*x), hi.max(*x))
                });
            format!(
                "median of {} rounds; the no-fault rounds ranged {:.2}–{:.2} {unit}",
                v.len(),
                lo / scale,
                hi / scale
            )
        };
        let (tput_spread, rr_spread) = (
            spread(&none.throughput, 1e9, "Gbit/s"),
            spread(&none.rr_p50, 1.0, "µs"),
        );
        for (i, condition) in Condition::ALL.iter().enumerate().skip(1) {
            let f = &figures[i];
            let (tput, rr) = (median(&f.throughput), median(&f.rr_p50));
            let tput_ratio = tput / base_tput;
            rows.push(
                Row::new(
                    format!(
                        "untargeted iperf3 throughput, {}, {device} — {tput_spread}",
                        condition.name()
                    ),
                    "Gbit/s",
                )
                .values(tput / 1e9, base_tput / 1e9, "no fault")
                .ratio(|r| format!("{r:.3} of no fault"))
                .goal(
                    "≥ 0.98 of no fault",
                    tput_ratio >= 1.0 - TOLERANCE,
                    format!("{tput_ratio:.3}"),
                ),
            );
            let rr_ratio = rr / base_rr;
            rows.push(
                Row::new(
                    format!(
                        "untargeted TCP request/response p50, {}, {device} — {rr_spread}",
                        condition.name()
                    ),
                    "µs",
                )
                .values(rr, base_rr, "no fault")
                .ratio(|r| format!("{r:.3} of no fault"))
                .goal(
                    "≤ 1.02 of no fault",
                    rr_ratio <= 1.0 + TOLERANCE,
                    format!("{rr_ratio:.3}"),
                ),
            );
        }
        details.insert(
            device.to_owned(),
            json!(Condition::ALL
                .iter()
                .zip(&figures)
                .map(|(c, f)| (
                    c.name().to_owned(),
                    json!({ "throughput_bps": f.throughput, "rr_p50_us": f.rr_p50 })
                ))
                .collect::<serde_json::Map<_, _>>()),
        );
    }
    Ok(Section {
        title: "untargeted traffic".to_owned(),
        method: format!(
            "Two namespaces joined by a veth pair, once with one TX/RX queue and once with four \
             (`numtxqueues 4 numrxqueues 4`); the agent runs in the sending one. Each round \
             measures, with no fault, with a rate fault (`rate --dir out --proto tcp --port \
             {TARGET_PORT} --rate {}mbit`) and with a loss fault (`loss --dir out --proto tcp \
             --port {TARGET_PORT} --percent {LOSS_PERCENT}`), in a rotating order: iperf3 with \
             {STREAMS} parallel streams for {IPERF_SECONDS} s to port {IPERF_PORT} (the \
             receiver's figure), then {} s of {RR_BYTES}-byte requests answered by an echo \
             server on port {RR_PORT}, one at a time on one connection (TCP_NODELAY), the p50 of \
             their round trips. Neither port is targeted. The figures are medians over \
             {ROUNDS} rounds; the ratio is the faulted figure over the unfaulted one.",
            RATE_BPS / 1_000_000,
            RR_TIME.as_secs()
        ),
        rows,
        details: Value::Object(details),
    })
}
