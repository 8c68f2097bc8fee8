//! Every prerequisite of faultline's tasks, in one place: the apt packages that building and
//! testing faultline needs, nightly Rust with `rust-src` and `rustfmt` (the eBPF programs and
//! our rustfmt.toml need nightly), clippy, `bpf-linker`, the Python test environment; and the
//! few more packages that `vm-test`, `package` and `clean-room` need (`cargo xtask prereqs
//! --list` prints them all). Each check says what it finds and what it installs before
//! installing it; a check whose thing is present changes nothing. It never removes or
//! downgrades anything. `cargo xtask clean-room` checks that [`APT_PACKAGES`] is complete.

use anyhow::{bail, Context as _, Result};
use clap::Args;

use crate::{exec, host};

/// apt packages: nftnl/mnl headers and pkg-config to build the nftables adapter (the gRPC code
/// needs no protoc: proto/build.rs compiles with protox), and the tools the integration tests use to set up hosts and check effects
/// independently (`ip`, `ping`, `nft`, `unshare`/`nsenter`/`losetup` from util-linux, `sysctl` from procps, `mkfs.ext4` from e2fsprogs for the disk tests' loop filesystems; `promtool` from
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
    "e2fsprogs",
    "prometheus",
    "prometheus-node-exporter",
    // The bench's load generator for what a fault costs untargeted traffic.
    "iperf3",
    // Debian's own Python with venv: the test environment of the Python clients (tests/python,
    // the Chaos Toolkit extension), whatever other Python the machine has on PATH.
    "python3",
    "python3-venv",
];

/// Debian's interpreter, which makes the test environment.
const SYSTEM_PYTHON: &str = "/usr/bin/python3";

/// More apt packages for `cargo xtask package` only: `dpkg-shlibdeps` (dpkg-dev) computes the
/// Depends of the binary, lintian checks the .deb against Debian policy.
const PACKAGE_APT_PACKAGES: &[&str] = &["dpkg-dev", "lintian"];

/// What `cargo xtask clean-room` itself needs on the host: `mmdebstrap`, which builds the
/// Debian 12 root filesystem the project is built in. Kept apart from [`APT_PACKAGES`] because
/// that list is what the clean room checks: a tool that only the check uses must not be on it,
/// or the room would install it too and the list would no longer say what building and testing
/// faultline need. Nothing else installs these.
pub const CLEAN_ROOM_APT_PACKAGES: &[&str] = &["mmdebstrap"];

/// What the real-kernel layer (`cargo xtask vm-test`, the last step of `test`) needs on the
/// host: qemu with software emulation. Installed when that layer runs.
pub const VM_APT_PACKAGES: &[&str] = &["qemu-system-x86"];

/// What the systemd guest (`cargo xtask vm-test --systemd`, a step of `test`) needs on the host
/// beyond the VM layer's qemu: mmdebstrap makes its root filesystem from Debian's packages,
/// `mkfs.ext4 -d` (e2fsprogs) turns that into a disk image without mounting anything.
pub const SYSTEMD_GUEST_APT_PACKAGES: &[&str] = &["qemu-system-x86", "mmdebstrap", "e2fsprogs"];

/// bpf-linker 0.10.x links with rustc's own LLVM; later versions need a system LLVM.
pub const BPF_LINKER_VERSION: &str = "0.10.4";

#[derive(Debug, Args)]
pub struct Options {
    /// Only print every prerequisite, by the task that needs it; install nothing
    #[arg(long)]
    list: bool,
}

