//! Chaos Toolkit drives faultline through the extension in integrations/chaostoolkit
//! (`chaostoolkit-faultline`, module `chaosfaultline`), as operators run it: `chaos` from PyPI and
//! the extension built from the repository, both installed by `cargo xtask prereqs` into the
//! Python test environment. `chaos discover` lists the extension's activities; its stubs were
//! generated from this proto/; `chaos run` of an experiment between two network namespaces
//! deviates under a block it applies and its rollback reverts the block; a `chaos` killed
//! mid-experiment leaves a fault that its lease reverts.
//!
//! These are integration tests rather than an xtask step because they need what the harness
//! gives every test: namespaces, an agent per test, and their removal even when a test fails.

use std::{
    collections::BTreeMap,
    fs,
    net::SocketAddr,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{ensure, Context as _, Result};
use faultline_tests::{
    note, process, python, require_root,
    traffic::{tcp_connect, tcp_listen},
    Agent, Lab, Netns,
};
use serde_json::{json, Value};

const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// How long a `chaos run` may take here (start-up imports included) before the test fails.
const RUN_TIMEOUT: Duration = Duration::from_secs(120);

/// Every activity the extension exports, by module.
const ACTIVITIES: &[(&str, &str, &str)] = &[
    ("action", "chaosfaultline.faults.actions", "apply_block"),
    ("action", "chaosfaultline.faults.actions", "apply_loss"),
    ("action", "chaosfaultline.faults.actions", "apply_netem"),
    ("action", "chaosfaultline.faults.actions", "apply_rate"),
    (
        "action",
        "chaosfaultline.faults.actions",
        "apply_cpu_stress",
    ),
    (
        "action",
        "chaosfaultline.faults.actions",
        "apply_memory_stress",
    ),
    ("action", "chaosfaultline.faults.actions", "revert_fault"),
    (
        "action",
        "chaosfaultline.faults.actions",
        "revert_experiment_faults",
    ),
    ("probe", "chaosfaultline.faults.probes", "fault_state"),
    ("probe", "chaosfaultline.faults.probes", "fault_details"),
    (
        "probe",
        "chaosfaultline.faults.probes",
        "count_active_faults",
    ),
    ("probe", "chaosfaultline.metrics.probes", "metrics_snapshot"),
    (
        "probe",
        "chaosfaultline.metrics.probes",
        "tcp_connect_health",
    ),
    (
        "probe",
        "chaosfaultline.metrics.probes",
        "probe_target_status",
    ),
    ("probe", "chaosfaultline.metrics.probes", "probe_target_up"),
];

/// A `chaos` command with its log in `dir`, its working directory, and settings of its own
/// there (none: the machine's ~/.chaostoolkit stays out of the test); on host `ns` when given.
fn chaos(dir: &Path, ns: Option<&Netns>) -> Result<Command> {
    let program = python::program("chaos")?;
    let mut command = match ns {
        Some(ns) => ns.command(program),
        None => Command::new(program),
    };
    command
        .current_dir(dir)
        .arg("--no-version-check")
        .arg("--settings")
        .arg(dir.join("settings.yaml"))
        .arg("--log-file")
        .arg(dir.join("chaostoolkit.log"));
    Ok(command)
}

/// A `chaos run` in its own process group, killed with its children when dropped.
struct ChaosRun(Child);

impl ChaosRun {
    fn spawn(mut command: Command) -> Result<Self> {
        command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0);
        Ok(Self(command.spawn().context("starting chaos")?))
    }

    /// SIGKILL to the whole run: `chaos` and whatever it started.
    fn kill(&mut self) -> Result<()> {
        // SAFETY: kill(2) on the process group this test created; no memory involved.
        unsafe { libc::kill(-(self.0.id() as i32), libc::SIGKILL) };
        self.0.wait()?;
        Ok(())
    }
}

impl Drop for ChaosRun {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.kill();
        }
    }
}

