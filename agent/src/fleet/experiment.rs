//! Experiment files: which agents, which faults on which of them, what "healthy" means (guards,
//! SLOs) and for how long. Parsing refuses anything it does not know, with the line and the
//! field, before a single agent is contacted.

use std::{
    collections::BTreeMap,
    fmt, fs,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Deserializer};
use thiserror::Error;

use crate::faults::FaultSpec;

#[derive(Debug, Error)]
pub(crate) enum ExperimentError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The YAML parser's message names the field and carries the line and column.
    #[error("{path}: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("{path}: {field}: {reason}")]
    Invalid {
        path: PathBuf,
        field: String,
        reason: String,
    },
}

/// An experiment as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Experiment {
    pub(crate) name: String,
    /// A note for people who read the file: accepted, not used.
    #[serde(default, rename = "description")]
    _description: String,
    /// Agents: addresses, or files listing them.
    pub(crate) targets: Vec<TargetSpec>,
    /// Client certificate for agents reached over mutual TLS.
    #[serde(default)]
    pub(crate) tls: Option<TlsFiles>,
    /// Observed before any fault, to show the steady state the guards compare with.
    #[serde(deserialize_with = "duration", default = "no_time")]
    pub(crate) baseline: Duration,
    /// How long the faults stay.
    #[serde(deserialize_with = "duration")]
    pub(crate) duration: Duration,
    /// Each fault's lease: if this controller stops renewing (it died or was cut off), the
    /// agents revert on their own this long after the last renewal.
    #[serde(deserialize_with = "duration", default = "default_lease")]
    pub(crate) lease: Duration,
    /// How often each agent streams a snapshot; guards are evaluated on each as it arrives.
    #[serde(deserialize_with = "duration", default = "default_interval")]
    pub(crate) interval: Duration,
    pub(crate) faults: Vec<FaultGroup>,
    #[serde(default)]
    pub(crate) guards: Vec<Guard>,
    #[serde(default)]
    pub(crate) abort: AbortRules,
    #[serde(default)]
    pub(crate) slos: Vec<Slo>,
}

fn no_time() -> Duration {
    Duration::ZERO
}

fn default_lease() -> Duration {
    Duration::from_secs(10)
}

fn default_interval() -> Duration {
    Duration::from_secs(1)
}

/// `30s`, `1m30s`, `500ms`.
fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    humantime::parse_duration(&text).map_err(|e| {
        serde::de::Error::custom(format!(
            "invalid duration {text:?}: {e} (expected e.g. 30s, 1m30s, 500ms)"
        ))
    })
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TargetSpec {
    /// `unix:/run/faultline/faultline.sock`, a socket path, or `https://host:port`.
    #[serde(default)]
    pub(crate) address: Option<String>,
    /// A file with one address per line (`#` comments), each optionally followed by labels
    /// `key=value`.
    #[serde(default)]
    pub(crate) file: Option<PathBuf>,
    #[serde(default)]
    pub(crate) labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TlsFiles {
    pub(crate) cert: PathBuf,
    pub(crate) key: PathBuf,
    pub(crate) ca: PathBuf,
}

/// One fault, on the agents whose labels include `select` (all agents when empty).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FaultGroup {
    #[serde(default)]
    pub(crate) select: BTreeMap<String, String>,
    pub(crate) fault: FaultSpec,
}

/// What a guard or an SLO measures on each agent, over the time the faults were active.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Measure {
    /// Failed TCP connects / connects that ended, 0-1.
    ConnectFailureRatio,
    /// Successful TCP connects / connects that ended, 0-1.
    ConnectSuccessRatio,
    /// 95th percentile TCP connect time, seconds.
    ConnectP95Seconds,
    /// Busy share of all CPUs, percent.
    CpuBusyPercent,
    /// Failed probe checks / probe checks, 0-1.
    ProbeFailureRatio,
}

