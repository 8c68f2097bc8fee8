//! How the CLI prints faults (text for people, `--output json` for scripts) and how failures
//! become exit statuses:
//! 0 ok, 1 internal error, 2 invalid argument, 3 not found, 4 refused (missing kernel
//! feature, safety guard, conflict), 5 agent unreachable, 6 permission denied, 7 experiment
//! aborted (guard breach, agent lost, Ctrl-C; everything was reverted).

use std::{
    fmt,
    process::ExitCode,
    time::{Duration, SystemTime},
};

use faultline_proto::v1 as pb;
use serde_json::{json, Value};
use tokio_rustls::rustls;
use tonic::Code;

use super::{args::Output, view::FaultView};

#[derive(Debug)]
pub(crate) struct Failure {
    code: u8,
    message: String,
}

impl Failure {
    pub(crate) fn internal(message: impl Into<String>) -> Self {
        Self {
            code: 1,
            message: message.into(),
        }
    }

    /// An experiment that ended early: a guard breached, an agent was lost, or the operator
    /// stopped it (exit status 7); everything it applied was reverted.
    pub(crate) fn aborted(message: impl Into<String>) -> Self {
        Self {
            code: 7,
            message: message.into(),
        }
    }

    /// A command line the CLI itself refuses (exit status 2, as for an invalid request).
    pub(crate) fn usage(message: impl Into<String>) -> Self {
        Self {
            code: 2,
            message: message.into(),
        }
    }

    /// Something named does not exist (exit status 3, as for an unknown fault).
    pub(crate) fn not_found(message: impl Into<String>) -> Self {
        Self {
            code: 3,
            message: message.into(),
        }
    }

    /// The agent would not do it (exit status 4, as for a conflict or the safety guard).
    pub(crate) fn refused(message: impl Into<String>) -> Self {
        Self {
            code: 4,
            message: message.into(),
        }
    }

    pub(crate) fn unreachable(agent: &impl fmt::Display, error: impl fmt::Display) -> Self {
        Self {
            code: 5,
            message: format!(
                "cannot reach the agent at {agent}: {error} (is `faultline serve` running? --agent or FAULTLINE_AGENT point elsewhere)"
            ),
        }
    }

    /// A failed connection: a TLS failure says which side's certificate was refused.
    pub(crate) fn connect(
        agent: &impl fmt::Display,
        error: &(dyn std::error::Error + 'static),
    ) -> Self {
        match tls_failure(error) {
            Some(TlsFailure::Refused(alert)) => Self::refused_certificate(&alert),
            Some(TlsFailure::Untrusted(why)) => Self {
                code: 5,
                message: format!(
                    "the agent at {agent} is not trusted: {why} (is --ca the CA that signed the \
                     agent's certificate, and does --agent name a host or address in it?)"
                ),
            },
            None => Self::unreachable(agent, error_chain(error)),
        }
    }

    fn refused_certificate(alert: &str) -> Self {
        Self {
            code: 6,
            message: format!(
                "the agent refused this client's certificate at the TLS handshake ({alert}): \
                 --tls-cert must be signed by the CA the agent trusts (serve --client-ca) and be \
                 valid now"
            ),
        }
    }

    pub(crate) fn exit_code(&self) -> ExitCode {
        ExitCode::from(self.code)
    }
}

/// A TLS handshake that failed, as the CLI explains it.
enum TlsFailure {
    /// The agent ended the handshake with an alert: it refused this client's certificate.
    Refused(String),
    /// This side refused the agent's certificate.
    Untrusted(String),
}

/// The TLS failure somewhere in an error's causes. rustls reports through `io::Error`, and
/// HTTP/2 keeps only the text of an I/O error that ends a connection, so an alert that arrives
/// during the first call is recognised by rustls's wording.
fn tls_failure(error: &(dyn std::error::Error + 'static)) -> Option<TlsFailure> {
    let mut current = Some(error);
    while let Some(e) = current {
        let tls = e.downcast_ref::<rustls::Error>().or_else(|| {
            e.downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        });
        match tls {
            Some(tls @ rustls::Error::AlertReceived(_)) => {
                return Some(TlsFailure::Refused(tls.to_string()))
            }
            Some(tls @ rustls::Error::InvalidCertificate(_)) => {
                return Some(TlsFailure::Untrusted(tls.to_string()))
            }
            Some(_) => return None,
            None => {}
        }
        const ALERT: &str = "received fatal alert: ";
        let text = e.to_string();
        if let Some(at) = text.find(ALERT) {
            let name: String = text[at + ALERT.len()..]
                .chars()
                .take_while(char::is_ascii_alphanumeric)
                .collect();
            return Some(TlsFailure::Refused(format!("{ALERT}{name}")));
        }
        current = e.source();
    }
    None
}

/// An error with its causes, `outer: inner: innermost`: transport errors say only "transport
/// error" themselves, and the cause (a refused certificate, a closed port) is what helps.
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let next = s.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = s.source();
    }
    text
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<tonic::Status> for Failure {
    fn from(status: tonic::Status) -> Self {
        // With TLS 1.3 the agent judges the client's certificate after the client considers the
        // handshake done: its refusal arrives as the first call's transport error.
        if let Some(TlsFailure::Refused(alert)) = tls_failure(&status) {
            return Self::refused_certificate(&alert);
        }
        let code = match status.code() {
            Code::InvalidArgument | Code::OutOfRange => 2,
            Code::NotFound => 3,
            Code::FailedPrecondition | Code::AlreadyExists | Code::Aborted => 4,
            Code::Unavailable => 5,
            Code::PermissionDenied | Code::Unauthenticated => 6,
            _ => 1,
        };
        let message = match std::error::Error::source(&status) {
            // "transport error" alone says nothing of what broke.
            Some(source) => format!("{}: {}", status.message(), error_chain(source)),
            None if status.message().is_empty() => {
                format!("the agent answered {:?}", status.code())
            }
            None => status.message().to_owned(),
        };
        Self { code, message }
    }
}

/// The agent's fault as the CLI shows it: whatever the agent sent, a kind this CLI does not
/// know included.
pub(crate) fn fault(f: pb::Fault) -> FaultView {
    FaultView::new(f)
}

/// A fault as JSON (see [`FaultView::json`]).
pub(crate) fn fault_json(f: &FaultView) -> Value {
    f.json()
}

pub(crate) fn print_json(value: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_default()
    );
}

