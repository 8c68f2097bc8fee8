//! The Debian metadata of faultline's package as text: `control`, `conffiles`, the maintainer
//! scripts, `copyright` and `changelog.Debian`. Pure functions of what they are given, so that
//! unit tests read exactly what `cargo xtask package` writes; nothing here touches a file.
//!
//! We build with dpkg-deb, not debhelper, so the maintainer scripts are written here by hand.
//! They are what `dh_installsystemd --no-enable --no-start` generates in Debian 12 (debhelper
//! 13.11's autoscripts, with deb-systemd-helper and deb-systemd-invoke from init-system-helpers,
//! which is Essential there), plus the stop on remove that `--no-start` leaves out, and less
//! the `deb-systemd-helper unmask` of a mask these scripts never create:
//! - first install: the unit is installed, neither enabled nor started;
//! - upgrade: a running agent is restarted (`try-restart`: a stopped one stays stopped);
//! - remove: the agent is stopped, which reverts every fault (SIGTERM), and the journal and
//!   audit log in the state directory are kept;
//! - purge: the state directory goes too.
//!
//! Every systemctl or deb-systemd-invoke call is guarded by `[ -d /run/systemd/system ]`, so the
//! scripts work in a chroot or a container without systemd, and deb-systemd-invoke honours
//! policy-rc.d.

use std::fmt::Write as _;

pub(crate) const PACKAGE: &str = "faultline";
pub(crate) const UNIT: &str = "faultline.service";
/// Where dh_installsystemd puts units in Debian 12 (debhelper 13.11): the /usr-merge
/// moratorium kept packages' files out of /usr/lib until Debian 13. systemd and lintian 2.116
/// accept either place.
pub(crate) const UNIT_DIR: &str = "lib/systemd/system";
pub(crate) const CONFIG_FILE: &str = "/etc/faultline/faultline.toml";
/// The agent's state directory (systemd's `StateDirectory=faultline`): the journal and the
/// audit log.
pub(crate) const STATE_DIR: &str = "/var/lib/faultline";
const MAINTAINER: &str = "faultline developers <faultline@example.invalid>";
const HOMEPAGE: &str = "https://example.invalid/faultline";

/// The `control` file's variable fields.
#[derive(Debug)]
pub(crate) struct Control {
    /// The Debian version: the binary's version and a Debian revision (`0.1.0-1`).
    pub version: String,
    pub architecture: String,
    /// The shared-library dependencies as `dpkg-shlibdeps` computes them.
    pub depends: String,
    pub installed_size_kib: u64,
}

impl Control {
    pub(crate) fn text(&self) -> String {
        format!(
            "Package: {PACKAGE}\n\
             Version: {version}\n\
             Architecture: {architecture}\n\
             Maintainer: {MAINTAINER}\n\
             Installed-Size: {size}\n\
             Depends: {depends}\n\
             Section: admin\n\
             Priority: optional\n\
             Homepage: {HOMEPAGE}\n\
             Description: fault-injection agent that always reverts its faults\n\
             {DESCRIPTION}",
            version = self.version,
            architecture = self.architecture,
            size = self.installed_size_kib,
            depends = self.depends,
        )
    }
}

/// The extended description: each line starts with a space, an empty line is ` .`.
const DESCRIPTION: &str = "\
\x20faultline injects faults into a Linux host: nftables blocks, eBPF packet
 loss, netem delay, jitter, loss, duplication, corruption and reordering,
 bandwidth caps, CPU load and memory pressure held in cgroups. Every fault has
 a deadline, and the agent reverts it on expiry, on request, on shutdown, or at
 its next start if it died.
 .
 One binary: `faultline serve` is the agent (a systemd unit, installed but not
 enabled), every other subcommand a client of its gRPC API on a root-only unix
 socket. Settings are read from /etc/faultline/faultline.toml.
";

/// The dpkg conffiles: the configuration file, which an upgrade never overwrites silently.
pub(crate) fn conffiles() -> String {
    format!("{CONFIG_FILE}\n")
}

fn script(name: &str, body: &str) -> String {
    format!(
        "#!/bin/sh\n\
         # {PACKAGE} {name}, written by `cargo xtask package` (xtask/src/package/debian.rs).\n\
         set -e\n\n\
         {body}\n\
         exit 0\n"
    )
}

