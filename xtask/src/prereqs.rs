//! The prerequisites shared by `run` and `test`: the apt packages that building and testing
//! faultline needs, nightly Rust with `rust-src` and `rustfmt` (the eBPF programs and our
//! rustfmt.toml need nightly), clippy, and `bpf-linker`; and the few more `package` needs. Each check says what it finds and
//! what it installs before installing it; a check whose thing is present changes nothing.
//! It never removes or downgrades anything.

use anyhow::{bail, Context as _, Result};
use clap::Args;

use crate::{exec, host};

/// apt packages: nftnl/mnl headers and pkg-config to build the nftables adapter (the gRPC code
/// needs no protoc: proto/build.rs compiles with protox), and the tools the integration tests use to set up hosts and check effects
/// independently (`ip`, `ping`, `nft`, `unshare`/`nsenter` from util-linux, `sysctl` from procps; `promtool` from
/// prometheus and the node exporter, the independent readers the monitoring tests compare with).
const APT_PACKAGES: &[&str] = &[
    "libnftnl-dev",
    "libmnl-dev",
    "pkg-config",
    "iproute2",
    "iputils-ping",
    "nftables",
    "util-linux",
    "procps",
    "prometheus",
    "prometheus-node-exporter",
    // Debian's own Python with venv: the test environment of the independent gRPC client
    // (tests/python), whatever other Python the machine has on PATH.
    "python3",
    "python3-venv",
];

/// Debian's interpreter, which makes the test environment.
const SYSTEM_PYTHON: &str = "/usr/bin/python3";

/// More apt packages for `cargo xtask package` only: `dpkg-shlibdeps` (dpkg-dev) computes the
/// Depends of the binary, lintian checks the .deb against Debian policy.
const PACKAGE_APT_PACKAGES: &[&str] = &["dpkg-dev", "lintian"];

/// bpf-linker 0.10.x links with rustc's own LLVM; later versions need a system LLVM.
const BPF_LINKER_VERSION: &str = "0.10.4";

#[derive(Debug, Args)]
pub struct Options {}

/// `cargo xtask prereqs`.
pub fn run(_: Options) -> Result<()> {
    ensure()?;
    println!("prerequisites: all present");
    Ok(())
}

/// Makes sure every prerequisite is installed, installing what is missing.
pub fn ensure() -> Result<()> {
    apt_packages(APT_PACKAGES).context("apt packages")?;
    rust_toolchains().context("Rust toolchains")?;
    bpf_linker().context("bpf-linker")?;
    python_env().context("the Python test environment")?;
    Ok(())
}

/// [`ensure`], and the tools that build and check the Debian package.
pub fn ensure_for_package() -> Result<()> {
    ensure()?;
    apt_packages(PACKAGE_APT_PACKAGES).context("apt packages for packaging")
}

fn apt_packages(wanted: &[&str]) -> Result<()> {
    let missing: Vec<&str> = wanted
        .iter()
        .copied()
        .filter(|package| !apt_installed(package))
        .collect();
    if missing.is_empty() {
        println!("apt: all present ({})", wanted.join(" "));
        return Ok(());
    }
    let missing = missing.join(" ");
    if !host::is_root()? {
        bail!(
            "missing apt packages: {missing}; installing them needs root \
             (sudo apt-get install --no-install-recommends {missing})"
        );
    }
    println!("apt: installing {missing}");
    apt_install(&missing.split(' ').collect::<Vec<_>>())
}