impl Measure {
    /// Whether higher values are better (an SLO's target is then a floor).
    pub(crate) fn higher_is_better(self) -> bool {
        matches!(self, Measure::ConnectSuccessRatio)
    }

    /// A value in the measure's own terms: `99.95 %`, `120.0 ms`, `42.0 %`.
    pub(crate) fn show(self, value: f64) -> String {
        match self {
            Measure::ConnectFailureRatio
            | Measure::ConnectSuccessRatio
            | Measure::ProbeFailureRatio => format!("{:.2} %", value * 100.0),
            Measure::ConnectP95Seconds => format!("{:.1} ms", value * 1000.0),
            Measure::CpuBusyPercent => format!("{value:.1} %"),
        }
    }
}

impl fmt::Display for Measure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Measure::ConnectFailureRatio => "connect failure ratio",
            Measure::ConnectSuccessRatio => "connect success ratio",
            Measure::ConnectP95Seconds => "p95 connect time",
            Measure::CpuBusyPercent => "CPU busy",
            Measure::ProbeFailureRatio => "probe failure ratio",
        })
    }
}

/// A steady-state condition checked while faults run; a breach aborts the experiment (unless
/// `abort.on_guard_breach` is false).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Guard {
    pub(crate) name: String,
    pub(crate) metric: Measure,
    /// Only connects to this destination (`addr:port`, or `addr` for any port).
    #[serde(default)]
    pub(crate) destination: Option<String>,
    pub(crate) max: f64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AbortRules {
    #[serde(default = "yes")]
    pub(crate) on_guard_breach: bool,
    #[serde(default = "yes")]
    pub(crate) on_agent_lost: bool,
    /// Abort when an agent flags one of the experiment's faults ineffective (it has acted on
    /// nothing for the agent's grace period): the experiment would test nothing.
    #[serde(default)]
    pub(crate) on_ineffective: bool,
}

fn yes() -> bool {
    true
}

impl Default for AbortRules {
    fn default() -> Self {
        Self {
            on_guard_breach: true,
            on_agent_lost: true,
            on_ineffective: false,
        }
    }
}

/// A service level objective the report grades: `target` is a floor for success ratios and a
/// ceiling for everything else.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Slo {
    pub(crate) name: String,
    pub(crate) metric: Measure,
    #[serde(default)]
    pub(crate) destination: Option<String>,
    pub(crate) target: f64,
}

/// One agent of the experiment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    pub(crate) address: String,
    pub(crate) labels: BTreeMap<String, String>,
}

impl Experiment {
    /// Reads, parses and checks an experiment file; target files are read too.
    pub(crate) fn load(path: &Path) -> Result<(Self, Vec<Target>), ExperimentError> {
        let text = fs::read_to_string(path).map_err(|source| ExperimentError::Read {
            path: path.to_owned(),
            source,
        })?;
        let experiment: Experiment =
            serde_yaml_ng::from_str(&text).map_err(|e| ExperimentError::Syntax {
                path: path.to_owned(),
                message: e.to_string(),
            })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let targets = experiment.check(path, base)?;
        Ok((experiment, targets))
    }

