//! `cargo xtask vm-test`: the integration tests on a real distribution kernel, booted under
//! qemu with software emulation (TCG), so the kernel paths a stock Debian 12 host takes are
//! tested — on 6.1 the agent has no TCX and attaches its loss classifier through clsact +
//! cls_bpf, which the build host's newer kernel never exercises.
//!
//! This module owns everything under `<target>/vm/`: Debian's cloud kernel (downloaded with
//! `apt-get download` and unpacked with `dpkg-deb -x`, never installed on the host, reused once
//! unpacked), the initramfs staging tree and archive, and the qemu run. The guest is a busybox
//! initramfs holding the kernel modules the faults need, the host's own `ip`, `tc`, `nft`,
//! `nsenter`, `unshare`, `setpriv` and `ping` with their shared libraries, the `faultline`
//! binary and the integration test executables; its `/init` runs each test executable and
//! prints one `FAULTLINE-VM-RESULT:` line. The cloud kernel has no 9p or virtio-fs, so the
//! serial console is the only way results come back; it is streamed to the terminal as it
//! arrives.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    fs,
    io::{Read as _, Write as _},
    os::unix::fs::{symlink, PermissionsExt as _},
    path::{Path, PathBuf},
    process::Stdio,
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context as _, Result};
use clap::Args;

use crate::{exec, host, prereqs};

/// The metapackage that always depends on the current Debian 12 cloud kernel; we resolve it to
/// the versioned `linux-image-6.1.0-N-cloud-amd64` package, which holds the files. The cloud
/// flavour boots fast (few drivers) and is what Debian runs on virtual machines.
const KERNEL_METAPACKAGE: &str = "linux-image-cloud-amd64";

/// The modules the faults and the test lab need; their dependencies are added from the
/// modules' own `depends=` lists. act_mirred is not used by the agent (its ingress redirect is
/// eBPF) but keeps the guest's tc able to do what the host's can.
const MODULES: &[&str] = &[
    "veth",
    "sch_netem",
    "sch_ingress",
    "cls_bpf",
    "act_mirred",
    "ifb",
    "sch_tbf",
    "sch_htb",
    "nf_tables",
    "nft_reject_inet",
    "nft_numgen",
    "nft_ct",
    "nft_limit",
    // The disk tests' filesystems are on loop devices (ext4 is built in).
    "loop",
];

/// Host tools the tests and the lab call by name (`ip netns`, `nsenter --net=`, `nft list`,
/// `ping`, `setpriv --bounding-set`, `bash` for its /dev/tcp, `sysctl`; the disk tests'
/// `mkfs.ext4`, `losetup --find --show` and `dd oflag=direct`); the guest gets the host's own
/// binaries, so it behaves like the host run does. busybox provides everything else.
const TOOLS: &[&str] = &[
    "ip",
    "tc",
    "nft",
    "nsenter",
    "unshare",
    "ping",
    "setpriv",
    "bash",
    "sysctl",
    "mkfs.ext4",
    "losetup",
    "dd",
];

/// Workspace directories the tests read at run time through compile-time paths
/// (`env!("CARGO_MANIFEST_DIR")/../systemd/faultline.service`); the guest gets them at the same
/// absolute paths.
const SOURCE_DIRS: &[&str] = &["systemd", "docs"];

/// The line `/init` ends with: `FAULTLINE-VM-RESULT: pass` or `FAULTLINE-VM-RESULT: fail <n>`.
const RESULT_MARKER: &str = "FAULTLINE-VM-RESULT:";

#[derive(Debug, Args)]
pub struct Options {
    /// Instead of the integration tests: the Debian package under its systemd unit, in a
    /// Debian 12 guest with systemd as PID 1 (the description above says what it checks)
    #[arg(long, conflicts_with_all = ["test_args", "memory", "timeout", "fleet"])]
    pub systemd: bool,
    /// Instead of the integration tests: a fleet across kernels, three Debian 12 guests with
    /// the package under systemd, driven by `faultline fleet run` over mutual TLS from one of
    /// them (the description above says what it checks)
    #[arg(long, conflicts_with_all = ["test_args", "memory", "timeout"])]
    pub fleet: bool,
    /// Kill the VM and fail after this many seconds
    #[arg(long, default_value_t = 1500)]
    timeout: u64,
    /// Guest memory in MiB
    #[arg(long, default_value_t = 2048)]
    memory: u32,
    /// Arguments for every test executable in the guest, after `--` (e.g. -- loss_egress_udp)
    #[arg(last = true, value_name = "TEST_ARGS")]
    test_args: Vec<String>,
}

impl Default for Options {
    /// What `cargo xtask test` runs: the clap defaults, every test.
    fn default() -> Self {
        Self {
            systemd: false,
            fleet: false,
            timeout: 1500,
            memory: 2048,
            test_args: Vec::new(),
        }
    }
}

impl Options {
    /// The defaults, with `test_args` for every test executable (a test name filter): what
    /// `cargo xtask bench` runs for the netem figures.
    pub fn with_test_args(test_args: &[&str]) -> Self {
        Self {
            test_args: test_args.iter().map(|a| a.to_string()).collect(),
            ..Self::default()
        }
    }
}

