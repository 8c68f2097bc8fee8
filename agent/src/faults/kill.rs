//! The kill family: signal (SIGKILL unless told otherwise) the processes of a workload, or those
//! whose name matches a regular expression, or both: once when the fault is applied, or again
//! every period while it is active. A kill cannot be undone: reverting the fault stops the
//! repeating, nothing more. Each round's victims (pid, name, time) are the fault's status
//! lines, events, and audit log lines.
//!
//! Never signalled: PID 1, the agent, its ancestors and its own children, kernel threads, and,
//! unless the request says `force`, processes holding an established session on a port the
//! safety guard protects (they are listed as spared).

use std::{
    collections::hash_map::RandomState,
    hash::BuildHasher,
    sync::Arc,
    time::{Duration, SystemTime},
};

use regex::Regex;
use serde::{Deserialize, Serialize};

use super::{check_percent, Claim, Connection, Deadline, Demands, Family, Host, Report, Target};
use crate::{
    errors::{InvalidSpec, KernelError},
    kernel::{
        caps::Capabilities,
        process::{self, Proc, Signalled, Untouchable},
        workload::{Workload, Workloads},
    },
};

/// The shortest `--every`: a round lists processes and reads their names, which takes
/// milliseconds on a busy host.
const MIN_EVERY: Duration = Duration::from_secs(1);
/// The longest `--name` expression accepted.
const MAX_NAME: usize = 1024;

/// Which of the matching processes a round signals.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Pick {
    #[default]
    All,
    /// This many, chosen at random (all, when fewer match).
    Count(u32),
    /// This share of them, rounded up, chosen at random: a share of the matching processes,
    /// not of the host.
    Percent(f64),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct KillSpec {
    /// The workload whose processes are signalled; with `name`, only those that match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) target: Option<Target>,
    /// A regular expression on the process name (comm), or on the command line with `cmdline`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) name: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub(crate) cmdline: bool,
    pub(crate) signal: i32,
    /// Signal again every this long while the fault is active; `None`: once, at apply.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "super::opt_secs"
    )]
    pub(crate) every: Option<Duration>,
    #[serde(default)]
    pub(crate) pick: Pick,
}

/// `KILL`, `SIGKILL`, `kill`, `9`, `SIGRTMIN+2`.
pub(crate) fn parse_signal(text: &str) -> Result<i32, String> {
    let text = text.trim();
    if let Ok(number) = text.parse::<i32>() {
        return Ok(number);
    }
    let upper = text.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    if let Some(offset) = name.strip_prefix("SIGRTMIN+") {
        if let Ok(n) = offset.parse::<i32>() {
            return Ok(libc::SIGRTMIN() + n);
        }
    }
    name.parse::<nix::sys::signal::Signal>()
        .map(|s| s as i32)
        .map_err(|_| {
            format!(
                "{text:?} is not a signal (expected a name like KILL, TERM, SIGSTOP, or a number)"
            )
        })
}

/// `SIGKILL`, or `SIGRTMIN+2`, or the number.
pub(crate) fn signal_name(signal: i32) -> String {
    match nix::sys::signal::Signal::try_from(signal) {
        Ok(s) => s.as_str().to_owned(),
        Err(_) if (libc::SIGRTMIN()..=libc::SIGRTMAX()).contains(&signal) => {
            format!("SIGRTMIN+{}", signal - libc::SIGRTMIN())
        }
        Err(_) => signal.to_string(),
    }
}

impl KillSpec {
    fn regex(&self) -> Result<Option<Regex>, InvalidSpec> {
        self.name
            .as_deref()
            .map(|name| {
                if name.len() > MAX_NAME {
                    return Err(InvalidSpec::new(
                        "name",
                        format!("{} characters, at most {MAX_NAME} are accepted", name.len()),
                    ));
                }
                Regex::new(name).map_err(|e| {
                    InvalidSpec::new(
                        "name",
                        format!("not a regular expression: {e} (expected e.g. ^nginx$)"),
                    )
                })
            })
            .transpose()
    }

