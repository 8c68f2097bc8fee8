//! The agent's logs as log pipelines read them: with `--log-format json` every line is one JSON
//! object, and the lines of a fault's life carry the fields operators filter on (the fault's
//! id and kind, the reason it was reverted, who called).

use anyhow::{ensure, Context as _, Result};
use faultline_tests::{require_root, Agent, Lab};
use serde_json::Value;

#[test]
fn json_logs_carry_fault_id_kind_reason_and_caller() -> Result<()> {
    let test = "json_logs_carry_fault_id_kind_reason_and_caller";
    if !require_root(test) {
        return Ok(());
    }
    let lab = Lab::new()?;
    let mut agent = Agent::start_with(&lab.b.ns, &["--log-format", "json"])?;
    let id = agent.apply(&[
        "block", "--dir", "in", "--proto", "tcp", "--port", "8093", "--for", "60s",
    ])?;
    agent.revert(&id)?;
    agent.terminate()?;

    let log = agent.log();
    let lines: Vec<Value> = log
        .lines()
        .map(|line| {
            serde_json::from_str(line).with_context(|| format!("a log line is not JSON: {line}"))
        })
        .collect::<Result<_>>()?;
    ensure!(
        lines.iter().all(|l| l["timestamp"].is_string()
            && l["level"].is_string()
            && l["message"].is_string()),
        "log lines without timestamp, level or message:\n{log}"
    );
    let find = |message: &str, rpc: Option<&str>| {
        lines.iter().find(|l| {
            l["message"] == message
                && l["id"] == id.as_str()
                && rpc.is_none_or(|rpc| l["rpc"] == rpc)
        })
    };
    let active = find("fault active", None).context(format!("no `fault active` line:\n{log}"))?;
    ensure!(active["kind"] == "block", "{active}");
    let reverted =
        find("fault reverted", None).context(format!("no `fault reverted` line:\n{log}"))?;
    ensure!(
        reverted["kind"] == "block" && reverted["reason"] == "requested",
        "{reverted}"
    );
    for rpc in ["Faults/Apply", "Faults/Revert"] {
        let call = find("call", Some(rpc)).context(format!("no line for {rpc}:\n{log}"))?;
        ensure!(
            call["caller"] == "uid 0" && call["kind"] == "block" && call["result"] == "ok",
            "{call}"
        );
    }
    agent.assert_clean()
}
