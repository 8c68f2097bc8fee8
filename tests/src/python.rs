//! The Python test environment that `cargo xtask prereqs` makes under `target/python` (a venv
//! with the pinned packages of tests/python/requirements.txt and the Chaos Toolkit extension
//! built from integrations/chaostoolkit): where its programs are. Never installs anything.

use std::path::PathBuf;

use anyhow::{ensure, Result};

/// The environment's `bin/` directory: the one FAULTLINE_PYTHON's interpreter lives in, or
/// `<target dir>/python/bin`.
fn bin_dir() -> PathBuf {
    match std::env::var_os("FAULTLINE_PYTHON") {
        Some(python) => PathBuf::from(python)
            .parent()
            .map(PathBuf::from)
            .unwrap_or_default(),
        None => {
            let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
            std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| workspace.join("target"))
                .join("python/bin")
        }
    }
}

/// A program of the environment (`python3`, `chaos`), failing with how to make it when absent.
pub fn program(name: &str) -> Result<PathBuf> {
    let path = bin_dir().join(name);
    ensure!(
        path.exists(),
        "no {} in the Python test environment (`cargo xtask prereqs` makes it from \
         tests/python/requirements.txt and integrations/chaostoolkit; FAULTLINE_PYTHON names \
         another environment's interpreter)",
        path.display()
    );
    Ok(path)
}
