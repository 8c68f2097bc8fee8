//! What deploy/ ships for the tools operators run, checked offline with those tools' own
//! checkers: the Prometheus alerting rules with `promtool test rules` (series shaped like the
//! agent's exposition), the Kubernetes manifests against the API schemas of every supported
//! Kubernetes version (`kubernetes-validate`, strict: unknown fields are errors). There is no
//! cluster and no Prometheus server here: what the manifests do on a node is not tested.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{ensure, Context as _, Result};
use faultline_tests::{process, python};

/// The Kubernetes versions the manifests are validated for: every version whose schemas the
/// pinned validator ships, 1.25 (where Pod Security admission, whose label the namespace
/// carries, became generally available) to 1.37.
const KUBERNETES_VERSIONS: &[&str] = &[
    "1.25.0", "1.26.0", "1.27.0", "1.28.0", "1.29.0", "1.30.0", "1.31.0", "1.32.0", "1.33.0",
    "1.34.0", "1.35.0", "1.36.0", "1.37.0",
];

fn deploy_dir(sub: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(sub)
}

#[test]
fn the_alerting_rules_pass_promtool_tests() -> Result<()> {
    let dir = deploy_dir("prometheus");
    let mut check = Command::new("promtool");
    check
        .current_dir(&dir)
        .args(["check", "rules", "faultline-rules.yml"]);
    let checked = process::run_ok(check).context(
        "promtool (from Debian's prometheus package, which `cargo xtask prereqs` installs)",
    )?;
    ensure!(
        checked.contains("SUCCESS: 6 rules found"),
        "promtool check rules said: {checked}"
    );
    let mut test = Command::new("promtool");
    test.current_dir(&dir)
        .args(["test", "rules", "faultline-rules.test.yml"]);
    let tested = process::run_ok(test)?;
    ensure!(
        tested.contains("SUCCESS"),
        "promtool test rules said: {tested}"
    );
    Ok(())
}

/// Runs the validator on `files` for `version`; returns whether it passed and what it said.
fn validate(version: &str, files: &[PathBuf]) -> Result<(bool, String)> {
    let mut command = Command::new(python::program("kubernetes-validate")?);
    command
        .args(["--strict", "--kubernetes-version", version])
        .args(files);
    let output = process::run(command, process::COMMAND_TIMEOUT)?;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok((output.status.success(), said))
}

fn manifests(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    files.retain(|p| p.extension().is_some_and(|e| e == "yaml"));
    files.sort();
    Ok(files)
}

#[test]
fn the_kubernetes_manifests_validate_for_every_supported_version() -> Result<()> {
    let files = manifests(&deploy_dir("kubernetes"))?;
    ensure!(
        files.len() >= 2,
        "expected the namespace and DaemonSet manifests, found {files:?}"
    );
    let resources = [
        "namespace/faultline",
        "serviceaccount/faultline",
        "daemonset/faultline",
    ];
    for version in KUBERNETES_VERSIONS {
        let (passed, said) = validate(version, &files)?;
        ensure!(passed, "Kubernetes {version}: {said}");
        for resource in resources {
            ensure!(
                said.contains(&format!("passed for resource {resource} against version")),
                "Kubernetes {version}: {resource} was not validated: {said}"
            );
        }
    }

    // The validator refuses what the API would: a misspelt field of the DaemonSet.
    let scratch = tempfile::Builder::new()
        .prefix("faultline-k8s-")
        .tempdir()?;
    let broken = scratch.path().join("daemonset.yaml");
    let daemonset = fs::read_to_string(deploy_dir("kubernetes/faultline-daemonset.yaml"))?;
    ensure!(daemonset.contains("readOnlyRootFilesystem: true"));
    fs::write(
        &broken,
        daemonset.replace(
            "readOnlyRootFilesystem: true",
            "readOnlyRootFilesytem: true",
        ),
    )?;
    let newest = KUBERNETES_VERSIONS[KUBERNETES_VERSIONS.len() - 1];
    let (passed, said) = validate(newest, &[broken])?;
    ensure!(
        !passed && said.contains("readOnlyRootFilesytem"),
        "a DaemonSet with a misspelt field was not refused: {said}"
    );
    Ok(())
}
