//! Checks a built .deb from the outside, with dpkg-deb, against what the package must hold:
//! the binary, the unit, the configuration file as a conffile, completions for three shells, a
//! man page for every command the binary's `--help` lists (nested ones too), the copyright and
//! changelog; everything owned by root:root with Debian's modes; a Depends that names the
//! package of every shared library the binary needs (`objdump -p`, `dpkg -S`); and the
//! maintainer scripts as `debian` writes them. It reads the package, never changes it.

use std::path::Path;

use anyhow::{bail, Context as _, Result};

use super::{debian, COMPLETIONS, DOC_DIR, LINTIAN_OVERRIDES, MAN_DIR};
use crate::exec;

/// One line of `dpkg-deb --contents`.
#[derive(Debug, PartialEq, Eq)]
struct Entry {
    mode: String,
    owner: String,
    /// Without the leading `./`; directories end with `/`.
    path: String,
}

pub(super) fn package(deb: &Path, binary: &Path) -> Result<()> {
    let binary = super::path_str(binary)?;
    let listing = exec::capture(exec::command("dpkg-deb", ["--contents"]).arg(deb))?;
    let entries = parse_listing(&listing)?;

    let mut required: Vec<String> = vec![
        "usr/bin/faultline".into(),
        format!("{}/{}", debian::UNIT_DIR, debian::UNIT),
        debian::CONFIG_FILE.trim_start_matches('/').into(),
        format!("{DOC_DIR}/copyright"),
        format!("{DOC_DIR}/changelog.Debian.gz"),
        LINTIAN_OVERRIDES.into(),
    ];
    required.extend(COMPLETIONS.iter().map(|(_, path)| path.to_string()));
    for command in commands(binary, &[])? {
        let page = std::iter::once("faultline")
            .chain(command.iter().map(String::as_str))
            .collect::<Vec<_>>()
            .join("-");
        required.push(format!("{MAN_DIR}/{page}.1.gz"));
    }
    let missing: Vec<&String> = required
        .iter()
        .filter(|path| !entries.iter().any(|e| &e.path == *path))
        .collect();
    if !missing.is_empty() {
        bail!(
            "{} lacks {}",
            deb.display(),
            missing
                .iter()
                .map(|p| p.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let wrong = wrong_modes(&entries);
    if !wrong.is_empty() {
        bail!(
            "{} has wrong owners or modes: {}",
            deb.display(),
            wrong.join("; ")
        );
    }

    let depends = exec::capture(
        exec::command("dpkg-deb", ["--field"])
            .arg(deb)
            .arg("Depends"),
    )?;
    for library in needed_libraries(binary)? {
        let owner = library_package(&library)?;
        if !depends
            .split(',')
            .any(|d| d.split_whitespace().next() == Some(&owner))
        {
            bail!("the binary needs {library} from {owner}, which Depends ({depends:?}) misses");
        }
    }
    for (file, expected) in [
        ("conffiles", debian::conffiles()),
        ("postinst", debian::postinst()),
        ("prerm", debian::prerm()),
        ("postrm", debian::postrm()),
    ] {
        let found = exec::capture(exec::command("dpkg-deb", ["--info"]).arg(deb).arg(file))?;
        if found != expected {
            bail!("{}: its {file} is not the one xtask writes", deb.display());
        }
    }
    println!(
        "package: {} entries, {} required present, owners and modes right, Depends covers \
         every NEEDED library",
        entries.len(),
        required.len()
    );
    Ok(())
}

/// `drwxr-xr-x root/root 0 2026-12-07 08:17 ./usr/` lines.
fn parse_listing(listing: &str) -> Result<Vec<Entry>> {
    listing
        .lines()
        .map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            match fields.as_slice() {
                [mode, owner, _size, _date, _time, path] => Ok(Entry {
                    mode: mode.to_string(),
                    owner: owner.to_string(),
                    path: path.trim_start_matches("./").to_owned(),
                }),
                _ => bail!("unexpected dpkg-deb --contents line {line:?}"),
            }
        })
        .collect()
}

/// Entries not owned by root:root, or whose mode is not Debian's: 0755 for directories and
/// the binary, 0644 for every other file.
fn wrong_modes(entries: &[Entry]) -> Vec<String> {
    entries
        .iter()
        .filter_map(|e| {
            let expected = if e.path.ends_with('/') || e.path.is_empty() {
                "drwxr-xr-x"
            } else if e.path == "usr/bin/faultline" {
                "-rwxr-xr-x"
            } else {
                "-rw-r--r--"
            };
            (e.owner != "root/root" || e.mode != expected).then(|| {
                format!(
                    "./{} is {} {}, not {expected} root/root",
                    e.path, e.mode, e.owner
                )
            })
        })
        .collect()
}

/// Every command path under `parent` (`[]` for the binary itself, then `["serve"]`,
/// `["certs", "ca"]`, ...), read from the binary's own `--help`: what a man page must exist for.
fn commands(binary: &str, parent: &[String]) -> Result<Vec<Vec<String>>> {
    let help = exec::capture(exec::command(binary, parent).arg("--help"))?;
    let mut found = vec![parent.to_vec()];
    for name in subcommands(&help) {
        let mut path = parent.to_vec();
        path.push(name);
        found.extend(commands(binary, &path)?);
    }
    Ok(found)
}

/// The names in a clap help text's `Commands:` section, but `help`.
fn subcommands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|line| *line != "Commands:")
        .skip(1)
        .take_while(|line| !line.is_empty())
        // A command starts at column 2; its wrapped description is indented further.
        .filter(|line| line.starts_with("  ") && !line.starts_with("   "))
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(str::to_owned)
        .collect()
}

