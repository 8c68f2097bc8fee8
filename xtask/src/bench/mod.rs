//! `cargo xtask bench`: faultline's figures measured on this machine, each side by side with
//! a baseline measured in the same run, written to `docs/benchmarks.md` and
//! `docs/benchmarks.json`. An absolute time alone proves nothing on a shared machine; a ratio
//! to something measured a moment before or after, on the same machine, does.
//!
//! This module owns the run: the root check, the release build, Ctrl-C, the order of the
//! sections (each a module: [`latency`], [`fidelity`], [`overhead`], [`untargeted`],
//! [`fanout`]), the rows they return and the machine they ran on. Everything the sections
//! create (namespaces, agents, nftables tables, qdiscs, cgroups, pins, files) is held by guards
//! ([`lab`], [`agent`]) that remove it on drop, also on an error or Ctrl-C; the run ends by
//! checking that nothing named after it is left. A section that fails is reported as not
//! measured, with its error, and the command then fails; Ctrl-C stops the run without writing anything.

mod agent;
mod bpfstats;
mod fanout;
mod fidelity;
mod floor;
mod grpc;
mod lab;
mod latency;
mod memory;
mod overhead;
mod rate_floor;
mod report;
mod revert;
mod traffic;
mod untargeted;

use std::{
    cell::Cell,
    fs,
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use clap::Args;
use serde_json::{json, Value};
use tokio::runtime::Runtime;

use self::{
    agent::Agent,
    lab::{Lab, Netns, PREFIX},
};
use crate::{exec, host, prereqs, vm};

#[derive(Debug, Args)]
pub struct Options {
    /// Timed runs of each apply and each revert, per fault and per baseline tool (200 or more)
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u32).range(200..))]
    runs: u32,
    /// How many agents the fan-out drives, comma-separated
    #[arg(long, value_delimiter = ',', default_values_t = [10usize, 50, 100])]
    fanout: Vec<usize>,
    /// Leave the netem rows unmeasured instead of booting the VM guest for them (this host's
    /// kernel has no sch_netem; the guest run takes a few minutes)
    #[arg(long)]
    no_vm: bool,
    /// Run only these sections, comma-separated, and print their rows without writing the
    /// docs (a partial run must not replace the full report)
    #[arg(long, value_delimiter = ',', value_enum)]
    only: Vec<Part>,
}

/// The sections, as `--only` names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Part {
    Latency,
    Revert,
    Memory,
    Fidelity,
    Netem,
    Overhead,
    Untargeted,
    Fanout,
}

/// What every acknowledged call pays besides its own work, timed apart: the audit log's line
/// (300 bytes appended to a file on the agents' filesystem and fdatasync'ed, as the agent does
/// before every answer) and a gRPC call answered from memory (`Agent/Info`).
pub struct CallCosts {
    audit: fs::File,
}

impl CallCosts {
    pub fn open(path: &Path) -> Result<Self> {
        use std::os::unix::fs::OpenOptionsExt as _;
        let audit = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        Ok(Self { audit })
    }

    /// The audit-like line's time and the call's.
    pub fn time(&mut self, ctx: &Ctx, client: &mut grpc::Client) -> Result<(Duration, Duration)> {
        let started = Instant::now();
        std::io::Write::write_all(&mut self.audit, &[b'x'; 300])?;
        self.audit.sync_data()?;
        let line = started.elapsed();
        let started = Instant::now();
        ctx.rt.block_on(client.info()).context("Agent/Info")?;
        Ok((line, started.elapsed()))
    }
}

/// Fails once Ctrl-C was pressed; long loops call it so the run stops promptly.
pub fn interrupted() -> Result<()> {
    if host::interrupted() {
        bail!("interrupted: everything the bench created is being removed; nothing was written");
    }
    Ok(())
}

/// Sleeps `time`, waking early (with an error) on Ctrl-C.
pub fn pause(time: Duration) -> Result<()> {
    let until = Instant::now() + time;
    loop {
        interrupted()?;
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(());
        }
        thread::sleep(left.min(Duration::from_millis(100)));
    }
}