    fn check(&self, path: &Path, base: &Path) -> Result<Vec<Target>, ExperimentError> {
        let invalid = |field: &str, reason: String| ExperimentError::Invalid {
            path: path.to_owned(),
            field: field.to_owned(),
            reason,
        };
        if self.targets.is_empty() {
            return Err(invalid(
                "targets",
                "empty: name at least one agent (address: or file:)".to_owned(),
            ));
        }
        if self.faults.is_empty() {
            return Err(invalid(
                "faults",
                "empty: an experiment injects at least one fault".to_owned(),
            ));
        }
        if self.duration.is_zero() {
            return Err(invalid("duration", "must be longer than 0s".to_owned()));
        }
        if self.lease < Duration::from_secs(1) || self.lease > self.duration {
            return Err(invalid(
                "lease",
                format!(
                    "{} is out of range: at least 1s and at most the duration ({})",
                    humantime::format_duration(self.lease),
                    humantime::format_duration(self.duration)
                ),
            ));
        }
        if self.interval < Duration::from_millis(100) {
            return Err(invalid("interval", "at least 100ms".to_owned()));
        }
        let mut targets = Vec::new();
        for (i, t) in self.targets.iter().enumerate() {
            let field = format!("targets[{i}]");
            match (&t.address, &t.file) {
                (Some(address), None) => targets.push(Target {
                    address: address.clone(),
                    labels: t.labels.clone(),
                }),
                (None, Some(file)) => {
                    let file = base.join(file);
                    let text = fs::read_to_string(&file).map_err(|e| {
                        invalid(&format!("{field}.file"), format!("{}: {e}", file.display()))
                    })?;
                    for (n, line) in text.lines().enumerate() {
                        let line = line.split('#').next().unwrap_or("").trim();
                        let mut words = line.split_whitespace();
                        let Some(address) = words.next() else {
                            continue;
                        };
                        let mut labels = t.labels.clone();
                        for word in words {
                            let (k, v) = word.split_once('=').ok_or_else(|| {
                                invalid(
                                    &format!("{field}.file"),
                                    format!(
                                        "{}:{}: {word:?} is not a label key=value",
                                        file.display(),
                                        n + 1
                                    ),
                                )
                            })?;
                            labels.insert(k.to_owned(), v.to_owned());
                        }
                        targets.push(Target {
                            address: address.to_owned(),
                            labels,
                        });
                    }
                }
                _ => {
                    return Err(invalid(
                        &field,
                        "give exactly one of address: or file:".to_owned(),
                    ))
                }
            }
        }
        if targets.is_empty() {
            return Err(invalid(
                "targets",
                "the target files list no agent".to_owned(),
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        for t in &targets {
            if !seen.insert(&t.address) {
                return Err(invalid("targets", format!("{} is listed twice", t.address)));
            }
        }
        for (i, group) in self.faults.iter().enumerate() {
            if !targets.iter().any(|t| selects(&group.select, t)) {
                return Err(invalid(
                    &format!("faults[{i}].select"),
                    format!("no target has the labels {:?}", group.select),
                ));
            }
        }
        for (i, g) in self.guards.iter().enumerate() {
            if !g.max.is_finite() {
                return Err(invalid(&format!("guards[{i}].max"), "not a number".into()));
            }
            check_destination(g.destination.as_deref())
                .map_err(|r| invalid(&format!("guards[{i}].destination"), r))?;
        }
        for (i, s) in self.slos.iter().enumerate() {
            if !s.target.is_finite() {
                return Err(invalid(&format!("slos[{i}].target"), "not a number".into()));
            }
            check_destination(s.destination.as_deref())
                .map_err(|r| invalid(&format!("slos[{i}].destination"), r))?;
        }
        Ok(targets)
    }
}

/// Whether a target carries every label of `select`.
pub(crate) fn selects(select: &BTreeMap<String, String>, target: &Target) -> bool {
    select
        .iter()
        .all(|(k, v)| target.labels.get(k).is_some_and(|t| t == v))
}

fn check_destination(d: Option<&str>) -> Result<(), String> {
    match d {
        None => Ok(()),
        Some(text) => Destination::parse(text).map(drop),
    }
}

/// A destination filter: an address, and optionally a port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Destination {
    pub(crate) addr: std::net::IpAddr,
    pub(crate) port: Option<u16>,
}

impl Destination {
    pub(crate) fn parse(text: &str) -> Result<Self, String> {
        if let Ok(addr) = text.parse() {
            return Ok(Self { addr, port: None });
        }
        text.parse::<std::net::SocketAddr>()
            .map(|s| Self {
                addr: s.ip(),
                port: Some(s.port()),
            })
            .map_err(|_| {
                format!(
                    "{text:?} is not an address or addr:port (10.0.0.5:5432, [2001:db8::5]:443)"
                )
            })
    }

    pub(crate) fn matches(&self, addr: std::net::IpAddr, port: u16) -> bool {
        self.addr == addr && self.port.is_none_or(|p| p == port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<(Experiment, Vec<Target>), ExperimentError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("e.yaml");
        fs::write(&path, text).unwrap();
        fs::write(
            dir.path().join("agents.txt"),
            "# fleet\nunix:/a.sock role=web\nunix:/b.sock\n",
        )
        .unwrap();
        Experiment::load(&path)
    }

    const GOOD: &str = r#"
name: web loss
targets:
  - address: unix:/c.sock
    labels: {role: db}
  - file: agents.txt
baseline: 5s
duration: 1m
lease: 5s
faults:
  - select: {role: web}
    fault:
      kind: block
      direction: ingress
      match: {protocol: tcp, ports: [{first: 80, last: 80}]}
guards:
  - name: db reachable
    metric: connect_failure_ratio
    destination: 10.0.0.5:5432
    max: 0.05
slos:
  - name: Availability
    metric: connect_success_ratio
    target: 0.999
"#;

    #[test]
    fn a_good_file_reads_with_its_target_files() {
        let (e, targets) = load(GOOD).unwrap();
        assert_eq!(e.duration, Duration::from_secs(60));
        assert_eq!(targets.len(), 3);
        assert_eq!(
            targets[1].labels.get("role").map(String::as_str),
            Some("web")
        );
        assert!(selects(&e.faults[0].select, &targets[1]));
        assert!(!selects(&e.faults[0].select, &targets[2]));
    }

    #[test]
    fn disk_faults_are_written_as_the_journal_writes_them() {
        let disk = GOOD.replace(
            "      kind: block\n      direction: ingress\n      match: {protocol: tcp, ports: [{first: 80, last: 80}]}\n",
            "      kind: disk_fill\n      path: /var/lib/mysql\n      amount: {percent: 95}\n",
        );
        let (e, _) = load(&disk).unwrap();
        assert_eq!(e.faults[0].fault.kind(), "disk_fill");
        let slow = GOOD.replace(
            "      kind: block\n      direction: ingress\n      match: {protocol: tcp, ports: [{first: 80, last: 80}]}\n",
            "      kind: disk_slow\n      target: {cgroup: /system.slice/db.service}\n      device: sdb\n      limits: {write_bps: 1048576}\n",
        );
        let (e, _) = load(&slow).unwrap();
        assert_eq!(
            e.faults[0].fault.family().summary(),
            "disk slow sdb for cgroup /system.slice/db.service: write 1.0MiB/s"
        );
    }

    #[test]
    fn mistakes_name_the_line_and_the_field() {
        let unknown = GOOD.replace("lease: 5s", "leese: 5s");
        let e = load(&unknown).unwrap_err().to_string();
        assert!(
            e.contains("unknown field `leese`") && e.contains("line"),
            "{e}"
        );
        let bad = GOOD.replace("duration: 1m", "duration: 1 fortnight");
        let e = load(&bad).unwrap_err().to_string();
        assert!(e.contains("invalid duration") && e.contains("line"), "{e}");
        let empty = GOOD.replace(
            "  - address: unix:/c.sock\n    labels: {role: db}\n  - file: agents.txt\n",
            "",
        );
        let e = load(&empty.replace("targets:\n", "targets: []\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("targets: empty"), "{e}");
        let nobody = GOOD.replace("{role: web}", "{role: cache}");
        let e = load(&nobody).unwrap_err().to_string();
        assert!(e.contains("faults[0].select"), "{e}");
        let lease = GOOD.replace("lease: 5s", "lease: 2m");
        assert!(load(&lease).unwrap_err().to_string().contains("lease"));
    }
}