/// The binary's `NEEDED` shared libraries.
fn needed_libraries(binary: &str) -> Result<Vec<String>> {
    let headers = exec::capture(&mut exec::command("objdump", ["-p", binary]))?;
    Ok(headers
        .lines()
        .filter_map(|line| line.trim().strip_prefix("NEEDED"))
        .map(|library| library.trim().to_owned())
        .collect())
}

/// The package that ships `library` for this architecture (`libnftnl.so.11` -> `libnftnl11`).
/// Matched under the multiarch directory, so that a foreign-architecture copy (libc6-i386's
/// libc.so.6) is not taken for it.
fn library_package(library: &str) -> Result<String> {
    let multiarch = exec::capture(&mut exec::command(
        "dpkg-architecture",
        ["-qDEB_HOST_MULTIARCH"],
    ))?;
    let suffix = format!("/{}/{library}", multiarch.trim());
    let out = exec::capture(&mut exec::command("dpkg", ["-S", &format!("*{suffix}")]))?;
    out.lines()
        .find_map(|line| {
            let (package, path) = line.split_once(": ")?;
            path.ends_with(&suffix)
                .then(|| package.split(':').next().unwrap_or(package).to_owned())
        })
        .with_context(|| format!("no package ships {library}: {out:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contents_lines_become_entries_and_wrong_modes_are_named() {
        let listing = "\
drwxr-xr-x root/root         0 2026-12-07 08:17 ./
drwxr-xr-x root/root         0 2026-12-07 08:17 ./usr/bin/
-rwxr-xr-x root/root   8925464 2026-12-07 08:17 ./usr/bin/faultline
-rw-r--r-- root/root      1234 2026-12-07 08:17 ./etc/faultline/faultline.toml
-rwxr-xr-x root/root      1234 2026-12-07 08:17 ./usr/share/man/man1/faultline.1.gz
-rw-r--r-- 1000/1000      1234 2026-12-07 08:17 ./usr/share/doc/faultline/copyright
";
        let entries = parse_listing(listing).unwrap();
        assert_eq!(entries.len(), 6);
        assert_eq!(
            entries[2],
            Entry {
                mode: "-rwxr-xr-x".into(),
                owner: "root/root".into(),
                path: "usr/bin/faultline".into()
            }
        );
        assert_eq!(entries[1].path, "usr/bin/");
        let wrong = wrong_modes(&entries);
        assert_eq!(wrong.len(), 2, "{wrong:?}");
        assert!(wrong[0].starts_with("./usr/share/man/man1/faultline.1.gz is -rwxr-xr-x"));
        assert!(wrong[1].contains("1000/1000"));
        assert!(parse_listing("garbage").is_err());
    }

    #[test]
    fn subcommands_are_read_from_clap_help() {
        let help = "\
Inject faults

Usage: faultline [OPTIONS] <COMMAND>

Commands:
  serve        Run the agent in the foreground (root): gRPC on a unix socket, faults
               reverted on exit
  ls           List the agent's faults [aliases: list]
  certs        Make the certificates
  help         Print this message or the help of the given subcommand(s)

Options:
  --agent <AGENT>  The agent
";
        assert_eq!(subcommands(help), ["serve", "ls", "certs"]);
        assert!(subcommands("Usage: faultline serve [OPTIONS]\n\nOptions:\n  -h\n").is_empty());
    }
}