/// What every section gets: the agent binary, the run's directory, a runtime for the gRPC
/// client, and unique names.
pub struct Ctx {
    pub bin: PathBuf,
    /// `faultline-nft-floor` (see [`floor`]).
    pub nft_floor: PathBuf,
    pub dir: PathBuf,
    pub rt: Runtime,
    next: Cell<u32>,
}

impl Ctx {
    /// A name unique in this run, `faultline-bench-<pid>-<n>`, and its `n`.
    pub fn name(&self) -> (String, u32) {
        let n = self.next.get();
        self.next.set(n + 1);
        (format!("{PREFIX}-{}-{n}", std::process::id()), n)
    }

    pub fn netns(&self) -> Result<Netns> {
        Netns::create(&self.name().0)
    }

    pub fn lab(&self) -> Result<Lab> {
        let a = self.netns()?;
        let b = self.netns()?;
        let (_, n) = self.name();
        // Net 78: never the integration tests' 77, should both run at once.
        Lab::join(
            a,
            b,
            faultline_lab::Addressing {
                dev_prefix: "fbv",
                net: 78,
                subnet: (n % 250 + 1) as u8,
            },
        )
    }

    /// Starts an agent in `ns` with `extra` serve arguments and waits until it answers.
    pub fn agent(&self, ns: &Netns, extra: &[&str]) -> Result<Agent> {
        Agent::start(&self.rt, &self.bin, ns, &self.dir, &self.name().0, extra)
    }
}

/// A goal from the issue, and whether this run met it.
pub struct Goal {
    /// `≥ 20x`, `< 2 % slower`.
    pub text: String,
    pub met: bool,
    /// The measured value in the goal's terms.
    pub measured: String,
}

/// One line of the results table.
pub struct Row {
    pub figure: String,
    pub faultline: Option<f64>,
    pub baseline: Option<f64>,
    /// What the baseline is (`nft` binary, requested, ...).
    pub baseline_name: String,
    pub ratio: Option<f64>,
    /// What the ratio means (`12.3x faster`, `0.98 of requested`).
    pub ratio_text: String,
    pub unit: String,
    pub goal: Option<Goal>,
    /// Why a figure is missing, or what else the reader should know.
    pub note: String,
}

impl Row {
    pub fn new(figure: impl Into<String>, unit: &str) -> Self {
        Self {
            figure: figure.into(),
            faultline: None,
            baseline: None,
            baseline_name: String::new(),
            ratio: None,
            ratio_text: String::new(),
            unit: unit.to_owned(),
            goal: None,
            note: String::new(),
        }
    }

    pub fn values(mut self, faultline: f64, baseline: f64, baseline_name: &str) -> Self {
        self.faultline = Some(faultline);
        self.baseline = Some(baseline);
        self.baseline_name = baseline_name.to_owned();
        self
    }

    /// The baseline divided by faultline's figure (for times): how many times faster
    /// faultline is, shown by [`faster`].
    pub fn speedup(mut self) -> Self {
        if let (Some(f), Some(b)) = (self.faultline, self.baseline) {
            let r = b / f;
            self.ratio = Some(r);
            self.ratio_text = faster(r);
        }
        self
    }

    /// faultline's figure divided by the baseline, shown as `text` with `{}` for the ratio.
    pub fn ratio(mut self, shown: impl Fn(f64) -> String) -> Self {
        if let (Some(f), Some(b)) = (self.faultline, self.baseline) {
            let r = f / b;
            self.ratio = Some(r);
            self.ratio_text = shown(r);
        }
        self
    }

    pub fn goal(mut self, text: &str, met: bool, measured: impl Into<String>) -> Self {
        self.goal = Some(Goal {
            text: text.to_owned(),
            met,
            measured: measured.into(),
        });
        self
    }

    pub fn note(mut self, note: impl Into<String>) -> Self {
        self.note = note.into();
        self
    }
}

/// A speed-up `r` (baseline time / faultline's) in words: `24.1x faster`, or `3.9x slower`
/// when faultline took longer.
pub fn faster(r: f64) -> String {
    if r >= 1.0 {
        format!("{r:.1}x faster")
    } else {
        format!("{:.1}x slower", 1.0 / r)
    }
}