#[test]
fn chaos_discover_lists_the_extension_activities() -> Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("faultline-chaos-")
        .tempdir()?;
    let discovery = dir.path().join("discovery.json");
    let mut command = chaos(dir.path(), None)?;
    command
        .args([
            "discover",
            "--no-system-info",
            "--no-install",
            "--discovery-path",
        ])
        .arg(&discovery)
        .arg("chaostoolkit-faultline");
    process::run_ok(command)?;
    let found: Value = serde_json::from_str(&fs::read_to_string(&discovery)?)?;
    ensure!(
        found["extension"]["name"] == "chaostoolkit-faultline",
        "discovery names another extension: {}",
        found["extension"]
    );
    let listed: Vec<(String, String, String)> = found["activities"]
        .as_array()
        .context("no activities in the discovery")?
        .iter()
        .map(|a| {
            let text = |k: &str| a[k].as_str().unwrap_or_default().to_owned();
            (text("type"), text("mod"), text("name"))
        })
        .collect();
    let mut expected: Vec<(String, String, String)> = ACTIVITIES
        .iter()
        .map(|(t, m, n)| (t.to_string(), m.to_string(), n.to_string()))
        .collect();
    expected.sort();
    let mut listed_sorted = listed.clone();
    listed_sorted.sort();
    ensure!(
        listed_sorted == expected,
        "chaos discover listed {listed:?}, expected {expected:?}"
    );
    // Each activity is documented and its arguments typed, as `chaos init` shows them.
    for activity in found["activities"].as_array().into_iter().flatten() {
        ensure!(
            activity["doc"]
                .as_str()
                .is_some_and(|d| !d.trim().is_empty()),
            "{} has no docstring",
            activity["name"]
        );
    }
    Ok(())
}

#[test]
fn the_extension_stubs_were_generated_from_this_proto() -> Result<()> {
    let proto = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../proto");
    let script = "import hashlib, json, pathlib, sys\n\
                  from chaosfaultline.proto import PROTO_SHA256\n\
                  root = pathlib.Path(sys.argv[1])\n\
                  repo = {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()\n\
                  \x20       for p in root.glob('faultline/v1/*.proto')}\n\
                  print(json.dumps({'built': PROTO_SHA256, 'repo': repo}))\n";
    let mut command = Command::new(python::program("python3")?);
    // Not from integrations/chaostoolkit, whose source tree has no stubs.
    command
        .current_dir(std::env::temp_dir())
        .args(["-c", script])
        .arg(&proto);
    let digests: Value = serde_json::from_str(&process::run_ok(command)?)?;
    let as_map = |v: &Value| -> BTreeMap<String, String> {
        serde_json::from_value(v.clone()).unwrap_or_default()
    };
    let (built, repo) = (as_map(&digests["built"]), as_map(&digests["repo"]));
    ensure!(
        !repo.is_empty(),
        "no .proto files under {}",
        proto.display()
    );
    ensure!(
        built == repo,
        "the installed chaostoolkit-faultline was built from other .proto files than {} \
         (built from {built:?}, the repository has {repo:?}): `cargo xtask prereqs` rebuilds it",
        proto.display()
    );
    Ok(())
}

/// The Python environment's interpreter connecting once to `to`: the steady state's own check
/// that the service answers, independent of the agent.
fn connect_probe(to: SocketAddr) -> Result<Value> {
    let python = python::program("python3")?;
    Ok(json!({
        "type": "probe",
        "name": "the service accepts a TCP connection",
        "tolerance": 0,
        "provider": {
            "type": "process",
            "path": python,
            "arguments": [
                "-c",
                "import socket, sys; socket.create_connection((sys.argv[1], int(sys.argv[2])), \
                 timeout=1).close()",
                to.ip().to_string(),
                to.port().to_string(),
            ],
        },
    }))
}

fn activity(kind: &str, name: &str, module: &str, func: &str, arguments: Value) -> Value {
    json!({
        "type": kind,
        "name": name,
        "provider": {"type": "python", "module": module, "func": func, "arguments": arguments},
    })
}