/// Refreshes the package index (a stale one gives 404s on install), then installs `packages`.
pub fn apt_install(packages: &[&str]) -> Result<()> {
    apt_update()?;
    exec::run(
        exec::command("apt-get", ["install", "-y", "--no-install-recommends"])
            .args(packages)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

pub fn apt_update() -> Result<()> {
    exec::run(exec::command("apt-get", ["update"]).env("DEBIAN_FRONTEND", "noninteractive"))
}

/// dpkg knows the package and it is fully installed (not merely configured-files-left).
fn apt_installed(package: &str) -> bool {
    exec::probe(&mut exec::command(
        "dpkg-query",
        ["-W", "-f=${Status}", package],
    ))
    .is_some_and(|status| status.trim() == "install ok installed")
}

fn rust_toolchains() -> Result<()> {
    let toolchains = exec::capture(&mut exec::command("rustup", ["toolchain", "list"]))?;
    if toolchains.lines().any(|line| line.starts_with("nightly")) {
        println!("rustup: nightly toolchain present");
    } else {
        println!("rustup: installing the nightly toolchain (minimal profile)");
        exec::run(&mut exec::command(
            "rustup",
            ["toolchain", "install", "nightly", "--profile", "minimal"],
        ))?;
    }
    // No-ops when present; rustup's own line says which.
    let components: [(&str, &[&str]); 3] = [
        (
            "rust-src for nightly (builds core for the eBPF target)",
            &["rust-src", "--toolchain", "nightly"],
        ),
        (
            "rustfmt for nightly (rustfmt.toml uses unstable options)",
            &["rustfmt", "--toolchain", "nightly"],
        ),
        ("clippy", &["clippy"]),
    ];
    for (what, args) in components {
        println!("rustup: component {what}");
        exec::run(exec::command("rustup", ["component", "add"]).args(args))?;
    }
    Ok(())
}

fn bpf_linker() -> Result<()> {
    // `bpf-linker 0.10.4`; absent, unrunnable or another version all mean "install ours".
    let found = exec::probe(&mut exec::command("bpf-linker", ["--version"]));
    match found.as_deref().map(str::trim) {
        Some(version)
            if version
                .split_whitespace()
                .any(|word| word == BPF_LINKER_VERSION) =>
        {
            println!("bpf-linker: {version} present");
            return Ok(());
        }
        Some(other) => println!("bpf-linker: found {other:?}, need {BPF_LINKER_VERSION}"),
        None => println!("bpf-linker: not found"),
    }
    println!(
        "bpf-linker: installing {BPF_LINKER_VERSION} with cargo install (this takes a few minutes; \
         0.10.x links with rustc's own LLVM, later versions need a system LLVM)"
    );
    exec::run(&mut exec::command(
        "cargo",
        [
            "install",
            &format!("bpf-linker@{BPF_LINKER_VERSION}"),
            "--locked",
        ],
    ))
}

/// The Python environment of the independent-client tests, `target/python`: a venv with the
/// pinned packages of tests/python/requirements.txt from PyPI. A copy of the requirements
/// inside it says what it holds; another list makes it anew.
fn python_env() -> Result<()> {
    let requirements_path = host::workspace_root().join("tests/python/requirements.txt");
    let requirements = std::fs::read_to_string(&requirements_path)
        .with_context(|| format!("reading {}", requirements_path.display()))?;
    let venv = python_env_dir();
    let marker = venv.join("faultline-requirements.txt");
    if std::fs::read_to_string(&marker).is_ok_and(|held| held == requirements) {
        println!("python: test environment present ({})", venv.display());
        return Ok(());
    }
    println!(
        "python: making the test environment {} from {}",
        venv.display(),
        requirements_path.display()
    );
    exec::run(&mut exec::command(
        SYSTEM_PYTHON,
        ["-m", "venv", "--clear", &venv.to_string_lossy()],
    ))?;
    exec::run(&mut exec::command(
        venv.join("bin/pip").to_string_lossy().as_ref(),
        [
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--requirement",
            &requirements_path.to_string_lossy(),
        ],
    ))?;
    std::fs::write(&marker, requirements).with_context(|| format!("writing {}", marker.display()))
}

/// Where the Python test environment lives: under the target directory, like every other
/// build product.
pub fn python_env_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| host::workspace_root().join("target"))
        .join("python")
}
