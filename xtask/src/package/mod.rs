//! `cargo xtask package`: builds faultline in release mode and writes
//! `target/debian/faultline_<version>_<arch>.deb` with dpkg-deb, then checks what it wrote —
//! its contents against what the package must hold (`check`), and lintian. The completions and
//! man pages come from the freshly built binary itself (`faultline completions`,
//! `faultline __man-pages`): xtask never links the agent crate, whose build needs the eBPF
//! toolchain. It never installs the package; installing is a clean root's job.

mod check;
mod debian;

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    time::Instant,
};

use anyhow::{bail, Context as _, Result};
use clap::Args;
use debian::PACKAGE;

use crate::{exec, host, prereqs};

/// Where each shell looks for completions a package installs.
const COMPLETIONS: &[(&str, &str)] = &[
    ("bash", "usr/share/bash-completion/completions/faultline"),
    ("zsh", "usr/share/zsh/vendor-completions/_faultline"),
    ("fish", "usr/share/fish/vendor_completions.d/faultline.fish"),
];
const MAN_DIR: &str = "usr/share/man/man1";
const DOC_DIR: &str = "usr/share/doc/faultline";
/// lintian reads a binary package's overrides from here.
const LINTIAN_OVERRIDES: &str = "usr/share/lintian/overrides/faultline";

#[derive(Debug, Args)]
pub struct Options {
    /// The Debian revision: the package's version is the binary's, a dash and this (0.1.0-1).
    /// A higher revision makes a package that upgrades an earlier build of the same code
    #[arg(long, default_value = "1", value_parser = revision)]
    revision: String,
}

fn revision(text: &str) -> Result<String, String> {
    let valid = text.starts_with(|c: char| c.is_ascii_digit())
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+.~".contains(c));
    if valid {
        Ok(text.to_owned())
    } else {
        Err(format!(
            "{text:?} is not a Debian revision (digits first, then letters, digits, + . ~)"
        ))
    }
}

/// The time the package's files carry: SOURCE_DATE_EPOCH when the caller sets it (the
/// reproducible-builds convention, for a tree without its history), else the last commit's
/// time.
fn source_date_epoch() -> Result<String> {
    if let Some(epoch) = std::env::var_os("SOURCE_DATE_EPOCH") {
        let epoch = epoch.to_string_lossy().trim().to_owned();
        anyhow::ensure!(
            !epoch.is_empty() && epoch.bytes().all(|b| b.is_ascii_digit()),
            "SOURCE_DATE_EPOCH is {epoch:?}; expected seconds since 1970 (digits only)"
        );
        return Ok(epoch);
    }
    exec::capture(&mut exec::command("git", ["log", "-1", "--format=%ct"]))
        .map(|out| out.trim().to_owned())
        .context(
            "reading the last commit's time for the package's timestamps (outside a git \
             checkout, set SOURCE_DATE_EPOCH)",
        )
}

impl Default for Options {
    /// What other tasks build (the systemd guest): the clap defaults.
    fn default() -> Self {
        Self {
            revision: "1".to_owned(),
        }
    }
}

pub fn run(o: Options) -> Result<()> {
    build(o).map(|_| ())
}

