//! An independent client: Python's grpcio (the gRPC C core, as Python, Ruby and C++ tools use
//! it) calls the agent on its unix socket with default channel settings, through stubs that
//! grpcio-tools generates from proto/ at test time. The C core sends the socket's path as
//! `:authority`; the agent must answer it all the same. The Python environment is made by
//! `cargo xtask prereqs` (tests/python/requirements.txt).

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::SocketAddr,
    path::PathBuf,
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{bail, ensure, Context as _, Result};
use faultline_tests::{
    python, require_root,
    traffic::{tcp_connect, tcp_listen},
    Agent, Lab,
};

const PORT: u16 = 8090;
const CONNECT_TIMEOUT: Duration = Duration::from_millis(1500);

#[test]
fn grpcio_with_default_settings_checks_health_lists_services_applies_and_reverts() -> Result<()> {
    let test = "grpcio_with_default_settings_checks_health_lists_services_applies_and_reverts";
    if !require_root(test) {
        return Ok(());
    }
    let python = python::program("python3")?;
    let lab = Lab::new()?;
    let to_port = SocketAddr::from((lab.b.v4, PORT));
    let _listener = tcp_listen(&lab.b.ns, to_port)?;
    let agent = Agent::start(&lab.b.ns)?;

    let proto = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../proto");
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("python/grpc_client.py");
    let mut client = Command::new(python)
        .arg(script)
        .arg("--socket")
        .arg(agent.socket())
        .arg("--proto")
        .arg(proto)
        .arg("--port")
        .arg(PORT.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("starting the Python client")?;
    let mut stdin = client.stdin.take().context("the client's stdin")?;
    let mut lines = BufReader::new(client.stdout.take().context("the client's stdout")?).lines();
    let mut next_line = |what: &str| -> Result<String> {
        match lines.next() {
            Some(line) => Ok(line?),
            None => {
                bail!("the Python client ended before it printed {what} (its traceback is above)")
            }
        }
    };

    ensure!(next_line("health")? == "health SERVING");
    let services = next_line("services")?;
    for expected in [
        "faultline.v1.Agent",
        "faultline.v1.Faults",
        "faultline.v1.Metrics",
        "grpc.health.v1.Health",
    ] {
        ensure!(
            services.contains(expected),
            "reflection listed {services:?}, without {expected}"
        );
    }

    let applied = next_line("applied")?;
    let fields: Vec<&str> = applied.split(' ').collect();
    ensure!(
        matches!(fields.as_slice(), ["applied", _, "FAULT_STATE_ACTIVE"]),
        "Apply answered {applied:?}"
    );
    let id = fields[1].to_owned();
    let fault = agent.fault(&id)?;
    ensure!(
        fault["labels"]["client"] == "python-grpcio",
        "the agent shows {fault}, without the client's label"
    );
    let refused = tcp_connect(&lab.a.ns, to_port, CONNECT_TIMEOUT)?;
    ensure!(
        refused.is_err(),
        "a connect to {to_port} succeeded under the block the Python client applied"
    );

    writeln!(stdin, "revert")?;
    let reverted = next_line("reverted")?;
    ensure!(
        reverted == format!("reverted {id} FAULT_STATE_REVERTED requested"),
        "Revert answered {reverted:?}"
    );
    ensure!(client.wait()?.success(), "the Python client failed");
    tcp_connect(&lab.a.ns, to_port, CONNECT_TIMEOUT)?
        .map_err(|e| anyhow::anyhow!("connect to {to_port} after the revert: {e}"))?;
    agent.assert_clean()
}