/// What a guest run printed on its console, and the outcome it reported.
pub struct GuestRun {
    pub console: String,
    /// Ok when the guest reported that every test passed.
    pub verdict: Result<()>,
}

/// `cargo xtask vm-test`.
pub fn run(o: Options) -> Result<()> {
    if o.systemd {
        return crate::systemd_guest::run();
    }
    if o.fleet {
        return crate::systemd_guest::run_fleet();
    }
    let started = Instant::now();
    run_guest(o)?.verdict?;
    println!("vm-test: passed in {:.1}s", started.elapsed().as_secs_f64());
    Ok(())
}

/// Prepares and boots the guest and returns its console whatever the tests' outcome; fails
/// only when the guest could not be prepared or started.
pub fn run_guest(o: Options) -> Result<GuestRun> {
    if !host::is_root()? {
        bail!(
            "`cargo xtask vm-test` needs root: it may install qemu-system-x86 with apt, and it \
             builds the agent like `cargo xtask test` does; run it as root"
        );
    }
    let started = Instant::now();
    prereqs::ensure()?;
    ensure_qemu()?;
    let vm_dir = target_dir().join("vm");
    fs::create_dir_all(&vm_dir).with_context(|| format!("creating {}", vm_dir.display()))?;
    let kernel = Kernel::fetch(&vm_dir).context("fetching the guest kernel")?;
    let artifacts = build().context("building the agent and the integration tests")?;
    let initrd = build_initramfs(&vm_dir, &kernel, &artifacts, &o.test_args)
        .context("building the initramfs")?;
    println!("vm: prepared in {:.1}s", started.elapsed().as_secs_f64());
    boot(&kernel, &initrd, &o)
}

pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| host::workspace_root().join("target"))
}

pub fn ensure_qemu() -> Result<()> {
    if let Some(qemu) = host::find_program("qemu-system-x86_64") {
        println!("qemu: {} present", qemu.display());
        return Ok(());
    }
    println!("qemu: qemu-system-x86_64 not found; installing it with apt");
    prereqs::apt_packages(prereqs::VM_APT_PACKAGES)
}

/// Downloads `package`'s .deb into `debs` (reusing one already there) and unpacks it into
/// `into`; the host's dpkg database is never touched.
fn download_and_unpack(package: &str, debs: &Path, into: &Path) -> Result<()> {
    fs::create_dir_all(debs).with_context(|| format!("creating {}", debs.display()))?;
    let find = || -> Result<Option<PathBuf>> {
        let prefix = format!("{package}_");
        Ok(fs::read_dir(debs)
            .with_context(|| format!("reading {}", debs.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".deb"))
            }))
    };
    let deb = match find()? {
        Some(deb) => deb,
        None => {
            // Root downloads into a directory the `_apt` sandbox user cannot write; apt then
            // warns and downloads unsandboxed anyway, so ask for that directly.
            let mut download = exec::command(
                "apt-get",
                ["-o", "APT::Sandbox::User=root", "download", package],
            );
            download.current_dir(debs);
            exec::run(&mut download)?;
            find()?.with_context(|| {
                format!(
                    "apt-get download {package} left no .deb in {}",
                    debs.display()
                )
            })?
        }
    };
    let partial = into.with_extension("partial");
    let _ = fs::remove_dir_all(&partial);
    exec::run(exec::command("dpkg-deb", ["-x"]).arg(&deb).arg(&partial))?;
    // Unpack beside and rename, so an interrupted unpack is never mistaken for a cached one.
    fs::rename(&partial, into)
        .with_context(|| format!("renaming {} to {}", partial.display(), into.display()))
}

/// Debian's cloud kernel, unpacked under `<target>/vm/kernel`.
struct Kernel {
    release: String,
    vmlinuz: PathBuf,
    config: PathBuf,
    /// `lib/modules/<release>`.
    modules: PathBuf,
}

impl Kernel {
    fn fetch(vm_dir: &Path) -> Result<Self> {
        let root = vm_dir.join("kernel");
        if let Ok(kernel) = Self::at(&root) {
            println!(
                "kernel: reusing {} ({})",
                kernel.release,
                kernel.vmlinuz.display()
            );
            return Ok(kernel);
        }
        let package = Self::package()?;
        println!("kernel: {KERNEL_METAPACKAGE} -> {package}; downloading (not installing)");
        let _ = fs::remove_dir_all(&root);
        download_and_unpack(&package, &vm_dir.join("debs"), &root)?;
        Self::at(&root)
    }

    /// The versioned image package the metapackage depends on, from apt's index (refreshed
    /// once if apt does not know the metapackage yet).
    fn package() -> Result<String> {
        let depends = || {
            exec::probe(&mut exec::command(
                "apt-cache",
                ["depends", KERNEL_METAPACKAGE],
            ))
            .and_then(|text| {
                text.lines()
                    .filter_map(|l| l.trim().strip_prefix("Depends:"))
                    .map(str::trim)
                    .find(|p| p.starts_with("linux-image-") && p.ends_with("-cloud-amd64"))
                    .map(str::to_owned)
            })
        };
        if let Some(package) = depends() {
            return Ok(package);
        }
        println!("kernel: apt does not know {KERNEL_METAPACKAGE}; refreshing the package index");
        prereqs::apt_update()?;
        depends().with_context(|| {
            format!(
                "`apt-cache depends {KERNEL_METAPACKAGE}` names no linux-image-*-cloud-amd64 \
                 package"
            )
        })
    }