/// `cargo xtask package`, returning the path of the checked .deb.
pub fn build(o: Options) -> Result<PathBuf> {
    let started = Instant::now();
    prereqs::ensure_for_package()?;
    exec::run(&mut exec::command(
        "cargo",
        ["build", "--release", "-p", "faultline"],
    ))?;
    let root = host::workspace_root();
    let binary = root.join("target/release/faultline");
    let version = format!("{}-{}", binary_version(&binary)?, o.revision);
    let architecture = exec::capture(&mut exec::command("dpkg", ["--print-architecture"]))?
        .trim()
        .to_owned();
    let name = format!("{PACKAGE}_{version}_{architecture}");
    let out_dir = root.join("target/debian");
    let stage = out_dir.join(&name);
    let deb = out_dir.join(format!("{name}.deb"));
    let epoch = source_date_epoch()?;

    stage_tree(&stage, &binary, &version, &epoch).context("staging the package's files")?;
    let depends = shlib_depends(&out_dir, &stage.join("usr/bin/faultline"))?;
    write_control(&stage, &version, &architecture, &depends)?;
    // root:root without fakeroot; SOURCE_DATE_EPOCH clamps the archive's timestamps.
    exec::run(
        exec::command("dpkg-deb", ["--root-owner-group", "--build"])
            .arg(&stage)
            .arg(&deb)
            .env("SOURCE_DATE_EPOCH", &epoch),
    )?;
    check::package(&deb, &binary)?;
    lintian(&deb)?;
    println!(
        "package: {} ({:.0?} in all)",
        deb.strip_prefix(&root).unwrap_or(&deb).display(),
        started.elapsed()
    );
    Ok(deb)
}

/// `faultline 0.1.0` -> `0.1.0`.
fn binary_version(binary: &Path) -> Result<String> {
    let out = exec::capture(&mut exec::command(path_str(binary)?, ["--version"]))?;
    out.split_whitespace()
        .nth(1)
        .map(str::to_owned)
        .with_context(|| format!("`{} --version` printed {out:?}", binary.display()))
}

fn path_str(path: &Path) -> Result<&str> {
    path.to_str()
        .with_context(|| format!("{} is not UTF-8", path.display()))
}

/// Lays out every file of the package under `stage` with its final mode; DEBIAN/ comes later.
fn stage_tree(stage: &Path, binary: &Path, version: &str, epoch: &str) -> Result<()> {
    if stage.exists() {
        fs::remove_dir_all(stage).with_context(|| format!("removing {}", stage.display()))?;
    }
    let root = host::workspace_root();
    let faultline = path_str(binary)?;

    // As dh_strip does for an executable: no symbols, no .comment or .note sections.
    let installed = stage.join("usr/bin/faultline");
    make_dir(installed.parent().unwrap())?;
    exec::run(
        exec::command(
            "strip",
            ["--remove-section=.comment", "--remove-section=.note", "-o"],
        )
        .arg(&installed)
        .arg(binary),
    )?;
    set_mode(&installed, 0o755)?;

    let unit = fs::read_to_string(root.join("systemd/faultline.service"))
        .context("reading systemd/faultline.service")?;
    if !unit.contains("\nExecStart=/usr/bin/faultline serve") {
        bail!("systemd/faultline.service must start /usr/bin/faultline, where the package puts it");
    }
    install(
        stage,
        &format!("{}/{}", debian::UNIT_DIR, debian::UNIT),
        unit.as_bytes(),
        0o644,
    )?;
    let config = fs::read(root.join("packaging/faultline.toml"))
        .context("reading packaging/faultline.toml")?;
    install(
        stage,
        debian::CONFIG_FILE.trim_start_matches('/'),
        &config,
        0o644,
    )?;

    for (shell, path) in COMPLETIONS {
        let script = exec::capture(&mut exec::command(faultline, ["completions", shell]))?;
        install(stage, path, script.as_bytes(), 0o644)?;
    }
    let man_dir = stage.join(MAN_DIR);
    exec::run(exec::command(faultline, ["__man-pages"]).arg(&man_dir))?;
    let pages = files_in(&man_dir)?;
    for page in &pages {
        set_mode(page, 0o644)?;
    }
    gzip(&pages)?;

    let commit = exec::capture(&mut exec::command("git", ["rev-parse", "--short", "HEAD"]))?;
    let dirty = !exec::capture(&mut exec::command("git", ["status", "--porcelain"]))?
        .trim()
        .is_empty();
    let commit = format!(
        "{}{}",
        commit.trim(),
        if dirty {
            " with uncommitted changes"
        } else {
            ""
        }
    );
    let date = exec::capture(&mut exec::command(
        "date",
        ["-R", "-u", "-d", &format!("@{epoch}")],
    ))?;
    let changelog = format!("{DOC_DIR}/changelog.Debian");
    install(
        stage,
        &changelog,
        debian::changelog(version, &commit, date.trim()).as_bytes(),
        0o644,
    )?;
    gzip(&[stage.join(changelog)])?;
    install(
        stage,
        &format!("{DOC_DIR}/copyright"),
        debian::copyright(&copyright_years()?, &linked_crates()?).as_bytes(),
        0o644,
    )?;
    let overrides = fs::read(root.join("packaging/lintian-overrides"))
        .context("reading packaging/lintian-overrides")?;
    install(stage, LINTIAN_OVERRIDES, &overrides, 0o644)
}

