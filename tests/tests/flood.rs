//! Nobody outside can wear the agent down: a flood of TLS handshakes without a client
//! certificate (at least 1000 a second for 30 s, from namespace `b` to the agent's listener in
//! namespace `a`, nowhere else) while the agent has a fault to revert. Checked: the audit log
//! grows by a few KiB only (the first refusals one by one, then one summary line per interval
//! that counts the rest, and the counts add up to what Prometheus reports); the flooding source
//! is put under a penalty (its connections closed unanswered) while a client with a
//! certificate from another address is still served; calls on the unix socket stay fast; and
//! the fault applied before the flood is reverted at its deadline.

use std::{
    fs,
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{ensure, Context as _, Result};
use faultline::api::{connect, AgentAddress};
use faultline_proto::v1::{self as pb, agent_client::AgentClient, faults_client::FaultsClient};
use faultline_tests::{
    note,
    pki::{remote, Pki},
    prometheus::{sample, scrape},
    require_root, Agent, Lab,
};
use serde_json::Value;
use tokio::{net::TcpSocket, sync::Semaphore};
use tokio_rustls::{
    rustls::{
        self,
        crypto::ring,
        pki_types::{pem::PemObject as _, CertificateDer, ServerName},
        ClientConfig, RootCertStore,
    },
    TlsConnector,
};

const T: &str = "a_handshake_flood_is_summarized_and_penalized_and_the_agent_keeps_its_deadlines";
const PORT: u16 = 7443;
const FLOOD: Duration = Duration::from_secs(30);
/// Handshakes offered a second (the issue asks for at least 1000).
const RATE: u32 = 1100;
/// Handshakes the flood keeps open at once.
const IN_FLIGHT: usize = 256;
const METRICS: &str = "127.0.0.1:9464";

/// What the flooding clients saw.
#[derive(Debug, Default)]
struct Flood {
    attempts: AtomicU64,
    /// Refused with a TLS alert (CertificateRequired): a handshake the agent ran.
    alerts: AtomicU64,
    /// Closed before a ServerHello: the agent did no TLS work (a penalty, or a limit).
    closed: AtomicU64,
    /// The TCP connection itself failed or timed out.
    connect_failed: AtomicU64,
    /// Anything else (a handshake that finished: must not happen).
    other: AtomicU64,
}

fn count(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

fn get(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

/// Offers `RATE` handshakes a second to `target` for `FLOOD`, each a new TCP connection and a
/// TLS 1.3 client that trusts the agent's CA and presents no certificate. Runs on the calling
/// thread, whose network namespace the sockets get.
fn flood(target: SocketAddr, ca: &[u8], flood: Arc<Flood>) -> Result<Duration> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca) {
        roots.add(cert?)?;
    }
    let config = ClientConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = TlsConnector::from(Arc::new(config));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let slots = Arc::new(Semaphore::new(IN_FLIGHT));
        let mut tick = tokio::time::interval(Duration::from_secs(1) / RATE);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let started = Instant::now();
        while started.elapsed() < FLOOD {
            tick.tick().await;
            let slot = Arc::clone(&slots).acquire_owned().await?;
            count(&flood.attempts);
            let (connector, flood) = (connector.clone(), Arc::clone(&flood));
            tokio::spawn(async move {
                let _slot = slot;
                attempt(target, &connector, &flood).await;
            });
        }
        let offered = started.elapsed();
        let _all = slots.acquire_many(IN_FLIGHT as u32).await?;
        Ok(offered)
    })
}

async fn attempt(target: SocketAddr, connector: &TlsConnector, flood: &Flood) {
    let limit = Duration::from_secs(5);
    let tcp = async {
        let socket = TcpSocket::new_v4()?;
        // A reset on close: no TIME_WAIT on the client's side for 30 000 ports.
        socket.set_zero_linger()?;
        socket.connect(target).await
    };
    let tcp = match tokio::time::timeout(limit, tcp).await {
        Ok(Ok(tcp)) => tcp,
        _ => return count(&flood.connect_failed),
    };
    let name = ServerName::from(target.ip());
    let handshake = tokio::time::timeout(limit, async {
        use tokio::io::AsyncReadExt as _;
        // TLS 1.3: the client finishes its side first; the refusal is the alert it then reads.
        let mut stream = connector.connect(name, tcp).await?;
        let mut byte = [0u8; 1];
        stream.read(&mut byte).await
    })
    .await;
    match handshake {
        Ok(Err(e)) if e.to_string().contains("CertificateRequired") => count(&flood.alerts),
        Ok(Err(e))
            if matches!(
                e.kind(),
                std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset
            ) =>
        {
            count(&flood.closed)
        }
        Ok(Ok(0)) => count(&flood.closed),
        _ => count(&flood.other),
    }
}