/// Enables nothing on first install; on upgrade keeps an enabled unit's links up to date,
/// then restarts the agent if it runs.
pub(crate) fn postinst() -> String {
    script(
        "postinst",
        &format!(
            r#"if [ "$1" = "configure" ] || [ "$1" = "abort-upgrade" ] || [ "$1" = "abort-deconfigure" ] || [ "$1" = "abort-remove" ] ; then
	# Not enabled on first install (the agent takes root over the host's network and
	# cgroups: an administrator turns it on). An upgrade keeps an enabled unit enabled.
	if deb-systemd-helper debian-installed {UNIT}; then
		if deb-systemd-helper --quiet was-enabled {UNIT}; then
			deb-systemd-helper enable {UNIT} >/dev/null || true
		fi
	fi
	deb-systemd-helper update-state {UNIT} >/dev/null || true
fi

if [ "$1" = "configure" ] || [ "$1" = "abort-upgrade" ] || [ "$1" = "abort-deconfigure" ] || [ "$1" = "abort-remove" ] ; then
	if [ -z "${{DPKG_ROOT:-}}" ] && [ -d /run/systemd/system ]; then
		systemctl --system daemon-reload >/dev/null || true
		# $2 is the version replaced: an upgrade. Not started on first install; on upgrade
		# restarted only if it runs (its faults are reverted on the way down).
		if [ -n "$2" ]; then
			deb-systemd-invoke try-restart {UNIT} >/dev/null || true
		fi
	fi
fi
"#
        ),
    )
}

/// Stops the agent on remove (it reverts every fault on SIGTERM); an upgrade leaves it
/// running until postinst restarts it.
pub(crate) fn prerm() -> String {
    script(
        "prerm",
        &format!(
            r#"if [ -z "${{DPKG_ROOT:-}}" ] && [ "$1" = remove ] && [ -d /run/systemd/system ] ; then
	deb-systemd-invoke stop {UNIT} >/dev/null || true
fi
"#
        ),
    )
}

/// Forgets the unit; on purge only, removes the state directory.
pub(crate) fn postrm() -> String {
    script(
        "postrm",
        &format!(
            r#"if [ "$1" = remove ] && [ -d /run/systemd/system ] ; then
	systemctl --system daemon-reload >/dev/null || true
fi

if [ "$1" = "purge" ]; then
	if [ -x "/usr/bin/deb-systemd-helper" ]; then
		deb-systemd-helper purge {UNIT} >/dev/null || true
	fi
	# The journal of faults and the audit log: kept on remove, so that a reinstalled agent
	# reverts what a removed one left and the audit trail survives; gone on purge.
	rm -rf {STATE_DIR}
fi
"#
        ),
    )
}

/// `copyright` in the machine-readable format. `years`: of the first and the last commit
/// (`2025-2026`, or `2026`); `crates` are the Rust crates the binary statically includes, as
/// `name version: license` lines.
pub(crate) fn copyright(years: &str, crates: &[String]) -> String {
    let mut text = format!(
        "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\
         Upstream-Name: {PACKAGE}\n\
         Source: {HOMEPAGE}\n\
         \n\
         Files: *\n\
         Copyright: {years} the faultline developers\n\
         License: MIT or Apache-2.0\n"
    );
    if !crates.is_empty() {
        text.push_str(
            "Comment: /usr/bin/faultline is a Rust program: it statically includes these\n \
             crates from crates.io, each under the license it declares:\n",
        );
        for line in crates {
            let _ = writeln!(text, " {line}");
        }
    }
    text.push_str(concat!(
        "\n",
        "License: MIT\n",
        " Permission is hereby granted, free of charge, to any person obtaining a copy\n",
        " of this software and associated documentation files (the \"Software\"), to deal\n",
        " in the Software without restriction, including without limitation the rights\n",
        " to use, copy, modify, merge, publish, distribute, sublicense, and/or sell\n",
        " copies of the Software, and to permit persons to whom the Software is\n",
        " furnished to do so, subject to the following conditions:\n",
        " .\n",
        " The above copyright notice and this permission notice shall be included in all\n",
        " copies or substantial portions of the Software.\n",
        " .\n",
        " THE SOFTWARE IS PROVIDED \"AS IS\", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR\n",
        " IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,\n",
        " FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE\n",
        " AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER\n",
        " LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,\n",
        " OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE\n",
        " SOFTWARE.\n",
        "\n",
        "License: Apache-2.0\n",
        " On Debian systems, the full text of the Apache License, Version 2.0 is in\n",
        " /usr/share/common-licenses/Apache-2.0.\n",
    ));
    text
}