/// `chaos run` of `experiment` on host `ns`, which must deviate (`chaos run` then exits 1):
/// its journal and the log of Chaos Toolkit and the extension.
fn run_deviating(experiment: &Value, ns: &Netns) -> Result<(Value, String)> {
    let dir = tempfile::Builder::new()
        .prefix("faultline-chaos-")
        .tempdir()?;
    let path = dir.path().join("experiment.json");
    fs::write(&path, serde_json::to_vec_pretty(experiment)?)?;
    let journal_path = dir.path().join("journal.json");
    let mut command = chaos(dir.path(), Some(ns))?;
    command
        .args(["run", "--journal-path"])
        .arg(&journal_path)
        .arg(&path);
    let output = process::run(command, RUN_TIMEOUT)?;
    let log = fs::read_to_string(dir.path().join("chaostoolkit.log")).unwrap_or_default();
    let described = format!(
        "{}\n--- chaostoolkit.log\n{log}",
        process::describe("chaos run", &output)
    );
    ensure!(output.status.code() == Some(1), "{described}");
    let journal: Value = fs::read_to_string(&journal_path)
        .map_err(anyhow::Error::from)
        .and_then(|text| Ok(serde_json::from_str(&text)?))
        .with_context(|| format!("no journal from chaos run: {described}"))?;
    ensure!(
        journal["deviated"] == true && journal["status"] == "completed",
        "the journal does not show a completed run that deviated: deviated {}, status {}\n{described}",
        journal["deviated"],
        journal["status"]
    );
    ensure!(
        journal["steady_states"]["before"]["steady_state_met"] == true,
        "the steady state was not met before the method: {:#}",
        journal["steady_states"]["before"]
    );
    Ok((journal, log))
}