    /// The kernel unpacked at `root`, if it is complete.
    fn at(root: &Path) -> Result<Self> {
        let boot = root.join("boot");
        let vmlinuz = fs::read_dir(&boot)
            .with_context(|| format!("reading {}", boot.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("vmlinuz-"))
            })
            .with_context(|| format!("no vmlinuz-* in {}", boot.display()))?;
        let release = vmlinuz
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix("vmlinuz-"))
            .context("vmlinuz name")?
            .to_owned();
        let config = boot.join(format!("config-{release}"));
        let modules = root.join("lib/modules").join(&release);
        ensure!(config.is_file(), "{} is missing", config.display());
        ensure!(modules.is_dir(), "{} is missing", modules.display());
        Ok(Self {
            release,
            vmlinuz,
            config,
            modules,
        })
    }
}

/// Integration test executables the guest does not run, and why: what they check does not
/// depend on the kernel, and the guest lacks what they need.
const HOST_ONLY: &[(&str, &str)] = &[
    (
        "python",
        "the guest has no Python, and the gRPC exchange it checks (grpcio on the unix socket) \
         does not depend on the kernel",
    ),
    (
        "chaostoolkit",
        "the guest has no Python to run Chaos Toolkit, and what it checks (the extension's \
         calls, leases renewed and left to expire) does not depend on the kernel",
    ),
    (
        "deploy",
        "the guest has neither promtool nor Python, and checking rules and manifests offline \
         does not touch the kernel",
    ),
    (
        "flood",
        "an emulated guest offers about 130 TLS handshakes a second, not the 1000 the test is \
         about, and the refusal bookkeeping it checks does not depend on the kernel",
    ),
];

/// What the guest runs: the agent binary and the integration test executables by name.
struct Artifacts {
    faultline: PathBuf,
    tests: Vec<(String, PathBuf)>,
}

fn build() -> Result<Artifacts> {
    // The same debug build `cargo xtask test` makes, so the two share the build cache.
    exec::run(&mut exec::command("cargo", ["build", "-p", "faultline"]))?;
    let faultline = target_dir().join("debug/faultline");
    ensure!(faultline.is_file(), "{} was not built", faultline.display());
    let json = exec::stdout_of(&mut exec::command(
        "cargo",
        [
            "test",
            "-p",
            "faultline-tests",
            "--no-run",
            "--message-format=json",
        ],
    ))?;
    let mut tests = test_executables(&json)?;
    tests.retain(
        |(name, _)| match HOST_ONLY.iter().find(|(n, _)| n == name) {
            Some((_, why)) => {
                println!("vm: tests/{name} runs on the host only: {why}");
                false
            }
            None => true,
        },
    );
    ensure!(
        !tests.is_empty(),
        "cargo test --no-run listed no integration test executables"
    );
    Ok(Artifacts { faultline, tests })
}

/// The integration test executables (target kind `test`) from cargo's JSON messages; the
/// harness library's own unit-test executable is left out.
fn test_executables(json: &str) -> Result<Vec<(String, PathBuf)>> {
    let mut tests = BTreeMap::new();
    for line in json.lines().filter(|l| l.starts_with('{')) {
        let message: serde_json::Value =
            serde_json::from_str(line).with_context(|| format!("cargo JSON message {line:?}"))?;
        if message["reason"] != "compiler-artifact" || message["profile"]["test"] != true {
            continue;
        }
        let is_test = message["target"]["kind"]
            .as_array()
            .is_some_and(|kinds| kinds.iter().any(|k| k == "test"));
        if let (true, Some(name), Some(exe)) = (
            is_test,
            message["target"]["name"].as_str(),
            message["executable"].as_str(),
        ) {
            tests.insert(name.to_owned(), PathBuf::from(exe));
        }
    }
    Ok(tests.into_iter().collect())
}

