//! The clean room's package phase: build the Debian package with `cargo xtask package` inside
//! the room and take it through its life there — install, check what it put where, install it
//! again over itself, remove (configuration and state kept), purge (gone). It runs only where
//! the tree has a `package` task (`cargo xtask --help` lists it); elsewhere the caller prints a
//! SKIP line saying so. It checks the package; it never changes how it is built.

use std::{fs, path::PathBuf};

use anyhow::{bail, ensure, Context as _, Result};

use super::{
    room::{command_in, Room, SOURCE},
    Steps,
};
use crate::exec;

const PACKAGE: &str = "faultline";
const CONFIG: &str = "/etc/faultline/faultline.toml";
const STATE_DIR: &str = "/var/lib/faultline";
/// Written into the state directory after the install: it stands for the agent's journal,
/// which a removal must keep and a purge must delete.
const STATE_MARKER: &str = "/var/lib/faultline/clean-room-marker";

/// Whether `help` (the output of `cargo xtask --help`) lists a `package` task: a line of its
/// `Commands:` section whose first word is `package`.
pub fn task_listed(help: &str) -> bool {
    help.lines()
        .skip_while(|line| !line.trim_start().starts_with("Commands:"))
        .skip(1)
        .take_while(|line| line.starts_with(' '))
        .any(|line| line.split_whitespace().next() == Some("package"))
}

/// The one `faultline_<version>_amd64.deb` in `names`, if there is exactly one.
pub fn the_deb(names: &[String]) -> Result<&str> {
    let debs: Vec<&str> = names
        .iter()
        .map(String::as_str)
        .filter(|n| n.starts_with("faultline_") && n.ends_with("_amd64.deb"))
        .collect();
    match debs[..] {
        [one] => Ok(one),
        [] => bail!(
            "no faultline_<version>_amd64.deb (found: {})",
            names.join(" ")
        ),
        _ => bail!("more than one .deb: {}", debs.join(" ")),
    }
}

/// dpkg's `${Status}` for the package, or "not-installed" when dpkg does not know it.
fn dpkg_status(room: &Room) -> String {
    exec::probe(&mut command_in(
        room.root(),
        "/",
        "dpkg-query",
        &["-W", "-f=${Status}", PACKAGE],
    ))
    .map_or_else(|| "not-installed".to_owned(), |s| s.trim().to_owned())
}

fn run_in(room: &Room, dir: &str, program: &str, args: &[&str]) -> Result<()> {
    exec::run(&mut command_in(room.root(), dir, program, args))
}

fn capture_in(room: &Room, program: &str, args: &[&str]) -> Result<String> {
    let command = &mut command_in(room.root(), "/", program, args);
    println!("$ {}", exec::display(command));
    let out = exec::capture(command)?;
    print!("{out}");
    Ok(out)
}