/// `changelog.Debian` (before gzip): one entry for this build. `date` in RFC 2822 (`date -R`).
pub(crate) fn changelog(version: &str, commit: &str, date: &str) -> String {
    format!(
        "{PACKAGE} ({version}) unstable; urgency=medium\n\
         \n\
         \x20 * Built by `cargo xtask package` from commit {commit}.\n\
         \n\
         \x20-- {MAINTAINER}  {date}\n"
    )
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;

    fn control() -> Control {
        Control {
            version: "0.1.0-1".into(),
            architecture: "amd64".into(),
            depends: "libc6 (>= 2.34), libmnl0 (>= 1.0.3-4~), libnftnl11 (>= 1.1.1)".into(),
            installed_size_kib: 9876,
        }
    }

    #[test]
    fn control_has_the_fields_dpkg_needs_in_deb822_form() {
        let text = control().text();
        for field in [
            "Package: faultline\n",
            "Version: 0.1.0-1\n",
            "Architecture: amd64\n",
            "Installed-Size: 9876\n",
            "Depends: libc6 (>= 2.34), libmnl0 (>= 1.0.3-4~), libnftnl11 (>= 1.1.1)\n",
            "Maintainer: ",
            "Description: fault-injection agent",
        ] {
            assert!(text.contains(field), "no {field:?} in\n{text}");
        }
        assert!(text.ends_with('\n') && !text.contains("\n\n"), "{text}");
        // Every continuation line of the description starts with a space.
        let description = text.split_once("Description:").unwrap().1;
        assert!(description.lines().skip(1).all(|l| l.starts_with(' ')));
        assert!(description.lines().all(|l| l.len() <= 80));
    }

    /// A host for running the maintainer scripts: stubs of deb-systemd-helper,
    /// deb-systemd-invoke and systemctl that log their arguments, a directory standing for
    /// /run/systemd/system when systemd runs, and one for the state directory.
    struct Host {
        dir: tempfile::TempDir,
    }

    impl Host {
        fn new(systemd_running: bool) -> Self {
            let dir = tempfile::tempdir().unwrap();
            let bin = dir.path().join("bin");
            std::fs::create_dir_all(&bin).unwrap();
            // debian-installed and was-enabled answer from the environment, like a unit this
            // package installed before and the administrator enabled.
            let stub = r#"#!/bin/sh
echo "${0##*/} $*" >> "$LOG"
case "$*" in
  "debian-installed "*) exit "$INSTALLED" ;;
  "--quiet was-enabled "*) exit "$ENABLED" ;;
esac
exit 0
"#;
            for name in ["deb-systemd-helper", "deb-systemd-invoke", "systemctl"] {
                let path = bin.join(name);
                std::fs::write(&path, stub).unwrap();
                use std::os::unix::fs::PermissionsExt as _;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
            }
            if systemd_running {
                std::fs::create_dir_all(dir.path().join("run-systemd")).unwrap();
            }
            std::fs::create_dir_all(dir.path().join("state/journal")).unwrap();
            Self { dir }
        }

        fn state_dir_exists(&self) -> bool {
            self.dir.path().join("state").exists()
        }

        /// Runs `script` with `args`; returns the stubs' calls, one per line.
        fn run(&self, script: &str, args: &[&str], installed_and_enabled: bool) -> Vec<String> {
            let root = self.dir.path();
            let script = script
                .replace(
                    "/run/systemd/system",
                    &root.join("run-systemd").to_string_lossy(),
                )
                .replace(
                    "/usr/bin/deb-systemd-helper",
                    &root.join("bin/deb-systemd-helper").to_string_lossy(),
                )
                .replace(STATE_DIR, &root.join("state").to_string_lossy());
            let log = root.join("log");
            let _ = std::fs::remove_file(&log);
            let answer = if installed_and_enabled { "0" } else { "1" };
            let status = Command::new("sh")
                .arg("-c")
                .arg(&script)
                .arg("script")
                .args(args)
                .env(
                    "PATH",
                    format!("{}:/usr/bin:/bin", root.join("bin").display()),
                )
                .env("LOG", &log)
                .env("INSTALLED", answer)
                .env("ENABLED", answer)
                .env_remove("DPKG_ROOT")
                .status()
                .unwrap();
            assert!(status.success(), "{args:?}: {status}");
            std::fs::read_to_string(&log)
                .unwrap_or_default()
                .lines()
                .map(str::to_owned)
                .collect()
        }
    }

    #[test]
    fn maintainer_scripts_do_what_debian_conventions_say_in_each_case() {
        let host = Host::new(true);
        // First install: the unit is recorded, neither enabled nor started.
        assert_eq!(
            host.run(&postinst(), &["configure", ""], false),
            [
                "deb-systemd-helper debian-installed faultline.service",
                "deb-systemd-helper update-state faultline.service",
                "systemctl --system daemon-reload",
            ]
        );
        // Upgrade of an enabled unit: it stays enabled, and a running agent is restarted.
        assert_eq!(
            host.run(&postinst(), &["configure", "0.1.0-1"], true),
            [
                "deb-systemd-helper debian-installed faultline.service",
                "deb-systemd-helper --quiet was-enabled faultline.service",
                "deb-systemd-helper enable faultline.service",
                "deb-systemd-helper update-state faultline.service",
                "systemctl --system daemon-reload",
                "deb-systemd-invoke try-restart faultline.service",
            ]
        );
        // An upgrade leaves the agent running until postinst; a remove stops it.
        assert!(host.run(&prerm(), &["upgrade", "0.1.0-2"], true).is_empty());
        assert_eq!(
            host.run(&prerm(), &["remove"], true),
            ["deb-systemd-invoke stop faultline.service"]
        );
        // Remove keeps the journal and the audit log; purge removes them.
        assert_eq!(
            host.run(&postrm(), &["remove"], true),
            ["systemctl --system daemon-reload"]
        );
        assert!(host.state_dir_exists());
        assert_eq!(
            host.run(&postrm(), &["purge"], true),
            ["deb-systemd-helper purge faultline.service"]
        );
        assert!(!host.state_dir_exists());
    }

    #[test]
    fn without_systemd_the_scripts_touch_no_service() {
        // A chroot or a container: no /run/systemd/system.
        let host = Host::new(false);
        let calls = host.run(&postinst(), &["configure", "0.1.0-1"], true);
        assert!(
            calls.iter().all(|c| c.starts_with("deb-systemd-helper ")),
            "{calls:?}"
        );
        assert!(host.run(&prerm(), &["remove"], true).is_empty());
        assert!(host.run(&postrm(), &["remove"], true).is_empty());
        assert!(host.state_dir_exists());
    }

    #[test]
    fn copyright_and_changelog_are_well_formed() {
        let text = copyright(
            "2025-2026",
            &["anyhow 1.0.100: MIT OR Apache-2.0".to_owned()],
        );
        assert!(text.contains("Copyright: 2025-2026 the faultline developers\n"));
        assert!(text.contains("License: MIT or Apache-2.0\n"));
        assert!(text.contains("\n anyhow 1.0.100: MIT OR Apache-2.0\n"));
        assert!(text.contains("\nLicense: MIT\n") && text.contains("\nLicense: Apache-2.0\n"));
        // Paragraphs are separated by one empty line; inside one, continuation lines start
        // with a space.
        for paragraph in text.split("\n\n") {
            assert!(paragraph
                .lines()
                .all(|l| l.starts_with(' ') || l.contains(": ")));
        }
        let entry = changelog("0.1.0-1", "45f1e7d", "Mon, 07 Dec 2026 08:17:00 +0000");
        assert!(entry.starts_with("faultline (0.1.0-1) unstable; urgency=medium\n\n  * "));
        assert!(entry.ends_with(">  Mon, 07 Dec 2026 08:17:00 +0000\n"));
        assert_eq!(conffiles(), "/etc/faultline/faultline.toml\n");
    }
}
