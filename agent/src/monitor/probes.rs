//! Active probes: TCP connects to configured targets on an interval, so that the health of what
//! a host depends on is known even when the host itself is idle. Each target has one task; the
//! latest result and running totals are kept for snapshots.

use std::{
    fmt,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use serde::{Deserialize, Serialize};
use thiserror::Error;
use tokio::{net::TcpStream, task::JoinHandle};

/// A probe target as configured: `HOST:PORT`, `[v6]:PORT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    pub(crate) text: String,
}

#[derive(Debug, Error, PartialEq, Eq)]
#[error("probe target {text:?}: {reason}")]
pub(crate) struct TargetError {
    pub(crate) text: String,
    pub(crate) reason: String,
}

impl Target {
    /// Checks the form, not the name: names are resolved at every check, as a client would.
    pub(crate) fn parse(text: &str) -> Result<Self, TargetError> {
        let error = |reason: &str| TargetError {
            text: text.to_owned(),
            reason: reason.to_owned(),
        };
        let (host, port) = text.rsplit_once(':').ok_or_else(|| {
            error("expected HOST:PORT, e.g. db.internal:5432 or [2001:db8::1]:443")
        })?;
        if host.is_empty() || (host.contains(':') && !host.starts_with('[')) {
            return Err(error(
                "expected HOST:PORT; write an IPv6 address in brackets, e.g. [2001:db8::1]:443",
            ));
        }
        match port.parse::<u16>() {
            Ok(p) if p != 0 => Ok(Self {
                text: text.to_owned(),
            }),
            _ => Err(error("the port must be 1-65535")),
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// What is known of one target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct ProbeStatus {
    pub(crate) target: String,
    /// The last check connected.
    pub(crate) up: bool,
    /// Connect time of the last check, when it succeeded.
    pub(crate) last_latency_seconds: Option<f64>,
    pub(crate) last_error: String,
    pub(crate) successes: u64,
    pub(crate) failures: u64,
    /// Unix milliseconds of the last check; 0 before the first.
    pub(crate) last_checked_unix_ms: u64,
}

/// The probe tasks and their results; dropping it stops them.
pub(crate) struct Probes {
    states: Vec<Arc<Mutex<ProbeStatus>>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Probes {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Probes {
    /// Starts one task per target on the current runtime.
    pub(crate) fn start(targets: &[Target], interval: Duration, timeout: Duration) -> Self {
        let mut states = Vec::new();
        let mut tasks = Vec::new();
        for target in targets {
            let state = Arc::new(Mutex::new(ProbeStatus {
                target: target.text.clone(),
                up: false,
                last_latency_seconds: None,
                last_error: "not checked yet".to_owned(),
                successes: 0,
                failures: 0,
                last_checked_unix_ms: 0,
            }));
            states.push(Arc::clone(&state));
            let target = target.clone();
            tasks.push(tokio::spawn(async move {
                let mut tick = tokio::time::interval(interval);
                // A slow check must not be followed by a burst of catch-up checks.
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    let result = check(&target, timeout).await;
                    let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
                    s.last_checked_unix_ms = SystemTime::now()
                        .duration_since(SystemTime::UNIX_EPOCH)
                        .map(|d| d.as_millis() as u64)
                        .unwrap_or_default();
                    match result {
                        Ok(latency) => {
                            s.up = true;
                            s.successes += 1;
                            s.last_latency_seconds = Some(latency.as_secs_f64());
                            s.last_error.clear();
                        }
                        Err(e) => {
                            s.up = false;
                            s.failures += 1;
                            s.last_latency_seconds = None;
                            s.last_error = e;
                        }
                    }
                }
            }));
        }
        Self { states, tasks }
    }

    pub(crate) fn snapshot(&self) -> Vec<ProbeStatus> {
        self.states
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).clone())
            .collect()
    }
}

/// One connect: its duration, or why it failed. Names are resolved first and the connect is
/// timed alone, so a slow resolver does not read as a slow service.
async fn check(target: &Target, timeout: Duration) -> Result<Duration, String> {
    let addrs: Vec<SocketAddr> =
        tokio::time::timeout(timeout, tokio::net::lookup_host(&target.text))
            .await
            .map_err(|_| {
                format!(
                    "resolving took longer than {}",
                    humantime::format_duration(timeout)
                )
            })?
            .map_err(|e| format!("cannot resolve: {e}"))?
            .collect();
    let addr = *addrs.first().ok_or("the name resolved to no address")?;
    let started = Instant::now();
    match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(Ok(_stream)) => Ok(started.elapsed()),
        Ok(Err(e)) => Err(format!("connect to {addr}: {e}")),
        Err(_) => Err(format!(
            "connect to {addr} timed out after {}",
            humantime::format_duration(timeout)
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_checked_for_form() {
        assert!(Target::parse("db.internal:5432").is_ok());
        assert!(Target::parse("[2001:db8::1]:443").is_ok());
        assert!(Target::parse("10.0.0.1:80").is_ok());
        assert!(Target::parse("2001:db8::1:443").is_err());
        assert!(Target::parse("host").is_err());
        assert!(Target::parse("host:0").is_err());
        assert!(Target::parse(":80").is_err());
    }

    #[tokio::test]
    async fn a_listening_port_is_up_and_a_closed_one_down() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let open = Target::parse(&listener.local_addr().unwrap().to_string()).unwrap();
        let closed_port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let closed = Target::parse(&format!("127.0.0.1:{closed_port}")).unwrap();
        let probes = Probes::start(
            &[open, closed],
            Duration::from_millis(50),
            Duration::from_secs(1),
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        let s = probes.snapshot();
        assert!(s[0].up && s[0].successes >= 2, "{:?}", s[0]);
        assert!(s[0].last_latency_seconds.unwrap() > 0.0);
        assert!(!s[1].up && s[1].failures >= 2, "{:?}", s[1]);
        assert!(s[1].last_error.contains("refused"), "{}", s[1].last_error);
    }
}
