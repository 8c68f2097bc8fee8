//! Child processes of the tests: the `faultline` binary under test (found, or built once), and
//! (from the lab crate) commands run with a time limit so that a hung agent fails a test
//! instead of hanging it. Never touches kernel state itself.

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::OnceLock,
};

use anyhow::{anyhow, bail, Context as _, Result};
pub use faultline_lab::process::{describe, run, run_ok, run_with_input, COMMAND_TIMEOUT};

/// The `faultline` binary: `$FAULTLINE_BIN`, else `<target dir>/debug/faultline`, built with
/// `cargo build -p faultline` (once per test process) if it is not there.
pub fn faultline_bin() -> Result<&'static Path> {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BIN.get_or_init(|| locate_or_build().map_err(|e| format!("{e:#}")))
        .as_deref()
        .map_err(|e| anyhow!("{e}"))
}

fn locate_or_build() -> Result<PathBuf> {
    if let Some(bin) = std::env::var_os("FAULTLINE_BIN") {
        let bin = PathBuf::from(bin);
        if !bin.is_file() {
            bail!("FAULTLINE_BIN={} is not a file", bin.display());
        }
        return Ok(bin);
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("the tests crate has no parent directory")?
        .to_path_buf();
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace.join("target"));
    let bin = target.join("debug").join("faultline");
    if bin.is_file() {
        return Ok(bin);
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "-p", "faultline"])
        .current_dir(&workspace)
        .status()
        .context("running cargo build -p faultline")?;
    if !status.success() || !bin.is_file() {
        bail!(
            "cargo build -p faultline {status}, and {} is missing",
            bin.display()
        );
    }
    Ok(bin)
}