#[test]
fn an_experiment_deviates_under_a_block_and_its_rollback_reverts_it() -> Result<()> {
    let test = "an_experiment_deviates_under_a_block_and_its_rollback_reverts_it";
    if !require_root(test) {
        return Ok(());
    }
    let lab = Lab::new()?;
    let service = SocketAddr::from((lab.b.v4, 8091));
    let _listener = tcp_listen(&lab.b.ns, service)?;
    // The agent runs on the client host `a`: it blocks `a`'s connects to the service, probes
    // the service, and counts `a`'s connects in the kernel.
    let target = service.to_string();
    let agent = Agent::start_with(
        &lab.a.ns,
        &[
            "--probe",
            &target,
            "--probe-interval",
            "300ms",
            "--probe-timeout",
            "300ms",
        ],
    )?;
    agent.wait_for_tcp_health()?;

    let lease = 3.0;
    let experiment = json!({
        "version": "1.0.0",
        "title": "The service answers while its port is blocked",
        "description": "A block of the service's port on the client host shows as a deviation.",
        "configuration": {"faultline_agent": agent.socket()},
        "steady-state-hypothesis": {
            "title": "The service answers",
            "probes": [
                connect_probe(service)?,
                json!({
                    "type": "probe",
                    "name": "the agent's probe of the service is up",
                    "tolerance": true,
                    "provider": {
                        "type": "python",
                        "module": "chaosfaultline.metrics.probes",
                        "func": "probe_target_up",
                        "arguments": {"target": target},
                    },
                }),
            ],
        },
        "method": [
            // Paused past the lease: the fault is still active only if the lease was renewed.
            json!({
                "type": "action",
                "name": "block the service",
                "provider": {
                    "type": "python",
                    "module": "chaosfaultline.faults.actions",
                    "func": "apply_block",
                    "arguments": {
                        "direction": "egress",
                        "match": {"protocol": "tcp", "ports": [service.port()],
                                  "cidrs": [service.ip().to_string()]},
                        "reject": true,
                        "duration": 120,
                        "lease": lease,
                        "name": "service-block",
                    },
                },
                "pauses": {"after": lease + 1.5},
            }),
            activity("probe", "the block's state", "chaosfaultline.faults.probes",
                     "fault_state", json!({"fault": "service-block"})),
            activity("probe", "connects to the service", "chaosfaultline.metrics.probes",
                     "tcp_connect_health", json!({"destination": target})),
        ],
        "rollbacks": [
            activity("action", "revert what the experiment applied",
                     "chaosfaultline.faults.actions", "revert_experiment_faults", json!({})),
        ],
    });
    // `chaos` runs on host `a` too: the process probe connects from there.
    let (journal, log) = run_deviating(&experiment, &lab.a.ns)?;

    let after = &journal["steady_states"]["after"];
    ensure!(
        after["steady_state_met"] == false
            && after["probes"]
                .as_array()
                .is_some_and(|p| p.iter().all(|p| p["tolerance_met"] == false)),
        "after the method, both probes should have seen the service blocked: {after:#}"
    );

    let run = journal["run"].as_array().context("no run in the journal")?;
    ensure!(
        run.len() == 3,
        "the journal has {} method entries",
        run.len()
    );
    let applied = &run[0]["output"];
    let id = applied["id"]
        .as_str()
        .with_context(|| format!("apply_block returned no fault: {:#}", run[0]))?
        .to_owned();
    ensure!(
        applied["state"] == "active" && applied["labels"]["chaostoolkit/name"] == "service-block",
        "apply_block returned {applied:#}"
    );
    ensure!(
        run[1]["status"] == "succeeded" && run[1]["output"] == "active",
        "the fault was not active {lease}s + 1.5s after it was applied with a {lease}s lease: the \
         lease was not renewed: {:#}",
        run[1]
    );
    let health = &run[2]["output"];
    ensure!(
        health["refused"].as_u64().is_some_and(|n| n > 0),
        "the agent counted no refused connect to {target} under the block: {:#}",
        run[2]
    );
    note(test, format!("connect health under the block: {health}"));

    let rollbacks = journal["rollbacks"]
        .as_array()
        .context("no rollbacks in the journal")?;
    ensure!(
        rollbacks.len() == 1
            && rollbacks[0]["status"] == "succeeded"
            && rollbacks[0]["output"][0]["id"] == id.as_str()
            && rollbacks[0]["output"][0]["state"] == "reverted",
        "the rollback did not revert {id}: {rollbacks:#?}"
    );
    ensure!(
        log.contains(&format!("lease renewals of fault {id} stopped")),
        "the extension did not log that it stopped renewing {id}:\n{log}"
    );

    let fault = agent.fault(&id)?;
    ensure!(
        fault["state"] == "reverted" && fault["reason"] == "requested",
        "the agent shows {fault:#}"
    );
    ensure!(
        tcp_connect(&lab.a.ns, service, CONNECT_TIMEOUT)?.is_ok(),
        "connects to {service} still fail after the rollback"
    );
    ensure!(
        agent.faults()?.iter().all(|f| f["state"] != "active"),
        "faults still active: {:#?}",
        agent.faults()?
    );
    agent.assert_clean()
}

/// `faultline certs ...`, failing with its output unless it exits 0.
fn certs(args: &[&str]) -> Result<()> {
    let mut command = Command::new(process::faultline_bin()?);
    command.arg("certs").args(args);
    process::run_ok(command).map(drop)
}

