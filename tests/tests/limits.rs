//! The limits on callers, each met for real and counted in Prometheus: Watch subscriptions per
//! caller (unix socket), calls under way on one TLS connection, the request size, connections
//! open at once on the remote listener, and the handshake timeout (a client in namespace `b`
//! that connects and says nothing).

use std::{
    fs,
    io::Read as _,
    net::TcpStream,
    time::{Duration, Instant},
};

use anyhow::{ensure, Context as _, Result};
use faultline::api::{connect, AgentAddress};
use faultline_proto::v1::{self as pb, faults_client::FaultsClient};
use faultline_tests::{
    note,
    pki::Pki,
    prometheus::{sample, scrape},
    require_root, Agent, Lab,
};
use tonic::{
    transport::{Certificate, ClientTlsConfig, Endpoint, Identity},
    Code,
};

const T: &str = "each_limit_refuses_what_is_beyond_it_and_counts_it";
const PORT: u16 = 7443;
const METRICS: &str = "127.0.0.1:9464";

async fn watch(
    client: &mut FaultsClient<tonic::transport::Channel>,
) -> Result<tonic::Streaming<pb::FaultEvent>, tonic::Status> {
    client
        .watch(pb::WatchRequest {
            fault_id: String::new(),
        })
        .await
        .map(tonic::Response::into_inner)
}

#[test]
fn each_limit_refuses_what_is_beyond_it_and_counts_it() -> Result<()> {
    if !require_root(T) {
        return Ok(());
    }
    let lab = Lab::named("ffl")?;
    let pki = Pki::new(&lab.a.v4.to_string())?;
    let addr = format!("{}:{PORT}", lab.a.v4);
    let mut args = pki.serve_args_with_admin(&addr)?;
    args.extend(
        [
            "--metrics-listen",
            METRICS,
            "--max-subscriptions",
            "3",
            "--max-streams",
            "2",
            "--max-message-size",
            "2KiB",
            "--max-connections",
            "3",
            "--handshake-timeout",
            "1s",
        ]
        .map(str::to_owned),
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let agent = Agent::start_with(&lab.a.ns, &args)?;

    // The unix socket: root's fourth Watch, and a request of 32 long labels.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (subscription, size) = runtime.block_on(async {
        let channel = connect(&AgentAddress::Unix(agent.socket())).await?;
        let mut client = FaultsClient::new(channel);
        let mut open = Vec::new();
        for _ in 0..3 {
            open.push(watch(&mut client).await?);
        }
        let fourth = watch(&mut client).await.err().context("a fourth Watch")?;
        drop(open.pop());
        // Given back when the client goes away: a Watch opens again.
        let deadline = Instant::now() + Duration::from_secs(5);
        while watch(&mut client).await.is_err() {
            ensure!(
                Instant::now() < deadline,
                "the closed Watch was not given back"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let labels = (0..32)
            .map(|i| (format!("k{i}"), "v".repeat(200)))
            .collect();
        let large = client
            .apply(pb::ApplyRequest {
                labels,
                ..Default::default()
            })
            .await
            .err()
            .context("a large request")?;
        anyhow::Ok((fourth, large))
    })?;
    ensure!(
        subscription.code() == Code::ResourceExhausted
            && subscription
                .message()
                .contains("uid 0 has 3 Watch and Metrics/Stream calls open")
            && subscription.message().contains("--max-subscriptions 3"),
        "a fourth Watch was answered {subscription:?}"
    );
    ensure!(
        size.code() == Code::OutOfRange,
        "a request of 7 KiB was answered {size:?}"
    );

    // The remote listener: a third call under way on one connection.
    let pem = |path: &str| fs::read(pki.path(path));
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(pem("ca/ca.pem")?))
        .identity(Identity::from_pem(
            pem("carol/client.pem")?,
            pem("carol/client-key.pem")?,
        ));
    let url = format!("https://{addr}");
    let streams = lab.b.ns.run(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async {
            let channel = Endpoint::from_shared(url)?
                .tls_config(tls)?
                .connect()
                .await?;
            let mut client = FaultsClient::new(channel);
            let _first = watch(&mut client).await?;
            let _second = watch(&mut client).await?;
            let third = watch(&mut client).await.err().context("a third call")?;
            anyhow::Ok(third)
        })
    })??;
    ensure!(
        streams.code() == Code::ResourceExhausted
            && streams
                .message()
                .contains("this connection has 2 calls under way")
            && streams.message().contains("--max-streams"),
        "a third call on one connection was answered {streams:?}"
    );

    // Connections that never start their handshake: the fourth is closed at once (three open
    // at most), the first three after the handshake timeout. (After the agent has seen the
    // connection above close.)
    std::thread::sleep(Duration::from_millis(500));
    let silent = lab.b.ns.run(|| -> Result<Vec<Duration>> {
        let started = Instant::now();
        let mut streams = (0..4)
            .map(|_| TcpStream::connect(&addr))
            .collect::<std::io::Result<Vec<_>>>()?;
        let mut closed = Vec::new();
        for stream in streams.iter_mut().rev() {
            stream.set_read_timeout(Some(Duration::from_secs(5)))?;
            let mut byte = [0u8; 1];
            // 0 bytes: closed by the agent; an error: reset, also closed.
            let _ = stream.read(&mut byte);
            closed.push(started.elapsed());
        }
        Ok(closed)
    })??;
    note(
        T,
        format!("silent connections closed after {silent:.2?} (the beyond-the-limit one first)"),
    );
    ensure!(
        silent[0] < Duration::from_millis(500),
        "the connection beyond --max-connections was closed after {:?}",
        silent[0]
    );
    ensure!(
        silent[1..]
            .iter()
            .all(|d| *d >= Duration::from_millis(900) && *d < Duration::from_secs(4)),
        "silent connections were closed after {silent:?}, expected the 1 s handshake timeout"
    );

    let page = scrape(&lab.a.ns, METRICS)?;
    for limit in [
        "subscriptions",
        "message_size",
        "streams",
        "connections",
        "handshake_timeout",
    ] {
        let count = sample(
            &page,
            &format!("faultline_limit_refusals_total{{limit=\"{limit}\"}}"),
        )?;
        ensure!(count >= 1.0, "limit {limit} counted {count}");
    }
    agent.assert_clean()
}