/// Builds `<target>/vm/initramfs.cpio.gz` from a fresh staging tree and returns its path.
fn build_initramfs(
    vm_dir: &Path,
    kernel: &Kernel,
    artifacts: &Artifacts,
    test_args: &[String],
) -> Result<PathBuf> {
    let stage = vm_dir.join("initramfs");
    if stage.exists() {
        fs::remove_dir_all(&stage).with_context(|| format!("removing {}", stage.display()))?;
    }
    for dir in [
        "bin", "sbin", "usr/bin", "usr/sbin", "lib64", "etc", "proc", "sys", "dev", "run", "tmp",
        "var/lib", "root", "tests", "boot",
    ] {
        mkdir(&stage.join(dir))?;
    }

    let busybox = busybox(vm_dir)?;
    let mut stager = Stager::new(&stage);
    stager.file(&busybox, "bin/busybox", false)?;
    // Applets go to /bin only: PATH puts /usr/sbin and /usr/bin first, so the host's real
    // `ip`, `nsenter`, `ping` etc. win over busybox's smaller versions of them.
    let applets = exec::capture(&mut exec::command(&busybox.to_string_lossy(), ["--list"]))?;
    for applet in applets.lines().map(str::trim).filter(|a| !a.is_empty()) {
        if applet != "busybox" {
            symlink("busybox", stage.join("bin").join(applet))
                .with_context(|| format!("linking applet {applet}"))?;
        }
    }
    // The kernel's module autoloader runs /sbin/modprobe (busybox's reads modules.dep and
    // modules.alias, which `modules` writes), for anything not loaded up front.
    symlink("../bin/busybox", stage.join("sbin/modprobe")).context("linking /sbin/modprobe")?;

    for tool in TOOLS {
        let path = host::find_program(tool).with_context(|| {
            format!("`{tool}` is not installed on the host; the guest copies the host's")
        })?;
        let inside = path.strip_prefix("/").unwrap_or(&path).to_owned();
        stager.executable(&path, &inside, false)?;
    }
    stager.executable(&artifacts.faultline, Path::new("bin/faultline"), true)?;
    for (name, exe) in &artifacts.tests {
        stager.executable(exe, &Path::new("tests").join(name), true)?;
    }

    // The paths go through the tests crate's directory (`tests/../systemd`), so it must exist.
    let tests_dir = host::workspace_root().join("tests");
    mkdir(&stage.join(tests_dir.strip_prefix("/").unwrap_or(&tests_dir)))?;
    for dir in SOURCE_DIRS {
        let from = host::workspace_root().join(dir);
        let inside = from.strip_prefix("/").unwrap_or(&from).to_owned();
        copy_tree(&from, &stage.join(inside))?;
    }

    let load_order = modules(kernel, &stage)?;
    fs::copy(
        &kernel.config,
        stage
            .join("boot")
            .join(format!("config-{}", kernel.release)),
    )
    .with_context(|| format!("copying {}", kernel.config.display()))?;
    for etc in ["protocols", "services"] {
        let host_file = Path::new("/etc").join(etc);
        if host_file.is_file() {
            fs::copy(&host_file, stage.join("etc").join(etc))
                .with_context(|| format!("copying {}", host_file.display()))?;
        }
    }
    write(&stage.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n")?;
    write(&stage.join("etc/group"), "root:x:0:\n")?;
    let init = stage.join("init");
    write(
        &init,
        &init_script(kernel, &load_order, artifacts, test_args),
    )?;
    fs::set_permissions(&init, fs::Permissions::from_mode(0o755))
        .with_context(|| format!("chmod {}", init.display()))?;

    // busybox's cpio (the guest's own) writes the newc format the kernel unpacks, so the host
    // needs no cpio package; gzip -1 because decompression happens under emulation.
    let initrd = vm_dir.join("initramfs.cpio.gz");
    let script = format!(
        "set -euo pipefail; cd '{}'; find . -mindepth 1 | LC_ALL=C sort | '{}' cpio -o -H newc \
         -R 0:0 | gzip -1 > '{}'",
        stage.display(),
        busybox.display(),
        initrd.display()
    );
    exec::capture(&mut exec::command("bash", ["-c", &script]))?;
    let size = fs::metadata(&initrd)
        .with_context(|| format!("reading {}", initrd.display()))?
        .len();
    println!(
        "initramfs: {} ({:.1} MiB, {} modules, {} test executables)",
        initrd.display(),
        size as f64 / (1024.0 * 1024.0),
        load_order.len(),
        artifacts.tests.len()
    );
    Ok(initrd)
}

/// A static busybox: the host's when busybox-static is installed, else Debian's package,
/// downloaded and unpacked under `<target>/vm/busybox-static`.
fn busybox(vm_dir: &Path) -> Result<PathBuf> {
    let installed = exec::probe(&mut exec::command(
        "dpkg-query",
        ["-W", "-f=${Status}", "busybox-static"],
    ))
    .is_some_and(|s| s.trim() == "install ok installed");
    if installed && Path::new("/bin/busybox").is_file() {
        return Ok(PathBuf::from("/bin/busybox"));
    }
    let root = vm_dir.join("busybox-static");
    let binary = root.join("bin/busybox");
    if !binary.is_file() {
        println!("busybox: busybox-static is not installed; downloading it (not installing)");
        let _ = fs::remove_dir_all(&root);
        download_and_unpack("busybox-static", &vm_dir.join("debs"), &root)?;
    }
    ensure!(binary.is_file(), "{} is missing", binary.display());
    Ok(binary)
}

/// Copies files into the staging tree, with the shared libraries dynamic executables need
/// (found with `ldd`, copied once each to the path the loader looks them up at).
struct Stager<'a> {
    stage: &'a Path,
    libraries: BTreeSet<PathBuf>,
}

impl<'a> Stager<'a> {
    fn new(stage: &'a Path) -> Self {
        Self {
            stage,
            libraries: BTreeSet::new(),
        }
    }

    /// Copies `from` to `inside` (relative to the stage), following symlinks; with
    /// `strip_debug`, through `strip --strip-debug`, which shrinks the debug builds from
    /// ~150 MB to a fraction and the archive with them.
    fn file(&self, from: &Path, inside: &str, strip_debug: bool) -> Result<()> {
        self.copy(from, Path::new(inside), strip_debug)
    }