/// `cargo xtask prereqs`.
pub fn run(o: Options) -> Result<()> {
    if o.list {
        print!("{}", listing());
        return Ok(());
    }
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

/// Every prerequisite, one line per group: what `--list` prints and README names.
fn listing() -> String {
    let apt = |packages: &[&str]| packages.join(" ");
    format!(
        "apt (build and test; run, test): {}\n\
         apt (vm-test, the last step of test): {}\n\
         apt (package): {}\n\
         apt (clean-room): {}\n\
         apt (vm-test --systemd, a step of test): {}\n\
         rustup: nightly toolchain with rust-src and rustfmt; clippy\n\
         cargo install: bpf-linker@{BPF_LINKER_VERSION}\n\
         python (test): a venv at target/python from tests/python/requirements.txt (PyPI)\n",
        apt(APT_PACKAGES),
        apt(VM_APT_PACKAGES),
        apt(PACKAGE_APT_PACKAGES),
        apt(CLEAN_ROOM_APT_PACKAGES),
        apt(SYSTEMD_GUEST_APT_PACKAGES),
    )
}

/// [`ensure`], and the tools that build and check the Debian package.
pub fn ensure_for_package() -> Result<()> {
    ensure()?;
    apt_packages(PACKAGE_APT_PACKAGES).context("apt packages for packaging")
}

/// Installs those of `packages` that dpkg does not have, saying which first.
pub fn apt_packages(packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|package| !apt_installed(package))
        .collect();
    if missing.is_empty() {
        println!("apt: all present ({})", packages.join(" "));
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

/// The Python environment of the tests that drive the agent from Python, `target/python`: a
/// venv with the pinned packages of tests/python/requirements.txt from PyPI (grpcio, Chaos
/// Toolkit, the Kubernetes schema validator), then the Chaos Toolkit extension built from
/// integrations/chaostoolkit. A copy of the requirements inside it says what it holds; another
/// list makes it anew.
fn python_env() -> Result<()> {
    let requirements_path = host::workspace_root().join("tests/python/requirements.txt");
    let requirements = std::fs::read_to_string(&requirements_path)
        .with_context(|| format!("reading {}", requirements_path.display()))?;
    let venv = python_env_dir();
    let marker = venv.join("faultline-requirements.txt");
    if std::fs::read_to_string(&marker).is_ok_and(|held| held == requirements) {
        println!("python: test environment present ({})", venv.display());
    } else {
        println!(
            "python: making the test environment {} from {}",
            venv.display(),
            requirements_path.display()
        );
        exec::run(&mut exec::command(
            SYSTEM_PYTHON,
            ["-m", "venv", "--clear", &venv.to_string_lossy()],
        ))?;
        pip(&[
            "install",
            "--requirement",
            &requirements_path.to_string_lossy(),
        ])?;
        std::fs::write(&marker, requirements)
            .with_context(|| format!("writing {}", marker.display()))?;
    }
    chaostoolkit_extension().context("the Chaos Toolkit extension")
}

/// `pip` of the test environment, quiet.
fn pip(args: &[&str]) -> Result<()> {
    exec::run(
        exec::command(
            python_env_dir().join("bin/pip").to_string_lossy().as_ref(),
            ["--quiet", "--disable-pip-version-check"],
        )
        .args(args),
    )
}

/// Installs `chaostoolkit-faultline` from integrations/chaostoolkit into the test environment,
/// again whenever its sources or proto/ (its stubs are generated from it at build time) have
/// changed since: a fingerprint of both inside the environment says what it was built from.
/// Built without isolation, with the setuptools and grpcio-tools pinned in the requirements.
fn chaostoolkit_extension() -> Result<()> {
    let root = host::workspace_root();
    let source = root.join("integrations/chaostoolkit");
    let fingerprint = format!(
        "{:016x}",
        tree_fingerprint(&[source.clone(), root.join("proto/faultline")])?
    );
    let marker = python_env_dir().join("faultline-chaostoolkit.fingerprint");
    if std::fs::read_to_string(&marker).is_ok_and(|held| held == fingerprint) {
        println!("python: chaostoolkit-faultline present, built from these sources");
        return Ok(());
    }
    println!(
        "python: installing chaostoolkit-faultline from {}",
        source.display()
    );
    pip(&[
        "install",
        "--no-deps",
        "--no-build-isolation",
        "--force-reinstall",
        &source.to_string_lossy(),
    ])?;
    std::fs::write(&marker, fingerprint).with_context(|| format!("writing {}", marker.display()))
}

/// A fingerprint of the files under `roots` (their paths and contents), leaving out what a
/// build makes there (`build/`, `*.egg-info`, `__pycache__`). Only compared with itself: a
/// different toolchain may compute another and cause one more install.
fn tree_fingerprint(roots: &[std::path::PathBuf]) -> Result<u64> {
    use std::hash::{Hash as _, Hasher as _};

    fn walk(dir: &std::path::Path, files: &mut Vec<std::path::PathBuf>) -> Result<()> {
        for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
            let path = entry?.path();
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            if name == "build" || name == "__pycache__" || name.ends_with(".egg-info") {
                continue;
            }
            if path.is_dir() {
                walk(&path, files)?;
            } else {
                files.push(path);
            }
        }
        Ok(())
    }
    let mut files = Vec::new();
    for root in roots {
        walk(root, &mut files)?;
    }
    files.sort();
    let mut hasher = std::hash::DefaultHasher::new();
    for file in files {
        file.hash(&mut hasher);
        std::fs::read(&file)
            .with_context(|| format!("reading {}", file.display()))?
            .hash(&mut hasher);
    }
    Ok(hasher.finish())
}

/// Where the Python test environment lives: under the target directory, like every other
/// build product.
pub fn python_env_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| host::workspace_root().join("target"))
        .join("python")
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};

    /// `cargo xtask` is how a new machine gets its prerequisites, so xtask itself must build
    /// before any of them is there: nothing it links (normal or build dependencies) may look
    /// for a system library. `pkg-config` (the crate) in that closure means something does; the
    /// bench's nf_tables floor once brought libmnl's and broke `cargo xtask test` on a fresh
    /// machine while CI, on a machine that had the headers, stayed green.
    #[test]
    fn xtask_builds_before_any_prerequisite_is_installed() {
        let output = std::process::Command::new(env!("CARGO"))
            .args(["metadata", "--format-version", "1"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .expect("running cargo metadata");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let metadata: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        let names: HashMap<&str, &str> = metadata["packages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| (p["id"].as_str().unwrap(), p["name"].as_str().unwrap()))
            .collect();
        let nodes: HashMap<&str, &serde_json::Value> = metadata["resolve"]["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| (n["id"].as_str().unwrap(), n))
            .collect();
        let root = names
            .iter()
            .find(|(_, name)| **name == "xtask")
            .map(|(id, _)| *id)
            .expect("xtask in the workspace");
        let (mut seen, mut todo, mut path) = (HashSet::new(), vec![root], HashMap::new());
        while let Some(id) = todo.pop() {
            if !seen.insert(id) {
                continue;
            }
            for dep in nodes[id]["deps"].as_array().unwrap() {
                let linked = dep["dep_kinds"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|k| matches!(k["kind"].as_str(), None | Some("build")));
                let dep_id = dep["pkg"].as_str().unwrap();
                if linked && !seen.contains(dep_id) {
                    path.entry(dep_id).or_insert(id);
                    todo.push(dep_id);
                }
            }
        }
        let offenders: Vec<String> = seen
            .iter()
            .filter(|id| names[**id] == "pkg-config")
            .map(|id| {
                let mut chain = vec![names[*id]];
                let mut at = *id;
                while let Some(parent) = path.get(at) {
                    chain.push(names[*parent]);
                    at = parent;
                }
                chain.reverse();
                chain.join(" -> ")
            })
            .collect();
        assert!(
            offenders.is_empty(),
            "xtask depends on a crate that needs a system library: {offenders:?}"
        );
    }
}