    fn field(&self) -> &'static str {
        if self.cmdline {
            "cmdline"
        } else {
            "comm"
        }
    }

    fn round(&self, id: &str, workload: Option<Workload>, host: &Host<'_>) -> Round {
        Round {
            id: id.to_owned(),
            spec: self.clone(),
            regex: self.regex().ok().flatten(),
            workload,
            workloads: Arc::clone(host.workloads),
            report: Arc::clone(&host.report),
            signalled: Arc::clone(host.signalled),
            protected: if host.force {
                Vec::new()
            } else {
                host.protected_ports.to_vec()
            },
        }
    }
}

/// One kill, as the fault repeats it.
struct Round {
    id: String,
    spec: KillSpec,
    regex: Option<Regex>,
    workload: Option<Workload>,
    workloads: Arc<Workloads>,
    report: Arc<dyn Report>,
    signalled: Arc<Signalled>,
    protected: Vec<u16>,
}

/// What a round found: whom to signal, and whom it spared and why.
struct Selection {
    victims: Vec<Proc>,
    spared: Vec<(Proc, String)>,
}

impl Round {
    fn select(&self) -> Selection {
        let candidates = match &self.workload {
            Some(workload) => self.workloads.procs(workload),
            None => process::all(),
        };
        let untouchable = Untouchable::now();
        let holders = process::session_holders(&self.protected);
        let mut matching = Vec::new();
        let mut spared = Vec::new();
        for pid in candidates {
            let Some(p) = Proc::read(pid) else { continue };
            if let Some(regex) = &self.regex {
                let text = if self.spec.cmdline {
                    p.cmdline()
                } else {
                    p.comm.clone()
                };
                if !regex.is_match(&text) {
                    continue;
                }
            }
            if let Some(why) = untouchable.why(&p) {
                // Listed only when named: a host-wide name match does not list every thread.
                if self.regex.is_some() && !p.kthread {
                    spared.push((p, why.to_owned()));
                }
            } else if let Some(port) = holders.get(&pid) {
                spared.push((
                    p,
                    format!("holds a session on protected port {port}; --force signals it too"),
                ));
            } else {
                matching.push(p);
            }
        }
        let n = match self.spec.pick {
            Pick::All => matching.len(),
            Pick::Count(n) => (n as usize).min(matching.len()),
            Pick::Percent(p) => {
                ((matching.len() as f64 * p / 100.0).ceil() as usize).min(matching.len())
            }
        };
        shuffle(&mut matching);
        matching.truncate(n);
        matching.sort_by_key(|p| p.pid);
        Selection {
            victims: matching,
            spared,
        }
    }

    /// Signals this round's victims and reports them.
    fn run(&self) {
        let selection = self.select();
        let at = humantime::format_rfc3339_seconds(SystemTime::now());
        let signal = signal_name(self.spec.signal);
        let mut done = Vec::new();
        let mut failed = Vec::new();
        for p in &selection.victims {
            match process::signal(p, self.spec.signal) {
                Ok(()) => done.push(format!("{} ({})", p.pid, p.comm)),
                // Exited since it was listed: nothing to report.
                Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
                Err(e) => failed.push(format!("{} ({}): {e}", p.pid, p.comm)),
            }
        }
        let mut line = if done.is_empty() {
            format!("{at}: {signal} to no process (none matched)")
        } else {
            format!("{at}: {signal} to {}", done.join(", "))
        };
        if !failed.is_empty() {
            line.push_str(&format!("; failed: {}", failed.join(", ")));
        }
        if !selection.spared.is_empty() {
            let spared: Vec<String> = selection
                .spared
                .iter()
                .map(|(p, why)| format!("{} ({}): {why}", p.pid, p.comm))
                .collect();
            line.push_str(&format!("; spared: {}", spared.join(", ")));
        }
        self.signalled.add(&self.id, done.len() as u64);
        self.report.note(&self.id, line);
    }
}

/// Shuffles in place, for a random choice of victims. `RandomState` is the standard library's
/// randomly seeded hasher: enough to pick processes, and no new dependency.
fn shuffle<T>(items: &mut [T]) {
    let random = RandomState::new();
    for i in (1..items.len()).rev() {
        let j = (random.hash_one(i) % (i as u64 + 1)) as usize;
        items.swap(i, j);
    }
}