#[test]
fn an_experiment_reaches_the_agent_over_mutual_tls_with_its_secrets() -> Result<()> {
    let test = "an_experiment_reaches_the_agent_over_mutual_tls_with_its_secrets";
    if !require_root(test) {
        return Ok(());
    }
    let lab = Lab::new()?;
    let service = SocketAddr::from((lab.b.v4, 8094));
    let _listener = tcp_listen(&lab.b.ns, service)?;

    let pki = tempfile::Builder::new()
        .prefix("faultline-pki-")
        .tempdir()?;
    let p = |name: &str| pki.path().join(name).display().to_string();
    certs(&["ca", "--out", &p("ca")])?;
    let agent_ip = lab.b.v4.to_string();
    certs(&[
        "agent",
        "--ca-dir",
        &p("ca"),
        "--name",
        "agent",
        "--ip",
        &agent_ip,
        "--out",
        &p("agent"),
    ])?;
    certs(&[
        "client",
        "--ca-dir",
        &p("ca"),
        "--name",
        "alice",
        "--out",
        &p("alice"),
    ])?;
    let policy = pki.path().join("policy.toml");
    fs::write(
        &policy,
        "[operator]\ncertificates = [\"alice\"]\nkinds = [\"block\"]\nmax_duration = \"5m\"\n",
    )?;
    let listen = SocketAddr::from((lab.b.v4, 7443)).to_string();
    let agent = Agent::start_with(
        &lab.b.ns,
        &[
            "--listen",
            &listen,
            "--tls-cert",
            &p("agent/agent.pem"),
            "--tls-key",
            &p("agent/agent-key.pem"),
            "--client-ca",
            &p("agent/ca.pem"),
            "--policy",
            &policy.display().to_string(),
        ],
    )?;

    let lease = 3.0;
    // Every activity that talks to the agent names the secrets that hold alice's files.
    let over_tls = |name: &str, kind: &str, func: &str, module: &str, arguments: Value| {
        json!({
            "type": kind,
            "name": name,
            "provider": {"type": "python", "module": module, "func": func,
                         "arguments": arguments, "secrets": ["faultline"]},
        })
    };
    let mut apply = over_tls(
        "block the service",
        "action",
        "apply_block",
        "chaosfaultline.faults.actions",
        json!({
            "direction": "ingress",
            "match": {"protocol": "tcp", "ports": [service.port()]},
            "reject": true,
            "duration": 120,
            "lease": lease,
        }),
    );
    apply["pauses"] = json!({"after": lease + 1.5});
    let experiment = json!({
        "version": "1.0.0",
        "title": "The service answers while its port is blocked, through the remote listener",
        "description": "The extension reaches the agent over mutual TLS with a client certificate.",
        "configuration": {"faultline_agent": format!("https://{listen}")},
        "secrets": {"faultline": {
            "faultline_tls_cert": p("alice/client.pem"),
            "faultline_tls_key": p("alice/client-key.pem"),
            "faultline_ca": p("alice/ca.pem"),
        }},
        "steady-state-hypothesis": {"title": "The service answers", "probes": [connect_probe(service)?]},
        "method": [
            apply,
            over_tls("the block's state", "probe", "fault_state",
                     "chaosfaultline.faults.probes", json!({})),
        ],
        "rollbacks": [
            activity("action", "revert what the experiment applied",
                     "chaosfaultline.faults.actions", "revert_experiment_faults", json!({})),
        ],
    });
    let (journal, log) = run_deviating(&experiment, &lab.a.ns)?;
    let run = journal["run"].as_array().context("no run in the journal")?;
    let id = run[0]["output"]["id"]
        .as_str()
        .with_context(|| format!("apply_block returned no fault: {:#}\n{log}", run[0]))?
        .to_owned();
    ensure!(
        run.get(1).is_some_and(|r| r["output"] == "active"),
        "the fault was not active past its lease: renewals over TLS failed: {run:#?}\n{log}"
    );
    ensure!(
        journal["rollbacks"][0]["status"] == "succeeded"
            && journal["rollbacks"][0]["output"][0]["state"] == "reverted",
        "the rollback did not revert {id}: {:#}",
        journal["rollbacks"]
    );
    // The agent saw alice's certificate: the audit log names her for the apply and the revert.
    let audit = fs::read_to_string(agent.state_dir().join("audit.log"))?;
    for rpc in ["Faults/Apply", "Faults/Revert"] {
        ensure!(
            audit
                .lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .any(|l| {
                    l["rpc"] == rpc
                        && l["who"]["identity"] == "alice"
                        && l["who"]["auth"] == "tls-client-certificate"
                        && l["result"] == "ok"
                }),
            "no {rpc} by alice over TLS in the audit log:\n{audit}"
        );
    }
    let fault = agent.fault(&id)?;
    ensure!(
        fault["state"] == "reverted" && fault["reason"] == "requested",
        "the agent shows {fault:#}"
    );
    agent.assert_clean()
}