/// `Agent/Info` on the unix socket every 50 ms for `length`: how long each answer took.
async fn info_latencies(
    channel: tonic::transport::Channel,
    length: Duration,
) -> Result<Vec<Duration>> {
    let mut info = AgentClient::new(channel);
    let mut latencies = Vec::new();
    let started = Instant::now();
    while started.elapsed() < length {
        let asked = Instant::now();
        info.info(pb::InfoRequest {}).await?;
        latencies.push(asked.elapsed());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    latencies.sort();
    Ok(latencies)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[index]
}

fn system_time(t: &prost_types::Timestamp) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::new(t.seconds as u64, t.nanos as u32)
}

#[test]
fn a_handshake_flood_is_summarized_and_penalized_and_the_agent_keeps_its_deadlines() -> Result<()> {
    if !require_root(T) {
        return Ok(());
    }
    let lab = Lab::named("ffl")?;
    // The clients' side: ports enough for 30 000 connections.
    lab.b
        .ns
        .exec_ok(&["sysctl", "-q", "net.ipv4.ip_local_port_range=1024 65000"])?;
    let pki = Pki::new(&lab.a.v4.to_string())?;
    let addr = format!("{}:{PORT}", lab.a.v4);
    let mut args = pki.serve_args_with_admin(&addr)?;
    args.extend(
        [
            "--refusal-summary-interval",
            "10s",
            "--metrics-listen",
            METRICS,
        ]
        .map(str::to_owned),
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut agent = Agent::start_with(&lab.a.ns, &args)?;
    let audit_path = agent.state_dir().join("audit.log");
    let url = format!("https://{addr}");
    ensure!(
        remote(&lab.a.ns, &pki, &url, "carol", &["ls"])?
            .status
            .success(),
        "the listener does not serve a client with a certificate before the flood"
    );

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    // What this machine allows without a flood: other work shares its CPUs.
    let quiet = runtime.block_on(async {
        let channel = connect(&AgentAddress::Unix(agent.socket())).await?;
        info_latencies(channel, Duration::from_secs(5)).await
    })?;
    let quiet_p99 = percentile(&quiet, 0.99);
    let id = agent.apply(&[
        "block", "--dir", "in", "--proto", "tcp", "--port", "8080", "--for", "15s",
    ])?;
    let audit_before = fs::metadata(&audit_path).map(|m| m.len()).unwrap_or(0);
    let ca = fs::read(pki.path("ca/ca.pem"))?;
    let target: SocketAddr = addr.parse()?;
    let counts = Arc::new(Flood::default());

    let (offered, latencies, reverted_late, served) = thread::scope(|scope| -> Result<_> {
        let flooding = {
            let counts = Arc::clone(&counts);
            let ns = &lab.b.ns;
            scope.spawn(move || ns.run(|| flood(target, &ca, counts)))
        };
        // A client with a certificate, from another address (the agent's own namespace),
        // during the flood: the penalty is the flooding source's alone.
        let served = scope.spawn(|| -> Result<Vec<(bool, Duration)>> {
            let mut served = Vec::new();
            for _ in 0..3 {
                thread::sleep(Duration::from_secs(8));
                let started = Instant::now();
                let ok = remote(&lab.a.ns, &pki, &url, "carol", &["ls"])?
                    .status
                    .success();
                served.push((ok, started.elapsed()));
            }
            Ok(served)
        });
        let socket = agent.socket();
        let (latencies, reverted_late) = runtime.block_on(async {
            let channel = connect(&AgentAddress::Unix(socket)).await?;
            let watch = {
                let mut faults = FaultsClient::new(channel.clone());
                let id = id.clone();
                tokio::spawn(async move {
                    loop {
                        let fault = faults
                            .get(pb::GetRequest { id: id.clone() })
                            .await?
                            .into_inner();
                        if fault.state == pb::FaultState::Reverted as i32 {
                            let seen = SystemTime::now();
                            let deadline = system_time(&fault.deadline.context("no deadline")?);
                            return anyhow::Ok(seen.duration_since(deadline).unwrap_or_default());
                        }
                        ensure!(
                            fault.state == pb::FaultState::Active as i32
                                || fault.state == pb::FaultState::Reverting as i32,
                            "the fault is {fault:?}"
                        );
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                })
            };
            let latencies = info_latencies(channel, FLOOD).await?;
            anyhow::Ok((latencies, watch.await??))
        })?;
        let offered = flooding.join().expect("the flood thread")??;
        let served = served.join().expect("the client thread")?;
        Ok((offered, latencies, reverted_late, served))
    })?;

    // In-flight handshakes end within the timeout; then the counters stand still.
    thread::sleep(Duration::from_secs(2));
    let page = scrape(&lab.a.ns, METRICS)?;
    let refused = sample(&page, "faultline_refusals_total{stage=\"handshake\"}")?;
    let summarized = sample(&page, "faultline_refusals_summarized_total")?;
    let drops = sample(&page, "faultline_penalty_drops_total")?;
    let penalties = sample(&page, "faultline_source_penalties_total")?;
    let limited: f64 = page
        .lines()
        .filter(|l| l.starts_with("faultline_limit_refusals_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    // The last summary is written at shutdown.
    agent.terminate()?;
    let audit_after = fs::metadata(&audit_path)?.len();
    let lines: Vec<Value> = fs::read_to_string(&audit_path)?
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    let one_by_one = lines.iter().filter(|l| l["rpc"] == "tls-handshake").count();
    let summaries: Vec<&Value> = lines
        .iter()
        .filter(|l| l["rpc"] == "refusal-summary")
        .collect();
    let summed = |field: &str| -> u64 {
        summaries
            .iter()
            .filter_map(|l| l["refusals"][field].as_u64())
            .sum()
    };
    let log = agent.log();
    let warned = log
        .lines()
        .filter(|l| l.contains("refused at the TLS handshake"))
        .count();

    let attempts = get(&counts.attempts);
    let rate = attempts as f64 / offered.as_secs_f64();
    let sorted = latencies;
    let p50 = percentile(&sorted, 0.5);
    let p99 = percentile(&sorted, 0.99);
    note(
        T,
        format!(
            "flood: {attempts} handshakes offered in {offered:.1?} ({rate:.0}/s): {} refused with \
             an alert, {} closed unanswered, {} TCP failures, {} other; agent: {refused} \
             refused, {summarized} summarized, {penalties} penalties, {drops} penalty drops, \
             {limited} limit closes",
            get(&counts.alerts),
            get(&counts.closed),
            get(&counts.connect_failed),
            get(&counts.other),
        ),
    );
    note(
        T,
        format!(
            "audit log +{} bytes ({one_by_one} handshake lines, {} summaries); {warned} log \
             lines of refusals; unix-socket Info p50 {p50:.1?} p99 {p99:.1?} max {:.1?} over {} \
             calls (before the flood: p99 {quiet_p99:.1?}); revert {reverted_late:.1?} after the deadline; the client with a \
             certificate: {served:?}",
            audit_after - audit_before,
            summaries.len(),
            sorted.last().copied().unwrap_or_default(),
            sorted.len(),
        ),
    );

    ensure!(
        rate >= 1000.0,
        "the flood offered {rate:.0} handshakes a second, not the 1000 the test is about"
    );
    ensure!(
        get(&counts.other) == 0,
        "{} flooding clients were not refused",
        get(&counts.other)
    );
    ensure!(
        audit_after - audit_before <= 8 * 1024,
        "the audit log grew by {} bytes during the flood",
        audit_after - audit_before
    );
    ensure!(
        (1..=20).contains(&one_by_one) && warned <= 20,
        "{one_by_one} handshake refusals audited one by one and {warned} logged, expected the \
         first few only"
    );
    ensure!(
        summaries.len() >= 3
            && summaries
                .iter()
                .all(|l| l["who"]["peer"] == lab.b.v4.to_string()),
        "expected a summary line per 10 s interval for {}: {summaries:#?}",
        lab.b.v4
    );
    ensure!(
        (one_by_one as u64 + summed("refused")) as f64 == refused
            && summed("dropped_while_penalized") as f64 == drops
            && summed("refused") as f64 == summarized,
        "the audit log counts {one_by_one} + {} refusals and {} drops; Prometheus {refused} \
         ({summarized} summarized) and {drops}",
        summed("refused"),
        summed("dropped_while_penalized")
    );
    ensure!(
        drops > 0.0 && penalties > 0.0,
        "the flooding source was never penalized"
    );
    ensure!(
        served.iter().all(|(ok, _)| *ok),
        "a client with a certificate from another address was refused during the flood: \
         {served:?}"
    );
    // 50 ms, unless this machine's own load already slows answers without a flood (a
    // quiet p99 above 25 ms): then the flood may not make them more than twice as slow.
    let bound = Duration::from_millis(50).max(quiet_p99 * 2);
    ensure!(
        p99 < bound,
        "unix-socket calls took {p99:?} at the 99th percentile during the flood ({quiet_p99:?} \
         before it)"
    );
    ensure!(
        reverted_late <= Duration::from_millis(100),
        "the fault was reverted {reverted_late:?} after its deadline"
    );
    agent.assert_clean()
}