/// The years of the first and the last commit: `2026`, or `2025-2026`.
fn copyright_years() -> Result<String> {
    let years = exec::capture(&mut exec::command(
        "git",
        ["log", "--format=%cd", "--date=format:%Y"],
    ))?;
    let (last, first) = (years.lines().next(), years.lines().last());
    match (first, last) {
        (Some(first), Some(last)) if first == last => Ok(first.to_owned()),
        (Some(first), Some(last)) => Ok(format!("{first}-{last}")),
        _ => bail!("git log lists no commits"),
    }
}

/// The crates.io crates in the binary, `name version: license`: the agent's and the eBPF
/// programs' (embedded in it), build scripts and proc-macros left out.
fn linked_crates() -> Result<Vec<String>> {
    let mut crates = Vec::new();
    for package in ["faultline", "faultline-ebpf"] {
        let tree = exec::capture(&mut exec::command(
            "cargo",
            [
                "tree",
                "-p",
                package,
                "--edges",
                "normal,no-proc-macro",
                "--prefix",
                "none",
                "--format",
                "{p}|{l}",
            ],
        ))?;
        crates.extend(tree.lines().filter_map(|line| {
            let (name_version, license) = line.trim_end_matches(" (*)").split_once('|')?;
            // Path dependencies are the workspace's own crates.
            if name_version.contains(" (/") {
                return None;
            }
            let (name, version) = name_version.split_once(" v")?;
            let license = if license.is_empty() {
                "see its source"
            } else {
                license
            };
            Some(format!("{name} {version}: {license}"))
        }));
    }
    crates.sort();
    crates.dedup();
    Ok(crates)
}

/// The Depends of the binary's shared libraries, as dpkg-shlibdeps computes them from the
/// libraries' symbols files. It wants a debian/control to read, so it runs in a scratch
/// directory holding a minimal one.
fn shlib_depends(out_dir: &Path, binary: &Path) -> Result<String> {
    let scratch = out_dir.join("shlibdeps");
    install(
        &scratch,
        "debian/control",
        format!("Source: {PACKAGE}\n\nPackage: {PACKAGE}\nArchitecture: any\n").as_bytes(),
        0o644,
    )?;
    let out = exec::capture(
        exec::command("dpkg-shlibdeps", ["-O"])
            .arg(format!("-e{}", path_str(binary)?))
            .current_dir(&scratch),
    )?;
    out.lines()
        .find_map(|line| line.strip_prefix("shlibs:Depends="))
        .map(str::to_owned)
        .with_context(|| format!("dpkg-shlibdeps printed no shlibs:Depends: {out:?}"))
}

fn write_control(stage: &Path, version: &str, architecture: &str, depends: &str) -> Result<()> {
    let control = debian::Control {
        version: version.to_owned(),
        architecture: architecture.to_owned(),
        depends: depends.to_owned(),
        installed_size_kib: installed_size_kib(stage)?,
    };
    let md5sums = md5sums(stage)?;
    install(stage, "DEBIAN/control", control.text().as_bytes(), 0o644)?;
    install(
        stage,
        "DEBIAN/conffiles",
        debian::conffiles().as_bytes(),
        0o644,
    )?;
    install(stage, "DEBIAN/md5sums", md5sums.as_bytes(), 0o644)?;
    install(
        stage,
        "DEBIAN/postinst",
        debian::postinst().as_bytes(),
        0o755,
    )?;
    install(stage, "DEBIAN/prerm", debian::prerm().as_bytes(), 0o755)?;
    install(stage, "DEBIAN/postrm", debian::postrm().as_bytes(), 0o755)
}