    fn copy(&self, from: &Path, inside: &Path, strip_debug: bool) -> Result<()> {
        let to = self.stage.join(inside);
        if let Some(parent) = to.parent() {
            mkdir(parent)?;
        }
        if strip_debug {
            exec::capture(
                exec::command("strip", ["--strip-debug", "-o"])
                    .arg(&to)
                    .arg(from),
            )?;
        } else {
            fs::copy(from, &to)
                .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
        }
        Ok(())
    }

    fn executable(&mut self, from: &Path, inside: &Path, strip_debug: bool) -> Result<()> {
        self.copy(from, inside, strip_debug)?;
        for library in shared_libraries(from)? {
            if self.libraries.insert(library.clone()) {
                let inside = library.strip_prefix("/").unwrap_or(&library).to_owned();
                self.copy(&library, &inside, false)?;
            }
        }
        Ok(())
    }
}

/// The shared libraries and the dynamic loader `ldd` lists for `binary`; none for a static one.
fn shared_libraries(binary: &Path) -> Result<Vec<PathBuf>> {
    let Some(text) = exec::probe(&mut exec::command("ldd", [binary])) else {
        // ldd exits 1 on static executables ("not a dynamic executable").
        return Ok(Vec::new());
    };
    Ok(parse_ldd(&text))
}

