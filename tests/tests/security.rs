//! The remote listener and authorization, as clients meet them: an agent in one namespace
//! serves mutual TLS on its veth address, the CLI calls it from the other namespace with
//! certificates made by `faultline certs`, and local callers of other uids reach the unix
//! socket through `--socket-group`. Checked: the handshake refuses clients without a
//! certificate of the agent's CA (none, another CA, expired); each role may do what the policy
//! gives it and is refused the rest with the rule that refused it (exit status 6); the
//! listener's port is protected by the safety guard; the audit log holds one line per change
//! and per refusal, naming who.
//!
//! A non-root caller reaches the socket only because the test lets it: the agent's directory
//! gets mode 0711 (search only) and the socket, with --socket-group 65534, mode 0660. The
//! agent still decides by uid what the caller may do.

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::Path,
    process::{Command, Output},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context as _, Result};
use faultline_proto::v1::{self as pb, faults_client::FaultsClient};
use faultline_tests::{
    pki::{remote, Pki},
    process::{self, faultline_bin},
    require_root, unique, Agent, Lab, Netns,
};
use serde_json::Value;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

const PORT: u16 = 7443;
/// uid and gid of `nobody` / `nogroup` on Debian: a non-root caller of the unix socket.
const NOBODY: &str = "65534";

const POLICY: &str = r#"
[admin]
certificates = ["carol"]

[operator]
certificates = ["alice", "dave"]
kinds = ["block"]
max_duration = "1m"

[observer]
certificates = ["bob"]
uids = [65534]
"#;

/// The CLI on the agent's unix socket as uid `uid` (gid 65534, no other groups).
fn local_as(agent: &Agent, uid: &str, args: &[&str]) -> Result<Output> {
    let mut command = Command::new("setpriv");
    command
        .args(["--reuid", uid, "--regid", NOBODY, "--clear-groups"])
        .arg(faultline_bin()?)
        .arg("--agent")
        .arg(agent.socket())
        .args(args);
    process::run(command, process::COMMAND_TIMEOUT)
}

/// Fails unless the command exited `code` with `expected` in its stderr; returns its stdout.
fn expect(output: &Output, code: i32, expected: &str, what: &str) -> Result<String> {
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(
        output.status.code() == Some(code) && stderr.contains(expected),
        "{what}: expected exit status {code} and {expected:?} on stderr; {}",
        process::describe(what, output)
    );
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Lets uid 65534 search the agent's private directory, so that it reaches the socket, which
/// --socket-group opens to gid 65534.
fn open_socket_dir(agent: &Agent) -> Result<()> {
    let dir = agent.socket();
    let dir = dir.parent().context("the socket has no directory")?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o711))?;
    Ok(())
}

/// `faultline block` of TCP port 8080, inbound, detached, printing JSON.
fn block(duration: &str) -> [&str; 12] {
    [
        "block", "--dir", "in", "--proto", "tcp", "--port", "8080", "--for", duration, "--detach",
        "-o", "json",
    ]
}

fn audit_lines(agent: &Agent) -> Result<Vec<Value>> {
    let path = agent.state_dir().join("audit.log");
    let text = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .map(|line| serde_json::from_str(line).with_context(|| format!("not JSON: {line}")))
        .collect()
}

/// The audit lines of TLS handshake refusals, once there are `count` (they are written by the
/// agent as it closes the connection, which may be just after the client gave up).
fn handshake_refusals(agent: &Agent, count: usize) -> Result<Vec<Value>> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let refusals: Vec<Value> = audit_lines(agent)?
            .into_iter()
            .filter(|l| l["rpc"] == "tls-handshake")
            .collect();
        if refusals.len() >= count || Instant::now() > deadline {
            return Ok(refusals);
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// A gRPC List over TLS that presents no client certificate, from inside `ns`.
fn list_without_certificate(ns: &Netns, url: &str, ca: &Path) -> Result<Result<(), String>> {
    let ca = fs::read(ca)?;
    let url = url.to_owned();
    ns.run(move || -> Result<Result<(), String>> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async move {
            let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca));
            let channel = match Endpoint::from_shared(url)?.tls_config(tls)?.connect().await {
                Ok(channel) => channel,
                Err(e) => return Ok(Err(chain(&e))),
            };
            Ok(FaultsClient::new(channel)
                .list(pb::ListRequest {})
                .await
                .map(drop)
                .map_err(|status| chain(&status)))
        })
    })?
}

fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(&format!(": {s}"));
        source = s.source();
    }
    text
}

#[test]
fn the_handshake_refuses_clients_without_a_valid_certificate_of_the_agents_ca() -> Result<()> {
    if !require_root("the_handshake_refuses_clients_without_a_valid_certificate_of_the_agents_ca") {
        return Ok(());
    }
    let lab = Lab::new()?;
    let pki = Pki::new(&lab.a.v4.to_string())?;
    let policy = pki.path("policy.toml");
    fs::write(&policy, POLICY)?;
    let addr = format!("{}:{PORT}", lab.a.v4);
    let url = format!("https://{addr}");
    let mut args = pki.serve_args(&addr);
    args.extend(["--policy".into(), policy.display().to_string()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let agent = Agent::start_with(&lab.a.ns, &args)?;

    // The right certificate first: the listener is up and answers.
    let ok = remote(&lab.b.ns, &pki, &url, "bob", &["ls"])?;
    expect(&ok, 0, "", "an observer's ls")?;

    let none = list_without_certificate(&lab.b.ns, &url, &pki.path("ca/ca.pem"))?;
    match none {
        Ok(()) => bail!("a client without a certificate was served"),
        Err(e) => ensure!(
            e.contains("CertificateRequired"),
            "a client without a certificate failed, but not for that: {e}"
        ),
    }
    let refused = "the agent refused this client's certificate at the TLS handshake";
    let rogue = remote(&lab.b.ns, &pki, &url, "rogue", &["ls"])?;
    expect(&rogue, 6, refused, "ls with a certificate of another CA")?;
    let expired = remote(&lab.b.ns, &pki, &url, "dave", &["ls"])?;
    expect(&expired, 6, refused, "ls with an expired certificate")?;
    expect(
        &expired,
        6,
        "CertificateExpired",
        "ls with an expired certificate",
    )?;

    let refusals = handshake_refusals(&agent, 3)?;
    let errors: Vec<&str> = refusals
        .iter()
        .filter_map(|l| l["error"].as_str())
        .collect();
    ensure!(
        refusals.len() == 3,
        "expected 3 handshake refusals in the audit log, found {refusals:#?}"
    );
    for (expected, what) in [
        ("no certificates", "no certificate"),
        ("BadSignature", "another CA"),
        ("expired", "an expired certificate"),
    ] {
        ensure!(
            errors.iter().any(|e| e.contains(expected)),
            "no handshake refusal for {what} ({expected:?}) in {errors:#?}"
        );
    }
    for line in &refusals {
        ensure!(
            line["result"] == "denied"
                && line["who"]["auth"] == "tls-client-certificate"
                && line["who"]["peer"]
                    .as_str()
                    .is_some_and(|p| p.starts_with(&lab.b.v4.to_string())),
            "a handshake refusal without its client's address: {line:#}"
        );
    }
    agent.assert_clean()
}

#[test]
fn roles_decide_what_each_caller_may_do_and_the_audit_log_names_who() -> Result<()> {
    if !require_root("roles_decide_what_each_caller_may_do_and_the_audit_log_names_who") {
        return Ok(());
    }
    let lab = Lab::new()?;
    let pki = Pki::new(&lab.a.v4.to_string())?;
    let policy = pki.path("policy.toml");
    fs::write(&policy, POLICY)?;
    let addr = format!("{}:{PORT}", lab.a.v4);
    let url = format!("https://{addr}");
    let mut args = pki.serve_args(&addr);
    args.extend([
        "--policy".into(),
        policy.display().to_string(),
        "--socket-group".into(),
        NOBODY.into(),
    ]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let agent = Agent::start_with(&lab.a.ns, &args)?;
    let cli = |identity: &str, args: &[&str]| remote(&lab.b.ns, &pki, &url, identity, args);

    // Observer: reads, and nothing else.
    let listed = expect(&cli("bob", &["ls", "-o", "json"])?, 0, "", "bob: ls")?;
    ensure!(listed.trim() == "[]", "bob's ls printed {listed}");
    expect(
        &cli("bob", &block("30s"))?,
        6,
        "bob (observer): Faults/Apply is not allowed",
        "bob: block",
    )?;

    // Operator: block for at most a minute.
    let applied = expect(&cli("alice", &block("30s"))?, 0, "", "alice: block 30s")?;
    let fault: Value = serde_json::from_str(&applied)
        .with_context(|| format!("alice's block printed {applied}"))?;
    let blocked = fault["id"].as_str().context("no fault id")?.to_owned();
    ensure!(fault["state"] == "active", "alice's block is {fault:#}");
    expect(
        &cli("alice", &block("5m"))?,
        6,
        "alice (operator): duration 5m is longer than the operator maximum of 1m",
        "alice: block 5m",
    )?;
    // UDP only: a loss of everything would touch the TLS session, which the guard protects.
    let loss = [
        "loss",
        "--dev",
        &lab.a.dev,
        "--dir",
        "out",
        "--proto",
        "udp",
        "--percent",
        "10",
        "--for",
        "30s",
        "--detach",
        "-o",
        "json",
    ];
    expect(
        &cli("alice", &loss)?,
        6,
        "alice (operator): fault kind loss is not allowed (allowed: block)",
        "alice: loss",
    )?;
    expect(
        &cli("alice", &["revert", &blocked])?,
        0,
        "",
        "alice: revert",
    )?;

    // Admin: any kind; but not the listener's own port while a session runs over it.
    let applied = expect(&cli("carol", &loss)?, 0, "", "carol: loss")?;
    let lost: Value = serde_json::from_str(&applied)?;
    let lost = lost["id"].as_str().context("no fault id")?.to_owned();
    let port = PORT.to_string();
    expect(
        &cli(
            "carol",
            &[
                "block", "--dir", "in", "--proto", "tcp", "--port", &port, "--for", "30s",
            ],
        )?,
        4,
        &format!("on protected port {PORT}"),
        "carol: block the listener's port",
    )?;
    expect(
        &cli("carol", &["revert", "--all"])?,
        0,
        "",
        "carol: revert --all",
    )?;

    // The unix socket: uid 65534 is an observer; uid 65533 is in no role.
    open_socket_dir(&agent)?;
    expect(&local_as(&agent, NOBODY, &["ls"])?, 0, "", "uid 65534: ls")?;
    expect(
        &local_as(&agent, NOBODY, &block("30s"))?,
        6,
        "uid 65534 (observer): Faults/Apply is not allowed",
        "uid 65534: block",
    )?;
    expect(
        &local_as(&agent, "65533", &["ls"])?,
        6,
        "uid 65533: no role in the policy",
        "uid 65533: ls",
    )?;

    // One line per change and per refusal, in order; reads that were allowed leave none.
    let lines: Vec<Value> = audit_lines(&agent)?
        .into_iter()
        .filter(|l| l["rpc"] != "tls-handshake")
        .collect();
    let seen: Vec<(String, String, String, String)> = lines
        .iter()
        .map(|l| {
            let s = |v: &Value| v.as_str().unwrap_or("-").to_owned();
            (
                s(&l["rpc"]),
                s(&l["who"]["identity"]),
                s(&l["who"]["role"]),
                s(&l["result"]),
            )
        })
        .collect();
    let expected: Vec<(String, String, String, String)> = [
        ("Faults/Apply", "bob", "observer", "denied"),
        ("Faults/Apply", "alice", "operator", "ok"),
        ("Faults/Apply", "alice", "operator", "denied"),
        ("Faults/Apply", "alice", "operator", "denied"),
        ("Faults/Revert", "alice", "operator", "ok"),
        ("Faults/Apply", "carol", "admin", "ok"),
        ("Faults/Apply", "carol", "admin", "failed"),
        ("Faults/RevertAll", "carol", "admin", "ok"),
        ("Faults/Apply", "uid 65534", "observer", "denied"),
        ("Faults/List", "uid 65533", "-", "denied"),
    ]
    .iter()
    .map(|(a, b, c, d)| (a.to_string(), b.to_string(), c.to_string(), d.to_string()))
    .collect();
    ensure!(
        seen == expected,
        "the audit log holds\n{seen:#?}\nexpected\n{expected:#?}\nlines: {lines:#?}"
    );
    // Who is named with how it was established, and what with its target.
    ensure!(
        lines[1]["who"]["auth"] == "tls-client-certificate"
            && lines[1]["who"]["peer"]
                .as_str()
                .is_some_and(|p| p.starts_with(&lab.b.v4.to_string()))
            && lines[1]["fault"]["id"] == blocked.as_str()
            && lines[1]["fault"]["kind"] == "block"
            && lines[1]["fault"]["summary"]
                .as_str()
                .is_some_and(|s| s.contains("8080")),
        "alice's apply is audited as {:#}",
        lines[1]
    );
    ensure!(
        lines[3]["error"]
            .as_str()
            .is_some_and(|e| e.contains("fault kind loss is not allowed"))
            && lines[3]["code"] == "PermissionDenied",
        "alice's refused loss is audited as {:#}",
        lines[3]
    );
    ensure!(
        lines[4]["fault"]["id"] == blocked.as_str(),
        "alice's revert is audited as {:#}",
        lines[4]
    );
    ensure!(
        lines[6]["code"] == "FailedPrecondition"
            && lines[6]["error"]
                .as_str()
                .is_some_and(|e| e.contains("safety guard")),
        "carol's guarded block is audited as {:#}",
        lines[6]
    );
    ensure!(
        lines[7]["faults"][0]["id"] == lost.as_str(),
        "carol's revert --all is audited as {:#}",
        lines[7]
    );
    ensure!(
        lines[8]["who"]["auth"] == "unix-peer-credentials" && lines[8]["who"]["uid"] == 65534,
        "uid 65534's refusal is audited as {:#}",
        lines[8]
    );
    agent.assert_clean()
}

#[test]
fn without_a_policy_only_root_may_call() -> Result<()> {
    if !require_root("without_a_policy_only_root_may_call") {
        return Ok(());
    }
    let ns = Netns::create(&format!("fl-{}-{}-s", std::process::id(), unique()))?;
    let pki = Pki::new("127.0.0.1")?;
    let addr = format!("127.0.0.1:{PORT}");
    let mut args = pki.serve_args(&addr);
    args.extend(["--socket-group".into(), NOBODY.into()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let agent = Agent::start_with(&ns, &args)?;

    // Root on the unix socket is admin (the harness's own `info` already showed that).
    agent.cli_ok(&["ls"])?;
    expect(
        &remote(&ns, &pki, &format!("https://{addr}"), "carol", &["ls"])?,
        6,
        "carol: the agent has no policy, so it refuses every TLS client",
        "carol: ls without a policy",
    )?;
    open_socket_dir(&agent)?;
    expect(
        &local_as(&agent, NOBODY, &["ls"])?,
        6,
        "uid 65534: the agent has no policy, so only root (uid 0) may call it",
        "uid 65534: ls without a policy",
    )?;
    let lines = audit_lines(&agent)?;
    ensure!(
        lines.len() == 2
            && lines.iter().all(|l| l["result"] == "denied")
            && lines[0]["who"]["identity"] == "carol"
            && lines[1]["who"]["identity"] == "uid 65534",
        "the audit log holds {lines:#?}"
    );
    agent.assert_clean()
}

#[test]
fn the_remote_listener_needs_its_three_tls_files() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut command = Command::new(faultline_bin()?);
    command
        .args(["serve", "--listen", "127.0.0.1:7443", "--socket"])
        .arg(dir.path().join("fl.sock"))
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .args(["--tls-cert", "agent.pem"]);
    let output = process::run(command, process::COMMAND_TIMEOUT)?;
    expect(
        &output,
        2,
        "--listen 127.0.0.1:7443 needs --tls-cert, --tls-key and --client-ca (missing: \
         --tls-key, --client-ca)",
        "serve --listen without --tls-key and --client-ca",
    )?;
    ensure!(
        !dir.path().join("fl.sock").exists() && !dir.path().join("state").exists(),
        "a refused start left files in {}",
        dir.path().display()
    );
    Ok(())
}

/// The controller (`faultline fleet run` in namespace b, over mutual TLS) cuts itself off
/// with the very fault it applies (every packet from b dropped on the agent's side): its
/// renewals stop reaching the agent, which reverts the fault when the lease runs out.
#[test]
fn a_controller_cut_off_by_its_own_fault_loses_the_lease() -> Result<()> {
    const T: &str = "a_controller_cut_off_by_its_own_fault_loses_the_lease";
    if !require_root(T) {
        return Ok(());
    }
    let lab = Lab::new()?;
    let pki = Pki::new(&lab.a.v4.to_string())?;
    let policy = pki.path("policy.toml");
    fs::write(&policy, POLICY)?;
    let addr = format!("{}:{PORT}", lab.a.v4);
    let mut args = pki.serve_args(&addr);
    args.extend(["--policy".into(), policy.display().to_string()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let agent = Agent::start_with(&lab.a.ns, &args)?;
    let experiment = pki.path("cut-off.yaml");
    fs::write(
        &experiment,
        format!(
            "name: cut off\ntargets:\n  - address: https://{addr}\ntls:\n  cert: {}\n  key: {}\n  ca: {}\nduration: 60s\nlease: 2s\nfaults:\n  - fault:\n      kind: block\n      direction: ingress\n      match: {{cidrs: [\"{}/32\"]}}\n",
            pki.path("carol/client.pem").display(),
            pki.path("carol/client-key.pem").display(),
            pki.path("ca/ca.pem").display(),
            lab.b.v4
        ),
    )?;
    // --force: the fault cuts the controller's own session on the listener's port, which the
    // guard protects otherwise.
    let mut controller = lab
        .b
        .ns
        .command(faultline_bin()?)
        .args(["fleet", "run", "--force", &experiment.display().to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let (id, active_seen) = loop {
        if let Some(f) = agent.faults()?.into_iter().find(|f| f["state"] == "active") {
            break (
                f["id"].as_str().context("no id")?.to_owned(),
                Instant::now(),
            );
        }
        if Instant::now() > deadline {
            let _ = controller.kill();
            let out = controller.wait_with_output()?;
            bail!(
                "the controller applied nothing: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        thread::sleep(Duration::from_millis(50));
    };
    let reverted_after = loop {
        let fault = agent.fault(&id)?;
        if fault["state"] == "reverted" {
            ensure!(
                fault["reason"].as_str().unwrap_or("").contains("lease"),
                "reverted for another reason: {fault}"
            );
            break active_seen.elapsed();
        }
        ensure!(
            active_seen.elapsed() < Duration::from_secs(15),
            "still {} 15 s after the controller was cut off",
            fault["state"]
        );
        thread::sleep(Duration::from_millis(50));
    };
    let _ = controller.kill();
    let _ = controller.wait();
    faultline_tests::note(
        T,
        format!("cut off by its own block: the agent reverted {reverted_after:.2?} after the fault was seen active (lease 2 s)"),
    );
    ensure!(
        reverted_after <= Duration::from_secs(3),
        "reverted {reverted_after:?} after activation, expected within lease + 1 s"
    );
    agent.assert_clean()
}