/// One section of the report.
pub struct Section {
    pub title: String,
    /// How the figures were measured and what exactly is timed.
    pub method: String,
    pub rows: Vec<Row>,
    /// Raw figures (per round, per series) for the JSON file.
    pub details: Value,
}

/// Order statistics of a series, by sorting and indexing (nearest rank).
pub struct Summary {
    pub n: usize,
    pub min: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
    pub mean: f64,
}

impl Summary {
    /// `values` must not be empty.
    pub fn of(values: &[f64]) -> Self {
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        let rank = |p: f64| sorted[((p / 100.0 * n as f64).ceil() as usize).clamp(1, n) - 1];
        Self {
            n,
            min: sorted[0],
            p50: rank(50.0),
            p90: rank(90.0),
            p99: rank(99.0),
            max: sorted[n - 1],
            mean: sorted.iter().sum::<f64>() / n as f64,
        }
    }

    pub fn json(&self) -> Value {
        json!({
            "n": self.n, "min": self.min, "p50": self.p50, "p90": self.p90, "p99": self.p99,
            "max": self.max, "mean": self.mean,
        })
    }
}

pub fn median(values: &[f64]) -> f64 {
    Summary::of(values).p50
}

/// The machine the figures were measured on.
pub struct Machine {
    pub cpu_model: String,
    pub cores: usize,
    pub memory_bytes: u64,
    pub kernel: String,
    pub date: String,
    pub commit: String,
    /// Where the agents' journals were (their fsyncs are part of apply and revert).
    pub state_filesystem: String,
}

impl Machine {
    fn read(state_dir: &Path) -> Result<Self> {
        let cpuinfo = fs::read_to_string("/proc/cpuinfo").context("reading /proc/cpuinfo")?;
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, m)| m.trim().to_owned())
            .unwrap_or_else(|| "unknown".to_owned());
        let cores = cpuinfo
            .lines()
            .filter(|l| l.starts_with("processor"))
            .count();
        let meminfo = fs::read_to_string("/proc/meminfo").context("reading /proc/meminfo")?;
        let memory_bytes = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kib| kib * 1024);
        let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
            .context("reading the kernel release")?
            .trim()
            .to_owned();
        let date = exec::capture(&mut exec::command("date", ["-u", "+%Y-%m-%dT%H:%M:%SZ"]))?
            .trim()
            .to_owned();
        let commit = match exec::probe(&mut exec::command("git", ["rev-parse", "--short", "HEAD"]))
        {
            Some(rev) => {
                let dirty = exec::probe(&mut exec::command("git", ["status", "--porcelain"]))
                    .is_some_and(|s| !s.trim().is_empty());
                format!(
                    "{}{}",
                    rev.trim(),
                    if dirty {
                        " with uncommitted changes"
                    } else {
                        ""
                    }
                )
            }
            None => "unknown (not a git checkout)".to_owned(),
        };
        let state_filesystem = exec::probe(
            exec::command("findmnt", ["-n", "-o", "FSTYPE,SOURCE", "-T"]).arg(state_dir),
        )
        .map(|s| s.split_whitespace().collect::<Vec<_>>().join(" on "))
        .unwrap_or_else(|| "unknown".to_owned());
        Ok(Self {
            cpu_model,
            cores,
            memory_bytes,
            kernel,
            date,
            commit,
            state_filesystem,
        })
    }
}