fn parse_ldd(text: &str) -> Vec<PathBuf> {
    text.lines()
        .filter_map(|line| {
            // `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)` or
            // `/lib64/ld-linux-x86-64.so.2 (0x...)`; the vDSO has no file.
            let path = match line.split_once("=>") {
                Some((_, right)) => right.split_whitespace().next()?,
                None => line.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

/// Copies [`MODULES`] and their dependencies into the stage (decompressed, since busybox's
/// insmod takes plain `.ko` files), writes `modules.dep` and `modules.alias` for them, and
/// returns their relative paths in load order: every module after its dependencies.
fn modules(kernel: &Kernel, stage: &Path) -> Result<Vec<String>> {
    let mut by_name = BTreeMap::new();
    index_modules(&kernel.modules, &kernel.modules, &mut by_name)?;
    let mut order = Vec::new();
    let mut seen = BTreeSet::new();
    let mut infos = BTreeMap::new();
    for module in MODULES {
        visit(module, &by_name, &mut infos, &mut seen, &mut order)?;
    }

    let inside = stage.join("lib/modules").join(&kernel.release);
    let mut dep = String::new();
    let mut alias = String::new();
    let mut load_order = Vec::new();
    for name in &order {
        let info = &infos[name];
        let (_, relative) = &by_name[name];
        let plain = plain_ko(relative);
        let to = inside.join(&plain);
        if let Some(parent) = to.parent() {
            mkdir(parent)?;
        }
        fs::write(&to, &info.image).with_context(|| format!("writing {}", to.display()))?;
        let deps: Vec<String> = info
            .depends
            .iter()
            .map(|d| plain_ko(&by_name[d].1))
            .collect();
        let _ = writeln!(dep, "{plain}: {}", deps.join(" "));
        for a in &info.aliases {
            let _ = writeln!(alias, "alias {a} {name}");
        }
        load_order.push(plain);
    }
    write(&inside.join("modules.dep"), &dep)?;
    write(&inside.join("modules.alias"), &alias)?;
    let builtin = kernel.modules.join("modules.builtin");
    if builtin.is_file() {
        fs::copy(&builtin, inside.join("modules.builtin"))
            .with_context(|| format!("copying {}", builtin.display()))?;
    }
    Ok(load_order)
}

/// `kernel/net/x.ko.xz` -> `kernel/net/x.ko`.
fn plain_ko(relative: &str) -> String {
    let end = relative.find(".ko").map_or(relative.len(), |i| i + 3);
    relative[..end].to_owned()
}

/// Module name (dashes as underscores, as the kernel names them) -> (file, path relative to
/// the modules directory).
fn index_modules(
    root: &Path,
    dir: &Path,
    out: &mut BTreeMap<String, (PathBuf, String)>,
) -> Result<()> {
    for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            index_modules(root, &path, out)?;
            continue;
        }
        let Some(file) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if let Some((stem, _)) = file.split_once(".ko") {
            let relative = path
                .strip_prefix(root)
                .unwrap_or(&path)
                .to_string_lossy()
                .into_owned();
            out.insert(stem.replace('-', "_"), (path.clone(), relative));
        }
    }
    Ok(())
}

struct ModuleInfo {
    image: Vec<u8>,
    depends: Vec<String>,
    aliases: Vec<String>,
}

/// Depth-first: dependencies are pushed to `order` before the module itself.
fn visit(
    name: &str,
    by_name: &BTreeMap<String, (PathBuf, String)>,
    infos: &mut BTreeMap<String, ModuleInfo>,
    seen: &mut BTreeSet<String>,
    order: &mut Vec<String>,
) -> Result<()> {
    if !seen.insert(name.to_owned()) {
        return Ok(());
    }
    let (path, _) = by_name
        .get(name)
        .with_context(|| format!("module {name} is not in the kernel package"))?;
    let image = module_image(path)?;
    let modinfo = modinfo(&image).with_context(|| format!("reading {}", path.display()))?;
    let depends: Vec<String> = modinfo
        .iter()
        .filter(|(k, _)| k == "depends")
        .flat_map(|(_, v)| v.split(','))
        .filter(|d| !d.is_empty())
        .map(|d| d.replace('-', "_"))
        .collect();
    let aliases = modinfo
        .iter()
        .filter(|(k, _)| k == "alias")
        .map(|(_, v)| v.clone())
        .collect();
    for dep in &depends {
        visit(dep, by_name, infos, seen, order)?;
    }
    infos.insert(
        name.to_owned(),
        ModuleInfo {
            image,
            depends,
            aliases,
        },
    );
    order.push(name.to_owned());
    Ok(())
}

/// A module's bytes, decompressed if Debian shipped it compressed.
fn module_image(path: &Path) -> Result<Vec<u8>> {
    let name = path.to_string_lossy();
    let tool = if name.ends_with(".ko.xz") {
        Some("xz")
    } else if name.ends_with(".ko.zst") {
        Some("zstd")
    } else if name.ends_with(".ko.gz") {
        Some("gzip")
    } else {
        None
    };
    match tool {
        None => fs::read(path).with_context(|| format!("reading {}", path.display())),
        Some(tool) => {
            let output = exec::command(tool, ["-dc"])
                .arg(path)
                .stderr(Stdio::inherit())
                .output()
                .with_context(|| format!("cannot start `{tool} -dc {name}`"))?;
            ensure!(
                output.status.success(),
                "`{tool} -dc {name}` failed ({})",
                output.status
            );
            Ok(output.stdout)
        }
    }
}

/// The `key=value` pairs of a module's `.modinfo` ELF section (what `modinfo` prints), read
/// from the file because the host need not have kmod and the kernel package ships no
/// modules.dep.
fn modinfo(image: &[u8]) -> Result<Vec<(String, String)>> {
    use object::{Object as _, ObjectSection as _};
    let file = object::File::parse(image).context("not an ELF kernel module")?;
    let section = file
        .section_by_name(".modinfo")
        .context("no .modinfo section")?;
    Ok(section
        .data()
        .context("unreadable .modinfo section")?
        .split(|&b| b == 0)
        .filter_map(|entry| {
            let entry = String::from_utf8_lossy(entry);
            let (k, v) = entry.split_once('=')?;
            Some((k.to_owned(), v.to_owned()))
        })
        .collect())
}

/// The guest's `/init` (busybox sh): set up the mounts the agent and the lab need, load the
/// modules, show `faultline info`, run every test executable one test at a time, print the
/// result marker and power off. It never exits (PID 1 exiting panics the kernel): every path
/// ends in `poweroff -f`.
fn init_script(
    kernel: &Kernel,
    load_order: &[String],
    artifacts: &Artifacts,
    test_args: &[String],
) -> String {
    let modules = load_order.join(" ");
    let test_args: String = test_args
        .iter()
        .map(|a| format!(" '{}'", a.replace('\'', r"'\''")))
        .collect();
    let tests = artifacts
        .tests
        .iter()
        .map(|(name, _)| name.as_str())
        .collect::<Vec<_>>()
        .join(" ");
    let release = &kernel.release;
    format!(
        r#"#!/bin/sh
# Generated by `cargo xtask vm-test` (xtask/src/vm.rs).
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
export LD_LIBRARY_PATH=/lib/x86_64-linux-gnu:/usr/lib/x86_64-linux-gnu
export HOME=/root
# Tests that may push the whole host to its OOM killer do so only here.
export FAULTLINE_VM_GUEST=1
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /run
# No tmpfs on /tmp: the initramfs root is already a writable RAM filesystem, and a mount there
# would hide the workspace files staged at their host paths when the workspace is under /tmp.
mount -t bpf bpf /sys/fs/bpf
mount -t cgroup2 cgroup2 /sys/fs/cgroup
echo /sbin/modprobe > /proc/sys/kernel/modprobe
ip link set lo up
hostname faultline-vm
echo "FAULTLINE-VM: kernel $(uname -r), $(nproc) CPUs"

for m in {modules}; do
    insmod /lib/modules/{release}/$m || echo "FAULTLINE-VM: insmod $m failed"
done

# `faultline info` asks a running agent; start one just for that.
faultline serve --socket /run/faultline/info.sock --state-dir /run/faultline/state \
    --bpf-pin-dir /sys/fs/bpf/faultline-info > /tmp/info-agent.log 2>&1 &
agent=$!
i=0
while [ ! -S /run/faultline/info.sock ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
echo "FAULTLINE-VM: faultline info"
faultline --agent /run/faultline/info.sock info || cat /tmp/info-agent.log
kill -TERM $agent; wait $agent

failed=0
for t in {tests}; do
    echo "FAULTLINE-VM: running tests/$t"
    start=$(date +%s)
    if FAULTLINE_BIN=/bin/faultline /tests/$t --test-threads=1{test_args} 2>&1; then
        echo "FAULTLINE-VM: tests/$t passed in $(( $(date +%s) - start ))s"
    else
        echo "FAULTLINE-VM: tests/$t FAILED in $(( $(date +%s) - start ))s"
        failed=$((failed + 1))
    fi
done
if [ $failed -eq 0 ]; then
    echo "{RESULT_MARKER} pass"
else
    echo "{RESULT_MARKER} fail $failed"
fi
sync
poweroff -f
"#
    )
}

/// Boots the guest under TCG, streams its console, and turns the result marker into the
/// outcome. KVM is deliberately not used: nested KVM on the machines this runs on may exist
/// as /dev/kvm and still not work, and TCG is fast enough for a busybox guest.
fn boot(kernel: &Kernel, initrd: &Path, o: &Options) -> Result<GuestRun> {
    let mut qemu = exec::command(
        "qemu-system-x86_64",
        [
            "-accel",
            "tcg,thread=multi",
            "-smp",
            "2",
            "-cpu",
            "max",
            "-m",
            &o.memory.to_string(),
            "-nographic",
            "-nic",
            "none",
            "-no-reboot",
            "-kernel",
        ],
    );
    qemu.arg(&kernel.vmlinuz)
        .arg("-initrd")
        .arg(initrd)
        // panic=-1 reboots at once on a panic, which -no-reboot turns into qemu exiting.
        .args(["-append", "console=ttyS0 panic=-1 quiet"]);
    let timeout = Duration::from_secs(o.timeout);
    let QemuRun {
        console,
        status,
        timed_out,
        took,
    } = run_qemu(&mut qemu, timeout)?;
    let took = took.as_secs_f64();
    let outcome = if timed_out {
        Err(anyhow::anyhow!(
            "the VM did not finish within {}s; qemu killed",
            o.timeout
        ))
    } else {
        match verdict(&console) {
            Some(Ok(())) => {
                println!("vm: guest tests passed; qemu ran {took:.1}s");
                Ok(())
            }
            Some(Err(failures)) => Err(anyhow::anyhow!(
                "tests failed in the VM after {took:.1}s: {failures}"
            )),
            None => Err(anyhow::anyhow!(
                "the VM stopped after {took:.1}s ({status}) without a `{RESULT_MARKER}` line; \
                 see the console above"
            )),
        }
    };
    Ok(GuestRun {
        console,
        verdict: outcome,
    })
}

/// What one qemu run printed and how it ended.
pub struct QemuRun {
    pub console: String,
    pub status: std::process::ExitStatus,
    /// qemu was killed at the timeout (or its cutoff).
    pub timed_out: bool,
    pub took: Duration,
}

/// Runs qemu (its stdout piped: the serial console), streaming the console to our stdout as
/// it arrives and keeping a copy; kills qemu after `timeout`.
pub fn run_qemu(qemu: &mut std::process::Command, timeout: Duration) -> Result<QemuRun> {
    run_qemu_labelled(qemu, timeout, None, &Cutoff::default())
}

/// A time, shared between the threads running several guests, after which a guest still
/// running is killed (as at its timeout): set when the guest the others wait for has ended.
#[derive(Default)]
pub struct Cutoff(std::sync::Mutex<Option<Instant>>);

impl Cutoff {
    /// Kills what still runs `grace` from now.
    pub fn set(&self, grace: Duration) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now() + grace);
    }

    fn passed(&self) -> bool {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some_and(|at| Instant::now() > at)
    }
}

/// [`run_qemu`], with each console line shown after `label` (`[ctl] `), for several guests at
/// once (the copy kept is unlabelled), and killed once `cutoff` has passed.
pub fn run_qemu_labelled(
    qemu: &mut std::process::Command,
    timeout: Duration,
    label: Option<String>,
    cutoff: &Cutoff,
) -> Result<QemuRun> {
    qemu.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let shown = exec::display(qemu);
    println!("$ {shown}");
    let started = Instant::now();
    let mut child = qemu
        .spawn()
        .with_context(|| format!("cannot start `{shown}`"))?;
    let mut stdout = child.stdout.take().context("qemu stdout is piped")?;
    // The reader streams the console to our stdout as it arrives and keeps a copy to parse.
    let (done_tx, done_rx) = mpsc::channel();
    let reader = thread::spawn(move || {
        let mut console = Vec::new();
        let mut buf = [0u8; 8192];
        let mut out = std::io::stdout();
        let mut filter = EscapeFilter::default();
        // With a label, output waits for whole lines, so that guests' lines do not interleave.
        let mut line = Vec::new();
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 {
                break;
            }
            let text = filter.feed(&buf[..n]);
            console.extend_from_slice(&text);
            let Some(label) = &label else {
                let _ = out.write_all(&text);
                let _ = out.flush();
                continue;
            };
            for &byte in &text {
                line.push(byte);
                if byte == b'\n' {
                    let _ = out.write_all(&[label.as_bytes(), &line].concat());
                    let _ = out.flush();
                    line.clear();
                }
            }
        }
        if let (Some(label), false) = (&label, line.is_empty()) {
            line.push(b'\n');
            let _ = out.write_all(&[label.as_bytes(), &line].concat());
        }
        let _ = done_tx.send(());
        console
    });
    let timed_out = loop {
        if child.try_wait()?.is_some() {
            break false;
        }
        if started.elapsed() > timeout || cutoff.passed() {
            let _ = child.kill();
            break true;
        }
        let _ = done_rx.recv_timeout(Duration::from_millis(200));
    };
    let status = child.wait().context("waiting for qemu")?;
    let console = String::from_utf8_lossy(&reader.join().unwrap_or_default()).into_owned();
    Ok(QemuRun {
        console,
        status,
        timed_out,
        took: started.elapsed(),
    })
}