impl Family for KillSpec {
    fn validate(&self, host: &Host<'_>) -> Result<(), InvalidSpec> {
        if self.target.is_none() && self.name.is_none() {
            return Err(InvalidSpec::new(
                "target",
                "missing: name a workload (--unit, --container, --pod, --cgroup, --pid), a \
                 process name (--name REGEX), or both",
            ));
        }
        self.regex()?;
        if !(1..=libc::SIGRTMAX()).contains(&self.signal) {
            return Err(InvalidSpec::new(
                "signal",
                format!(
                    "{} is not a signal: expected 1-{} or a name (KILL, TERM, INT, HUP, STOP)",
                    self.signal,
                    libc::SIGRTMAX()
                ),
            ));
        }
        match self.pick {
            Pick::Count(0) => {
                return Err(InvalidSpec::new(
                    "count",
                    "0 processes: expected at least 1",
                ))
            }
            Pick::Percent(p) => {
                check_percent(p, "percent")?;
            }
            _ => {}
        }
        if self.every.is_some_and(|every| every < MIN_EVERY) {
            return Err(InvalidSpec::new(
                "every",
                format!(
                    "shorter than {}: expected e.g. 30s",
                    humantime::format_duration(MIN_EVERY)
                ),
            ));
        }
        if let Some(target) = &self.target {
            target.check(host)?;
            if let Target::Pids(pids) = target {
                let untouchable = Untouchable::now();
                for p in pids.iter().filter_map(|pid| Proc::read(*pid)) {
                    if let Some(why) = untouchable.why(&p) {
                        return Err(InvalidSpec::new(
                            "pid",
                            format!(
                                "{} ({}): {why}; expected the pids of other processes",
                                p.pid, p.comm
                            ),
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    fn missing_capability(&self, caps: &Capabilities) -> Option<(String, String)> {
        (!caps.pidfd.available).then(|| ("pidfds".to_owned(), caps.pidfd.detail.clone()))
    }

    fn claims(&self) -> Vec<Claim> {
        Vec::new()
    }

    /// Sessions on protected ports are spared process by process, as each round finds them.
    fn touches(&self, _conn: &Connection) -> bool {
        false
    }

    fn may_touch_port(&self, _local_port: u16) -> bool {
        false
    }

    fn plan(&self, id: &str, _deadline: Deadline, host: &Host<'_>) -> Vec<String> {
        let mut plan = Vec::new();
        let workload = self.target.as_ref().and_then(|t| t.check(host).ok());
        let mut what = match (&self.target, &workload) {
            (Some(_), Some(w)) => format!("the processes of {} ({})", w.what, w.where_()),
            (Some(t), None) => format!("the processes of {t}"),
            (None, _) => "every process on the host".to_owned(),
        };
        if let Some(name) = &self.name {
            what.push_str(&format!(" whose {} matches /{name}/", self.field()));
        }
        plan.push(format!("find: {what}, at each round"));
        let selection = self.round(id, workload, host).select();
        let now: Vec<String> = selection
            .victims
            .iter()
            .map(|p| format!("{} ({})", p.pid, p.comm))
            .collect();
        plan.push(format!(
            "now: {} would be signalled{}{}",
            now.len(),
            if now.is_empty() { "" } else { ": " },
            now.join(", ")
        ));
        for (p, why) in &selection.spared {
            plan.push(format!("spare: {} ({}): {why}", p.pid, p.comm));
        }
        plan.push(format!(
            "signal: {} to {} of them, through a pidfd, {}",
            signal_name(self.signal),
            self.pick_text(),
            match self.every {
                Some(every) => format!(
                    "at apply and every {} until the fault ends",
                    humantime::format_duration(every)
                ),
                None => "once, at apply".to_owned(),
            }
        ));
        plan.push("never: PID 1, the agent, its ancestors and children, kernel threads".to_owned());
        plan.push(
            "revert: stop the repeating; a kill cannot be undone (killed processes stay dead)"
                .to_owned(),
        );
        plan
    }

    fn apply(&self, id: &str, _deadline: Deadline, host: &Host<'_>) -> Result<(), KernelError> {
        let workload = self
            .target
            .as_ref()
            .map(|t| t.resolve(id, host))
            .transpose()?;
        let round = self.round(id, workload, host);
        round.run();
        if let Some(every) = self.every {
            host.repeats
                .start(id, every, move || round.run())
                .map_err(|e| KernelError::Workers(crate::kernel::workers::WorkerError::Spawn(e)))?;
        }
        Ok(())
    }

    /// A kill cannot be undone: this stops the repeating.
    fn revert(&self, id: &str, host: &Host<'_>) -> Result<(), KernelError> {
        host.repeats.stop(id);
        host.signalled.forget(id);
        Target::release(id, host);
        Ok(())
    }

    fn watched(&self) -> bool {
        self.target.is_some()
    }

    fn target_gone(&self, id: &str, host: &Host<'_>) -> Option<String> {
        Target::gone(id, host)
    }

    /// Nothing the policy's limits bound: `--percent` is a share of the matching processes,
    /// not of the host's packets or CPUs, so `max_percent` does not apply; an operator policy
    /// restricts kill by its kind.
    fn effect(&self, id: &str, host: &Host<'_>) -> Result<super::effect::Effect, KernelError> {
        let n = host.signalled.get(id);
        Ok(super::effect::Effect::new("processes signalled")
            .hits(n)
            .counter("processes_signalled", n))
    }

    /// A kill leaves nothing in the kernel: what it signalled cannot be taken back, and its
    /// repetition lives in the agent.
    fn objects(&self, _id: &str, _host: &Host<'_>) -> Result<Vec<String>, KernelError> {
        Ok(Vec::new())
    }

    fn demands(&self) -> Demands {
        Demands::default()
    }

    fn summary(&self) -> String {
        let mut out = format!("kill {}", signal_name(self.signal));
        if let Some(target) = &self.target {
            out.push_str(&format!(" {target}"));
        }
        if let Some(name) = &self.name {
            out.push_str(&format!(" {} ~ /{name}/", self.field()));
        }
        if self.pick != Pick::All {
            out.push_str(&format!(", {} of them", self.pick_text()));
        }
        match self.every {
            Some(every) => out.push_str(&format!(", every {}", humantime::format_duration(every))),
            None => out.push_str(", once"),
        }
        out
    }
}

impl KillSpec {
    fn pick_text(&self) -> String {
        match self.pick {
            Pick::All => "all".to_owned(),
            Pick::Count(n) => format!("{n} (at random)"),
            Pick::Percent(p) => format!("{p}% (rounded up, at random)"),
        }
    }
}

impl super::readiness::Ready for KillSpec {
    fn readiness(preflight: &super::readiness::Preflight<'_>) -> super::readiness::Readiness {
        use super::readiness::Readiness;
        use crate::kernel::preflight::Cap;
        Readiness::lacking(preflight.privileges, &[Cap::Kill])
            .unwrap_or_else(|| Readiness::Works("signals through pidfds (CAP_KILL)".to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_parse_by_name_and_number() {
        assert_eq!(parse_signal("KILL"), Ok(libc::SIGKILL));
        assert_eq!(parse_signal("sigterm"), Ok(libc::SIGTERM));
        assert_eq!(parse_signal("9"), Ok(9));
        assert_eq!(parse_signal("SIGRTMIN+2"), Ok(libc::SIGRTMIN() + 2));
        assert!(parse_signal("SIGNOPE")
            .unwrap_err()
            .contains("not a signal"));
        assert_eq!(signal_name(libc::SIGKILL), "SIGKILL");
        assert_eq!(signal_name(libc::SIGRTMIN() + 1), "SIGRTMIN+1");
    }

    #[test]
    fn a_shuffle_keeps_every_item() {
        let mut items: Vec<u32> = (0..50).collect();
        shuffle(&mut items);
        let mut sorted = items.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..50).collect::<Vec<_>>());
    }

    #[test]
    fn the_summary_says_what_how_many_and_how_often() {
        let spec = KillSpec {
            target: Some(Target::Container("3f2a1b2c3d4e5f".into())),
            name: Some("^nginx$".into()),
            cmdline: false,
            signal: libc::SIGTERM,
            every: Some(Duration::from_secs(30)),
            pick: Pick::Percent(50.0),
        };
        assert_eq!(
            spec.summary(),
            "kill SIGTERM container 3f2a1b2c3d4e comm ~ /^nginx$/, 50% (rounded up, at random) \
             of them, every 30s"
        );
        assert_eq!(spec.demands(), Demands::default());
    }
}