fn remaining_text(f: &FaultView) -> String {
    if f.is_finished() {
        "-".to_owned()
    } else {
        whole_seconds(f.remaining(SystemTime::now()))
    }
}

/// `1s/2s`: the time left before the lease runs out, of its period; `-` without a lease or
/// once the fault has ended.
fn lease_text(f: &FaultView) -> String {
    match (f.lease(), f.lease_remaining(SystemTime::now())) {
        (Some(lease), Some(left)) if !f.is_finished() => {
            format!(
                "{}/{}",
                whole_seconds(left),
                humantime::format_duration(lease)
            )
        }
        _ => "-".to_owned(),
    }
}

fn whole_seconds(d: Duration) -> String {
    humantime::format_duration(Duration::from_secs(d.as_secs())).to_string()
}

/// A table of faults for people.
pub(crate) fn print_faults(faults: &[FaultView], output: Output) {
    match output {
        Output::Json => print_json(&Value::Array(faults.iter().map(fault_json).collect())),
        Output::Text => {
            if faults.is_empty() {
                println!("no faults");
                return;
            }
            println!(
                "{:<12}  {:<6}  {:<9}  {:>9}  {:>9}  {:>6}  WHAT",
                "ID", "KIND", "STATE", "REMAINING", "LEASE", "HIT"
            );
            for f in faults {
                let mut what = f.summary();
                if f.is_finished() && !f.reason().is_empty() {
                    what.push_str(&format!(" [{}]", f.reason()));
                }
                println!(
                    "{:<12}  {:<6}  {:<9}  {:>9}  {:>9}  {:>6}  {what}",
                    f.id(),
                    f.kind(),
                    f.state(),
                    remaining_text(f),
                    lease_text(f),
                    f.hits_text()
                );
            }
        }
    }
}

/// One fault in detail.
pub(crate) fn print_fault(f: &FaultView, output: Output) {
    match output {
        Output::Json => print_json(&fault_json(f)),
        Output::Text => {
            let time = |t: Option<SystemTime>| {
                t.map(|t| humantime::format_rfc3339_seconds(t).to_string())
                    .unwrap_or_else(|| "-".to_owned())
            };
            println!("id:        {}", f.id());
            println!("kind:      {}", f.kind());
            println!("what:      {}", f.summary());
            println!("state:     {}", f.state());
            if !f.reason().is_empty() {
                println!("reason:    {}", f.reason());
            }
            println!("created:   {}", time(f.created_at()));
            println!(
                "deadline:  {} ({} left)",
                time(f.deadline()),
                remaining_text(f)
            );
            if let Some(lease) = f.lease() {
                match f.lease_expires_at() {
                    Some(at) if !f.is_finished() => println!(
                        "lease:     {}, expires {} unless renewed ({} left)",
                        humantime::format_duration(lease),
                        humantime::format_rfc3339_seconds(at),
                        whole_seconds(f.lease_remaining(SystemTime::now()).unwrap_or_default())
                    ),
                    _ => println!("lease:     {}", humantime::format_duration(lease)),
                }
            }
            for (k, v) in f.labels() {
                println!("label:     {k}={v}");
            }
            if let Some(effect) = f.effect() {
                println!(
                    "effect:    {} {}{}",
                    effect.hits,
                    effect.hits_are,
                    if f.ineffective() {
                        " -- INEFFECTIVE: it has acted on nothing; is it aimed at the right target?"
                    } else {
                        ""
                    }
                );
                for c in &effect.counters {
                    println!("counter:   {} {}", c.name, c.value);
                }
            }
            for line in f.plan() {
                println!("plan:      {line}");
            }
            for line in f.objects() {
                println!("object:    {line}");
            }
            for line in f.changes() {
                println!("changed:   {line} (not by faultline)");
            }
            for line in f.residue() {
                println!("residue:   {line}");
            }
            for line in f.status() {
                println!("status:    {line}");
            }
        }
    }
}

pub(crate) fn print_plan(plan: &[String], output: Output) {
    match output {
        Output::Json => print_json(&json!({ "plan": plan })),
        Output::Text => {
            println!("dry run: nothing was applied; the agent would do:");
            for line in plan {
                println!("  {line}");
            }
        }
    }
}