/// Drops terminal escape sequences from the console stream: the firmware resets and clears the
/// "screen" (`ESC c`, `ESC [2J`) when it starts, which would wipe the user's terminal, build
/// output included. Keeps its state across reads, which may split a sequence.
#[derive(Default)]
struct EscapeFilter {
    state: Escape,
}

#[derive(Default, Clone, Copy)]
enum Escape {
    #[default]
    Text,
    /// After ESC.
    Start,
    /// Inside `ESC [ ...`, until its final byte.
    Csi,
}

impl EscapeFilter {
    fn feed(&mut self, bytes: &[u8]) -> Vec<u8> {
        let mut text = Vec::with_capacity(bytes.len());
        for &b in bytes {
            self.state = match (self.state, b) {
                (Escape::Text, 0x1b) => Escape::Start,
                (Escape::Text, _) => {
                    text.push(b);
                    Escape::Text
                }
                (Escape::Start, b'[') => Escape::Csi,
                (Escape::Start, _) => Escape::Text,
                (Escape::Csi, 0x40..=0x7e) => Escape::Text,
                (Escape::Csi, _) => Escape::Csi,
            };
        }
        text
    }
}

/// The outcome the console's last marker line reports, with the failed tests named; `None`
/// when the guest never printed one (it crashed or hung).
fn verdict(console: &str) -> Option<Result<(), String>> {
    let result = console
        .lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix(RESULT_MARKER))?
        .trim();
    if result == "pass" {
        return Some(Ok(()));
    }
    let executables = result.strip_prefix("fail").unwrap_or(result).trim();
    // libtest ends a failed run with `failures:` and the failed tests' names, one per indented
    // line; the earlier `failures:` section (their output) starts with a blank line instead.
    let mut failed = Vec::new();
    let mut in_list = false;
    for line in console.lines().map(str::trim_end) {
        if line == "failures:" {
            in_list = true;
        } else if in_list && line.starts_with("    ") && !line.trim().contains(' ') {
            failed.push(line.trim());
        } else {
            in_list = false;
        }
    }
    Some(Err(format!(
        "{executables} test executable(s) failed; failed tests: {}",
        if failed.is_empty() {
            "see the console above".to_owned()
        } else {
            failed.join(", ")
        }
    )))
}