/// `faultline serve` processes running on this host that are not the bench's: their eBPF
/// connect-health programs run on every connect, also the bench's.
fn other_agents() -> Vec<String> {
    let Ok(list) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    list.filter_map(|e| e.ok())
        .filter_map(|e| {
            let pid = e.file_name().to_str()?.parse::<u32>().ok()?;
            let cmdline = fs::read(e.path().join("cmdline")).ok()?;
            let args: Vec<String> = cmdline
                .split(|&b| b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            let is_agent = args.first()?.rsplit('/').next()? == "faultline"
                && args.get(1).is_some_and(|a| a == "serve");
            is_agent.then(|| format!("pid {pid}: {}", args.join(" ").trim()))
        })
        .collect()
}

/// The run's directory, `/var/lib/faultline-bench-<pid>`: agents' sockets, journals and logs,
/// experiment files. On the filesystem of the agent's default state directory
/// (`/var/lib/faultline`), because the journal's fsyncs are part of what apply and revert cost.
struct RunDir(PathBuf);

impl RunDir {
    fn create() -> Result<Self> {
        let dir = PathBuf::from(format!("/var/lib/{PREFIX}-{}", std::process::id()));
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Self(dir))
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_dir_all(&self.0) {
            eprintln!("bench cleanup: cannot remove {}: {e}", self.0.display());
        }
    }
}

/// Runs one section; an error other than Ctrl-C becomes a section with its error, so that the
/// other sections still run.
fn section(
    name: &str,
    failed: &mut Vec<String>,
    body: impl FnOnce() -> Result<Section>,
) -> Result<Section> {
    println!("==> bench: {name}");
    let started = Instant::now();
    let result = body();
    let took = started.elapsed().as_secs_f64();
    match result {
        Ok(section) => {
            for row in &section.rows {
                println!("    {}", report::row_line(row));
            }
            println!("<== bench: {name} ({took:.0}s)");
            Ok(section)
        }
        Err(e) if host::interrupted() => Err(e),
        Err(e) => {
            println!("<== bench: {name} FAILED after {took:.0}s: {e:#}");
            failed.push(format!("{name}: {e:#}"));
            Ok(Section {
                title: name.to_owned(),
                method: String::new(),
                rows: vec![Row::new(format!("{name}: every figure"), "")
                    .note(format!("not measured: the section failed: {e:#}"))],
                details: json!({ "error": format!("{e:#}") }),
            })
        }
    }
}

/// Runs this same bench from an optimized build of xtask, in this process's place.
///
/// The bench times gRPC calls with its own client (tonic, h2, prost, tokio): built without
/// optimizations, as `cargo xtask` builds xtask, that client took 0.6 to 0.75 ms for an
/// `Agent/Info` call that an optimized one makes in 0.13 ms on the same machine, and it added
/// that difference to every apply and revert it timed.
fn run_optimized() -> Result<()> {
    use std::os::unix::process::CommandExt as _;
    println!(
        "bench: building xtask with optimizations, so that its gRPC client adds no time of its own"
    );
    let error =
        std::process::Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
            .args(["run", "--quiet", "--release", "--package", "xtask", "--"])
            .args(std::env::args_os().skip(1))
            .exec();
    Err(error).context("running the optimized build of xtask (cargo run --release --package xtask)")
}