/// As dpkg-gencontrol counts it: each file's size rounded up to a KiB, one KiB per directory.
fn installed_size_kib(stage: &Path) -> Result<u64> {
    let mut kib = 0;
    for path in tree(stage)? {
        let meta = fs::symlink_metadata(&path)?;
        kib += if meta.is_file() {
            meta.len().div_ceil(1024)
        } else {
            1
        };
    }
    Ok(kib)
}

/// `md5sum` lines for every file but the conffiles (dpkg keeps their sums itself), as
/// dh_md5sums writes them.
fn md5sums(stage: &Path) -> Result<String> {
    let mut files = Vec::new();
    for path in tree(stage)? {
        let relative = path.strip_prefix(stage)?.to_owned();
        let conffile = Path::new("/").join(&relative) == Path::new(debian::CONFIG_FILE);
        if path.is_file() && !conffile {
            files.push(relative);
        }
    }
    exec::capture(
        exec::command("md5sum", ["--"])
            .args(&files)
            .current_dir(stage),
    )
}

/// Every path under `dir` except `dir` itself and DEBIAN/, sorted.
fn tree(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut paths = Vec::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(next) = pending.pop() {
        for entry in fs::read_dir(&next).with_context(|| format!("reading {}", next.display()))? {
            let path = entry?.path();
            if path == dir.join("DEBIAN") {
                continue;
            }
            if path.is_dir() {
                pending.push(path.clone());
            }
            paths.push(path);
        }
    }
    paths.sort();
    Ok(paths)
}

fn files_in(dir: &Path) -> Result<Vec<PathBuf>> {
    Ok(tree(dir)?.into_iter().filter(|p| p.is_file()).collect())
}

/// Writes `contents` to `stage/relative` with `mode`, creating its directories 0755.
fn install(stage: &Path, relative: &str, contents: &[u8], mode: u32) -> Result<()> {
    let path = stage.join(relative);
    make_dir(path.parent().unwrap())?;
    fs::write(&path, contents).with_context(|| format!("writing {}", path.display()))?;
    set_mode(&path, mode)
}

/// Creates `dir` and its missing parents, each mode 0755 whatever the umask.
fn make_dir(dir: &Path) -> Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent() {
        make_dir(parent)?;
    }
    fs::create_dir(dir).with_context(|| format!("creating {}", dir.display()))?;
    set_mode(dir, 0o755)
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {mode:o} {}", path.display()))
}

/// `gzip -9n`, as dh_compress does: no name or timestamp inside, so builds are reproducible.
fn gzip(paths: &[PathBuf]) -> Result<()> {
    exec::run(exec::command("gzip", ["-9nf", "--"]).args(paths))
}

/// lintian, with overridden tags and their reasons shown: fails on errors, lists warnings and
/// the rest. (`--fail-on error` would also fail on an overridden error it shows.)
fn lintian(deb: &Path) -> Result<()> {
    let mut command = exec::command(
        "lintian",
        ["--fail-on", "none", "--display-info", "--show-overrides"],
    );
    command.arg(deb);
    println!("$ {}", exec::display(&command));
    let report = exec::capture(&mut command)?;
    print!("{report}");
    let count = |prefix: &str| report.lines().filter(|l| l.starts_with(prefix)).count();
    let (errors, warnings) = (count("E: "), count("W: "));
    if errors > 0 {
        bail!(
            "lintian: {errors} error(s) and {warnings} warning(s) in {}",
            deb.display()
        );
    }
    println!(
        "lintian: no errors, {warnings} warning(s), {} other tag(s), {} overridden \
         (packaging/lintian-overrides says why)",
        count("I: ") + count("P: "),
        count("O: ")
    );
    Ok(())
}