/// Copies the regular files under `from` to `to`, recreating the directories.
fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    mkdir(to)?;
    for entry in fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
        let path = entry?.path();
        let target = to.join(path.file_name().context("directory entry without a name")?);
        if path.is_dir() {
            copy_tree(&path, &target)?;
        } else if path.is_file() {
            fs::copy(&path, &target)
                .with_context(|| format!("copying {} to {}", path.display(), target.display()))?;
        }
    }
    Ok(())
}

fn mkdir(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))
}

fn write(path: &Path, text: &str) -> Result<()> {
    fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_lines_give_library_and_loader_paths() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                    \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f79)\n\
                    \t/lib64/ld-linux-x86-64.so.2 (0x00007f79)\n";
        assert_eq!(
            parse_ldd(text),
            [
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2")
            ]
        );
    }

    #[test]
    fn the_last_marker_decides_and_names_failed_tests() {
        assert_eq!(verdict("boot\nFAULTLINE-VM-RESULT: pass\r\n"), Some(Ok(())));
        let console = "test loss_egress_udp ... FAILED\r\n\r\nfailures:\r\n\r\n\
                       ---- loss_egress_udp stdout ----\r\nError: boom\r\n\r\n\
                       failures:\r\n    loss_egress_udp\r\n    conflict\r\n\r\n\
                       FAULTLINE-VM-RESULT: fail 2\r\n";
        assert_eq!(
            verdict(console),
            Some(Err(
                "2 test executable(s) failed; failed tests: loss_egress_udp, conflict".to_owned()
            ))
        );
        assert_eq!(verdict("Kernel panic - not syncing"), None);
    }

    #[test]
    fn only_integration_test_executables_are_taken() {
        let artifact = |kind: &str, name: &str| {
            serde_json::json!({
                "reason": "compiler-artifact",
                "profile": {"test": true},
                "target": {"kind": [kind], "name": name},
                "executable": format!("/t/{name}-1"),
            })
            .to_string()
        };
        let json = [
            artifact("test", "loss"),
            artifact("lib", "faultline_tests"),
            r#"{"reason":"build-finished","success":true}"#.to_owned(),
        ]
        .join("\n");
        assert_eq!(
            test_executables(&json).unwrap(),
            [("loss".to_owned(), PathBuf::from("/t/loss-1"))]
        );
    }

    #[test]
    fn escape_sequences_are_dropped_even_when_split() {
        let mut filter = EscapeFilter::default();
        let mut text = filter.feed(b"\x1bc\x1b[?7");
        text.extend(filter.feed(b"l\x1b[2JSeaBIOS\r\n"));
        assert_eq!(text, b"SeaBIOS\r\n");
    }

    #[test]
    fn compressed_module_names_lose_their_suffix() {
        assert_eq!(
            plain_ko("kernel/net/sched/cls_bpf.ko.xz"),
            "kernel/net/sched/cls_bpf.ko"
        );
        assert_eq!(
            plain_ko("kernel/drivers/net/veth.ko"),
            "kernel/drivers/net/veth.ko"
        );
    }
}