#[test]
fn a_killed_chaos_run_leaves_a_fault_that_its_lease_reverts() -> Result<()> {
    let test = "a_killed_chaos_run_leaves_a_fault_that_its_lease_reverts";
    if !require_root(test) {
        return Ok(());
    }
    let lab = Lab::new()?;
    let service = SocketAddr::from((lab.b.v4, 8092));
    let _listener = tcp_listen(&lab.b.ns, service)?;
    let agent = Agent::start(&lab.b.ns)?;

    let lease = Duration::from_secs(2);
    let experiment = json!({
        "version": "1.0.0",
        "title": "A run that is killed while its fault is applied",
        "description": "The method applies a block with a lease, then waits far longer.",
        "configuration": {"faultline_agent": agent.socket()},
        "method": [json!({
            "type": "action",
            "name": "block the service",
            "provider": {
                "type": "python",
                "module": "chaosfaultline.faults.actions",
                "func": "apply_block",
                "arguments": {
                    "direction": "ingress",
                    "match": {"protocol": "tcp", "ports": [service.port()]},
                    "reject": true,
                    "duration": 300,
                    "lease": lease.as_secs_f64(),
                },
            },
            "pauses": {"after": 240},
        })],
        "rollbacks": [],
    });
    let dir = tempfile::Builder::new()
        .prefix("faultline-chaos-")
        .tempdir()?;
    let path = dir.path().join("experiment.json");
    fs::write(&path, serde_json::to_vec_pretty(&experiment)?)?;
    let mut command = chaos(dir.path(), None)?;
    command
        .args(["run", "--journal-path"])
        .arg(dir.path().join("journal.json"))
        .arg(&path);
    let mut run = ChaosRun::spawn(command)?;

    let started = Instant::now();
    let id = loop {
        let active = agent
            .faults()?
            .into_iter()
            .find(|f| f["state"] == "active" && f["labels"]["client"] == "chaostoolkit-faultline");
        if let Some(fault) = active {
            break fault["id"]
                .as_str()
                .context("a fault without an id")?
                .to_owned();
        }
        ensure!(
            started.elapsed() < RUN_TIMEOUT && matches!(run.0.try_wait(), Ok(None)),
            "chaos applied no fault (it ended, or took over {RUN_TIMEOUT:?}); its log:\n{}",
            fs::read_to_string(dir.path().join("chaostoolkit.log")).unwrap_or_default()
        );
        thread::sleep(Duration::from_millis(200));
    };
    // Three leases on, the fault is there only because the extension renews it.
    thread::sleep(lease * 3);
    let fault = agent.fault(&id)?;
    ensure!(
        fault["state"] == "active",
        "the fault ended while chaos ran and renewed its lease: {fault:#}"
    );
    ensure!(
        tcp_connect(&lab.a.ns, service, CONNECT_TIMEOUT)?.is_err(),
        "the block is not in effect"
    );

    run.kill()?;
    let killed = Instant::now();
    let limit = lease + Duration::from_secs(1) + Duration::from_secs(2);
    let took = loop {
        if tcp_connect(&lab.a.ns, service, CONNECT_TIMEOUT)?.is_ok() {
            break killed.elapsed();
        }
        ensure!(
            killed.elapsed() < limit,
            "connects to {service} were still refused {limit:?} after chaos was killed"
        );
        thread::sleep(Duration::from_millis(50));
    };
    note(
        test,
        format!("the block ended {took:?} after chaos was killed"),
    );
    // The lease runs from the last renewal, at most a lease before the kill, and the agent
    // reverts within a second of its expiry.
    ensure!(
        took <= lease + Duration::from_secs(1) + CONNECT_TIMEOUT,
        "the block ended {took:?} after the kill, later than the lease and a second"
    );
    let fault = agent.settled_fault(&id, Duration::from_millis(500))?;
    ensure!(
        fault["state"] == "reverted" && fault["reason"] == "lease expired",
        "the agent shows {fault:#}"
    );
    agent.assert_clean()
}
