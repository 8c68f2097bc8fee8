//! The clean room's base image: a Debian 12 root filesystem that mmdebstrap makes from Debian's
//! packages, holding what a new machine of ours has and nothing the project installs. This
//! module owns the recipe (the mmdebstrap arguments), the key it is cached under and the
//! tarballs `<target>/clean-room/base-<key>.tar`; it never extracts or changes a tarball once
//! written (each run extracts its own copy, `room`'s job).

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};

use crate::exec;

/// `minbase`: the Essential and `Priority: required` packages plus apt, what debootstrap's
/// minbase and Debian's container images hold and every Debian install has (176 packages). The
/// barer `apt` variant leaves out required packages such as `mount`, `passwd`, `mawk` and
/// `tzdata` that no real machine lacks, so a build passing there would prove nothing more.
const VARIANT: &str = "minbase";

pub(crate) const SUITE: &str = "bookworm";

/// The archive a new Debian 12 machine uses: the release, its updates and security updates
/// (also the systemd guest's).
pub(crate) const SOURCES: &[&str] = &[
    "deb http://deb.debian.org/debian bookworm main",
    "deb http://deb.debian.org/debian bookworm-updates main",
    "deb http://deb.debian.org/debian-security bookworm-security main",
];

/// What a new machine of our kind has on top of Debian's base, as Debian packages
/// (/work/.library/env/machines/rust.md, "On a new machine"): gcc able to link (gcc alone does
/// not depend on libc6-dev's crt files and headers; rustc links through `cc`), CPython 3.11
/// with pip, qemu-utils, git, and ca-certificates (for HTTPS to crates.io). The machine's Rust
/// toolchain and cargo-nextest come from the host, not from packages (see `room`). Nothing
/// faultline itself needs is here: finding that missing is what the clean room is for.
const BASELINE: &[&str] = &[
    "ca-certificates",
    "gcc",
    "libc6-dev",
    "python3",
    "python3-pip",
    "qemu-utils",
    "git",
];

/// Bumped when what is done with the recipe's output changes, so old tarballs are not reused.
const FORMAT: &str = "clean-room-base-1";

/// How the base image is made: everything that determines its content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipe {
    /// mmdebstrap's arguments before the target (options and suite).
    options: Vec<String>,
    /// The `deb ...` lines after the target.
    sources: Vec<String>,
}

impl Recipe {
    pub fn standard() -> Self {
        Self {
            options: vec![
                "--mode=root".to_owned(),
                format!("--variant={VARIANT}"),
                format!("--include={}", BASELINE.join(",")),
                "--format=tar".to_owned(),
                SUITE.to_owned(),
            ],
            sources: SOURCES.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    /// The cache key: FNV-1a (64 bits) over the format tag and every argument, each ended by
    /// a NUL so that `["ab", "c"]` and `["a", "bc"]` differ. A cache key, not a security
    /// boundary: the tarball is made here, from Debian's signed archive.
    pub fn key(&self) -> String {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for part in std::iter::once(FORMAT)
            .chain(self.options.iter().map(String::as_str))
            .chain(self.sources.iter().map(String::as_str))
        {
            for byte in part.bytes().chain(std::iter::once(0)) {
                hash ^= u64::from(byte);
                hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
            }
        }
        format!("{hash:016x}")
    }

    /// `mmdebstrap OPTIONS SUITE TARGET SOURCES...`
    pub fn command(&self, target: &Path) -> std::process::Command {
        let mut command = exec::command("mmdebstrap", &self.options);
        command.arg(target).args(&self.sources);
        command
    }

    pub fn tarball(&self, dir: &Path) -> PathBuf {
        dir.join(format!("base-{}.tar", self.key()))
    }
}

/// The base tarball for `recipe` in `dir`, made now if there is none; tarballs of other recipes
/// are removed (they can never be used again and each is hundreds of MiB). Returns the path and
/// whether it was built in this call.
pub fn ensure(recipe: &Recipe, dir: &Path, rebuild: bool) -> Result<(PathBuf, bool)> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tarball = recipe.tarball(dir);
    for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let stale = name.starts_with("base-") && path != tarball;
        if stale || (rebuild && path == tarball) {
            println!("base: removing {}", path.display());
            fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
        }
    }
    if tarball.exists() {
        println!(
            "base: reusing {} (recipe {})",
            tarball.display(),
            recipe.key()
        );
        return Ok((tarball, false));
    }
    println!(
        "base: building Debian {SUITE} ({VARIANT} + {}) with mmdebstrap",
        BASELINE.join(" ")
    );
    // Written beside and renamed, so an interrupted build is never mistaken for a cached one.
    let partial = dir.join(format!("base-{}.tar.partial", recipe.key()));
    exec::run(&mut recipe.command(&partial))?;
    fs::rename(&partial, &tarball)
        .with_context(|| format!("renaming {} to {}", partial.display(), tarball.display()))?;
    Ok((tarball, true))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_follows_every_argument_and_nothing_else() {
        let standard = Recipe::standard();
        assert_eq!(standard.key(), Recipe::standard().key());
        assert_eq!(standard.key().len(), 16);

        let mut more = standard.clone();
        more.options[2].push_str(",curl");
        assert_ne!(more.key(), standard.key());

        let mut mirror = standard.clone();
        mirror.sources.pop();
        assert_ne!(mirror.key(), standard.key());

        // Where one argument ends is part of the recipe.
        let split = |options: &[&str]| Recipe {
            options: options.iter().map(|s| (*s).to_owned()).collect(),
            sources: Vec::new(),
        };
        assert_ne!(split(&["ab", "c"]).key(), split(&["a", "bc"]).key());
    }

    #[test]
    fn the_command_puts_the_target_between_suite_and_sources() {
        let recipe = Recipe::standard();
        let command = recipe.command(Path::new("/t/base.tar.partial"));
        let args: Vec<String> = command
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let target = args
            .iter()
            .position(|a| a == "/t/base.tar.partial")
            .unwrap();
        assert_eq!(args[target - 1], "bookworm");
        assert!(args[target + 1].starts_with("deb http://deb.debian.org/debian bookworm"));
        assert!(args.contains(&"--variant=minbase".to_owned()));
        assert_eq!(
            recipe.tarball(Path::new("/t")),
            Path::new("/t").join(format!("base-{}.tar", recipe.key()))
        );
    }
}