/// `cargo xtask bench`.
pub fn run(o: Options) -> Result<()> {
    if cfg!(debug_assertions) {
        return run_optimized();
    }
    if !host::is_root()? {
        bail!(
            "the bench needs root: it creates network namespaces and runs faultline agents, \
             nft and tc in them (CAP_NET_ADMIN, CAP_BPF, CAP_SYS_ADMIN); run `cargo xtask \
             bench` as root"
        );
    }
    let started = Instant::now();
    host::catch_signals()?;
    for stale in lab::sweep_stale() {
        println!("bench: removed {stale}, left by an earlier run that was killed");
    }
    prereqs::ensure()?;
    for tool in [
        "ip",
        "nft",
        "tc",
        "ping",
        "findmnt",
        "prometheus-node-exporter",
        "iperf3",
    ] {
        host::find_program(tool).with_context(|| {
            format!("`{tool}` is not installed; `cargo xtask prereqs` installs it")
        })?;
    }
    exec::run(&mut exec::command(
        "cargo",
        [
            "build",
            "--release",
            "-p",
            "faultline",
            "-p",
            "faultline-nft-floor",
        ],
    ))?;
    let bin = vm::target_dir().join("release/faultline");
    let nft_floor = vm::target_dir().join("release/faultline-nft-floor");
    let others = other_agents();
    for other in &others {
        println!("bench: warning: another faultline agent runs here ({other})");
    }

    let run_dir = RunDir::create()?;
    let machine = Machine::read(&run_dir.0)?;
    let ctx = Ctx {
        bin,
        nft_floor,
        dir: run_dir.0.clone(),
        rt: tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the gRPC client's runtime")?,
        next: Cell::new(0),
    };
    let mut failed = Vec::new();
    let wanted = |part| o.only.is_empty() || o.only.contains(&part);
    let mut sections = Vec::new();
    if wanted(Part::Latency) {
        sections.push(section("apply and revert latency", &mut failed, || {
            latency::run(&ctx, o.runs as usize)
        })?);
    }
    if wanted(Part::Revert) {
        sections.push(section("revert of every kind", &mut failed, || {
            revert::run(&ctx)
        })?);
    }
    if wanted(Part::Memory) {
        sections.push(section("steady memory", &mut failed, || memory::run(&ctx))?);
    }
    if wanted(Part::Fidelity) {
        sections.push(section("fidelity", &mut failed, || fidelity::run(&ctx))?);
    }
    let netem_at = sections.len();
    if wanted(Part::Overhead) {
        sections.push(section("overhead", &mut failed, || overhead::run(&ctx))?);
    }
    if wanted(Part::Untargeted) {
        sections.push(section("untargeted traffic", &mut failed, || {
            untargeted::run(&ctx)
        })?);
    }
    if wanted(Part::Fanout) {
        sections.push(section("fan-out", &mut failed, || {
            fanout::run(&ctx, &o.fanout)
        })?);
    }
    // Last: it builds the debug agent and the tests and keeps both cores busy with qemu, which
    // nothing measured on this host should share. Its rows belong beside the other fidelity
    // figures.
    if wanted(Part::Netem) {
        let netem = section("netem fidelity (VM guest)", &mut failed, || {
            fidelity::netem_in_vm(o.no_vm)
        })?;
        sections.insert(netem_at, netem);
    }
    drop(ctx);
    drop(run_dir);
    lab::remove_leftovers();
    let left = lab::leftovers();

    let took = started.elapsed();
    if o.only.is_empty() {
        let out = host::workspace_root().join("docs");
        let written = report::write(
            &out,
            &report::Report {
                machine: &machine,
                sections: &sections,
                took,
                other_agents: &others,
                left_behind: &left,
            },
        )?;
        println!("{}", written.table);
        println!(
            "bench: wrote {} and {} in {}m{:02}s",
            written.markdown.display(),
            written.json.display(),
            took.as_secs() / 60,
            took.as_secs() % 60
        );
    } else {
        for section in &sections {
            println!("\n{}: {}", section.title, section.method);
        }
        println!(
            "bench: a partial run ({:?}) in {}s; docs/benchmarks.md not written",
            o.only,
            took.as_secs()
        );
    }
    if !left.is_empty() {
        bail!("the bench left these behind: {}", left.join(", "));
    }
    if !failed.is_empty() {
        bail!(
            "{} section(s) failed (reported as not measured): {}",
            failed.len(),
            failed.join("; ")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let values: Vec<f64> = (1..=200).map(f64::from).collect();
        let s = Summary::of(&values);
        assert_eq!(
            (s.min, s.p50, s.p90, s.p99, s.max),
            (1.0, 100.0, 180.0, 198.0, 200.0)
        );
        assert_eq!(s.mean, 100.5);
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(Summary::of(&[7.0]).p99, 7.0);
    }

    #[test]
    fn rows_show_their_ratio() {
        let row = Row::new("x", "ms").values(0.5, 10.0, "nft").speedup();
        assert_eq!(row.ratio_text, "20.0x faster");
        let row = Row::new("x", "ms").values(11.2, 2.8, "nft").speedup();
        assert_eq!(row.ratio_text, "4.0x slower");
        let row = Row::new("y", "%")
            .values(29.0, 30.0, "requested")
            .ratio(|r| format!("{r:.3}"));
        assert_eq!(row.ratio_text, "0.967");
    }
}