/// The phase: build, install, check, reinstall, remove, purge; each a step of its own.
pub fn run(room: &Room, steps: &mut Steps) -> Result<()> {
    steps.run("package: cargo xtask package", || {
        // The room's copy of the tree has no .git: the package's timestamps come from the
        // host's last commit, as the package task would take them in a checkout.
        let epoch = exec::capture(
            exec::command("git", ["log", "-1", "--format=%ct"])
                .current_dir(crate::host::workspace_root()),
        )?;
        run_in(
            room,
            SOURCE,
            "env",
            &[
                &format!("SOURCE_DATE_EPOCH={}", epoch.trim()),
                "cargo",
                "xtask",
                "package",
            ],
        )
    })?;
    let debian = room.path(&format!("{SOURCE}/target/debian"));
    let names: Vec<String> = fs::read_dir(&debian)
        .with_context(|| format!("reading {}", debian.display()))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    let deb = format!("{SOURCE}/target/debian/{}", the_deb(&names)?);
    println!("package: {deb}");

    steps.run("package: dpkg -i", || {
        run_in(room, "/", "dpkg", &["-i", &deb])
    })?;
    steps.run("package: installed files", || {
        ensure!(
            dpkg_status(room) == "install ok installed",
            "dpkg says {:?} after dpkg -i",
            dpkg_status(room)
        );
        run_in(room, "/", "/usr/bin/faultline", &["--version"])?;
        let files = capture_in(room, "dpkg-query", &["-L", PACKAGE])?;
        let is_file = |p: &&str| room.path(p).is_file();
        let man: Vec<&str> = files
            .lines()
            .filter(|p| p.starts_with("/usr/share/man/") && p.contains("/faultline."))
            .filter(is_file)
            .collect();
        ensure!(
            !man.is_empty(),
            "the package installs no faultline man page"
        );
        if room.path("/usr/bin/man").exists() {
            run_in(room, "/", "man", &["-w", PACKAGE])?;
        } else {
            println!(
                "package: man page {} (man-db is not installed, so no `man -w`)",
                man.join(" ")
            );
        }
        let completions: Vec<&str> = files
            .lines()
            .filter(|p| p.contains("completion") && p.contains("faultline"))
            .filter(is_file)
            .collect();
        ensure!(
            !completions.is_empty(),
            "the package installs no shell completions"
        );
        println!("package: completions {}", completions.join(" "));
        ensure!(room.path(CONFIG).is_file(), "{CONFIG} is not installed");
        let conffiles = capture_in(room, "dpkg-query", &["-W", "-f=${Conffiles}", PACKAGE])?;
        ensure!(
            conffiles.split_whitespace().any(|w| w == CONFIG),
            "{CONFIG} is not a conffile (dpkg would overwrite an edited one on upgrade)"
        );
        Ok(())
    })?;
    steps.run("package: dpkg -i again (upgrade over itself)", || {
        let config = room.path(CONFIG);
        // An edited configuration must survive: dpkg keeps a changed conffile whose packaged
        // version did not change.
        let mut edited = fs::read_to_string(&config)?;
        edited.push_str("\n# edited by cargo xtask clean-room\n");
        fs::write(&config, &edited)?;
        run_in(room, "/", "dpkg", &["-i", &deb])?;
        ensure!(
            dpkg_status(room) == "install ok installed",
            "dpkg says {:?} after the second dpkg -i",
            dpkg_status(room)
        );
        ensure!(
            fs::read_to_string(&config)? == edited,
            "reinstalling replaced the edited {CONFIG}"
        );
        Ok(())
    })?;
    steps.run("package: dpkg -r (configuration and state kept)", || {
        fs::create_dir_all(room.path(STATE_DIR))?;
        fs::write(room.path(STATE_MARKER), "journal stand-in\n")?;
        run_in(room, "/", "dpkg", &["-r", PACKAGE])?;
        let status = dpkg_status(room);
        ensure!(
            status == "deinstall ok config-files",
            "dpkg says {status:?} after dpkg -r"
        );
        ensure!(
            !room.path("/usr/bin/faultline").exists(),
            "/usr/bin/faultline is still there"
        );
        ensure!(room.path(CONFIG).is_file(), "dpkg -r removed {CONFIG}");
        ensure!(
            room.path(STATE_MARKER).is_file(),
            "dpkg -r removed {STATE_DIR}"
        );
        Ok(())
    })?;
    steps.run("package: dpkg -P (purged)", || {
        run_in(room, "/", "dpkg", &["-P", PACKAGE])?;
        let status = dpkg_status(room);
        ensure!(
            status == "not-installed" || status.ends_with("not-installed"),
            "dpkg says {status:?} after dpkg -P"
        );
        let left: Vec<PathBuf> = [CONFIG, "/etc/faultline", STATE_DIR]
            .iter()
            .map(|p| room.path(p))
            .filter(|p| p.exists())
            .collect();
        ensure!(left.is_empty(), "dpkg -P left {left:?}");
        Ok(())
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HELP_WITH: &str = "\
faultline's developer tasks

Usage: cargo xtask <COMMAND>

Commands:
  run         Install the prerequisites, build faultline (release) and run the agent
  package     Build the Debian package target/debian/faultline_<version>_amd64.deb
  help        Print this message or the help of the given subcommand(s)

Options:
  -h, --help  Print help
";

    #[test]
    fn the_package_task_is_found_only_among_the_commands() {
        assert!(task_listed(HELP_WITH));
        let without = HELP_WITH.replace("  package     Build", "  bench       Measure");
        assert!(!task_listed(&without));
        // A task that merely mentions packages is not the package task.
        let mention = "Commands:\n  prereqs  Install apt packages\n\nOptions:\n  package\n";
        assert!(!task_listed(mention));
    }

    #[test]
    fn exactly_one_deb_is_taken() {
        let names = |n: &[&str]| n.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(
            the_deb(&names(&["faultline_0.1.0_amd64.deb", "staging"])).unwrap(),
            "faultline_0.1.0_amd64.deb"
        );
        assert!(the_deb(&names(&["staging"])).is_err());
        assert!(the_deb(&names(&[
            "faultline_0.1.0_amd64.deb",
            "faultline_0.2.0_amd64.deb"
        ]))
        .is_err());
    }
}
