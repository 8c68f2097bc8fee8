//! The agent's configuration file, `/etc/faultline/faultline.toml` unless `serve --config`
//! names another: the flags of `faultline serve` written as TOML keys (the flag's name without
//! its dashes). It owns reading the file and turning its settings into arguments for the flags
//! that neither the command line nor the environment set; clap then parses those with each
//! flag's own parser and checks, so a setting means exactly what the flag means. It never
//! overrides a flag given on the command line or in its environment variable, and never
//! accepts a key that is not a flag.

use std::{
    collections::BTreeMap,
    ffi::OsString,
    fs, io,
    path::{Path, PathBuf},
};

use clap::{builder::Resettable, parser::ValueSource, Arg, ArgAction, ArgMatches, Command};
use thiserror::Error;
use toml::{Spanned, Value};

pub(crate) const DEFAULT_CONFIG: &str = "/etc/faultline/faultline.toml";

/// The file the package installs: every setting commented out with its default. A line
/// `#key = value` (no space after `#`) is a setting; `# ...` is prose.
#[cfg(test)]
pub(crate) const SHIPPED: &str = include_str!("../../../packaging/faultline.toml");

/// The global flags `serve` reads besides its own: the remote listener's certificate and key.
/// The other global flags (`--agent`, `--ca`, `--output`) are the client's.
const GLOBAL_KEYS: &[&str] = &["tls-cert", "tls-key"];

/// `serve`'s flags that are not settings: the file cannot name itself.
const NOT_SETTINGS: &[&str] = &["config"];

#[derive(Debug, Error)]
pub(crate) enum ConfigFileError {
    #[error(
        "{}: no such file (--config names a file that must exist; without --config, \
         {DEFAULT_CONFIG} is read only if it exists)",
        path.display()
    )]
    Missing { path: PathBuf },
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    /// toml's message says what it expected at that point.
    #[error("{} line {line}: {message}", path.display())]
    Syntax {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error(
        "{} line {line}: unknown key `{key}` (the keys are the flags of `faultline serve`: {})",
        path.display(),
        known.join(", ")
    )]
    UnknownKey {
        path: PathBuf,
        line: usize,
        key: String,
        known: Vec<String>,
    },
    #[error("{} line {line}: bad value for `{key}`: {reason}; `{key}` takes {expected}", path.display())]
    BadValue {
        path: PathBuf,
        line: usize,
        key: String,
        /// What was wrong with the value, in the flag parser's words where it has them.
        reason: String,
        /// What the flag accepts: its value name and its help.
        expected: String,
    },
}

/// What the file adds to `serve`'s command line.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct FileSettings {
    /// The file read, if there was one.
    pub(crate) path: Option<PathBuf>,
    /// `--flag=value` for every setting the command line and the environment left unset.
    pub(crate) arguments: Vec<OsString>,
}

/// Reads the configuration file `serve` was pointed at (or the default one, if it exists)
/// and returns the arguments its settings add. `root` is the whole command line's definition,
/// built, and `matches` its first parse; for any subcommand but `serve` there is nothing to
/// read.
pub(crate) fn settings(
    root: &Command,
    matches: &ArgMatches,
) -> Result<FileSettings, ConfigFileError> {
    let Some(serve) = matches.subcommand_matches("serve") else {
        return Ok(FileSettings::default());
    };
    let path = serve
        .get_one::<PathBuf>("config")
        .cloned()
        .unwrap_or_else(|| DEFAULT_CONFIG.into());
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return match serve.value_source("config") {
                Some(ValueSource::DefaultValue) | None => Ok(FileSettings::default()),
                Some(_) => Err(ConfigFileError::Missing { path }),
            };
        }
        Err(source) => return Err(ConfigFileError::Read { path, source }),
    };
    let flags = Flags::of(root);
    let mut arguments = Vec::new();
    for setting in parse(&path, &text)? {
        let Some(arg) = flags.get(&setting.key) else {
            return Err(ConfigFileError::UnknownKey {
                path,
                line: setting.line,
                key: setting.key,
                known: flags.keys(),
            });
        };
        // Checked even when the command line overrides it: a broken file is broken.
        let values = values(arg, &setting).map_err(|reason| ConfigFileError::BadValue {
            path: path.clone(),
            line: setting.line,
            key: setting.key.clone(),
            reason,
            expected: expected(arg),
        })?;
        // clap hands global flags down to serve's matches wherever they were written.
        let given = matches!(
            serve.value_source(arg.get_id().as_str()),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        );
        if !given {
            arguments.extend(values.into_iter().map(|value| match value {
                Some(value) => format!("--{}={value}", setting.key).into(),
                None => format!("--{}", setting.key).into(),
            }));
        }
    }
    Ok(FileSettings {
        path: Some(path),
        arguments,
    })
}

/// Every key the file may hold, mapped to its flag.
struct Flags<'a>(BTreeMap<String, &'a Arg>);

impl<'a> Flags<'a> {
    fn of(root: &'a Command) -> Self {
        let serve = root
            .find_subcommand("serve")
            .expect("the command line has a serve subcommand");
        // Once the command is built, serve also holds the global flags and --help, --version.
        let own = serve.get_arguments().filter(|arg| {
            !arg.is_global_set()
                && !NOT_SETTINGS.contains(&arg.get_id().as_str())
                && !matches!(
                    arg.get_action(),
                    ArgAction::Help
                        | ArgAction::HelpShort
                        | ArgAction::HelpLong
                        | ArgAction::Version
                )
        });
        let global = root.get_arguments().filter(|arg| {
            arg.get_long()
                .is_some_and(|long| GLOBAL_KEYS.contains(&long))
        });
        Self(
            own.chain(global)
                .filter_map(|arg| Some((arg.get_long()?.to_owned(), arg)))
                .collect(),
        )
    }

    fn get(&self, key: &str) -> Option<&'a Arg> {
        self.0.get(key).copied()
    }

    fn keys(&self) -> Vec<String> {
        self.0.keys().cloned().collect()
    }
}

/// One `key = value` line of the file.
struct Setting {
    key: String,
    line: usize,
    value: Value,
}

/// The file's settings in the order they are written.
fn parse(path: &Path, text: &str) -> Result<Vec<Setting>, ConfigFileError> {
    let table: BTreeMap<Spanned<String>, Spanned<Value>> =
        toml::from_str(text).map_err(|e| ConfigFileError::Syntax {
            path: path.to_owned(),
            line: e.span().map_or(1, |span| line_of(text, span.start)),
            message: e.message().to_owned(),
        })?;
    let mut settings: Vec<(usize, Setting)> = table
        .into_iter()
        .map(|(key, value)| {
            let start = key.span().start;
            let setting = Setting {
                line: line_of(text, start),
                key: key.into_inner(),
                value: value.into_inner(),
            };
            (start, setting)
        })
        .collect();
    settings.sort_by_key(|(start, _)| *start);
    Ok(settings.into_iter().map(|(_, setting)| setting).collect())
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// The flag's values for a setting, each checked with the flag's own parser: `Some(value)`
/// for `--flag=value`, `None` for a bare `--flag` (`true` for a flag whose value is optional).
fn values(arg: &Arg, setting: &Setting) -> Result<Vec<Option<String>>, String> {
    let repeatable = matches!(arg.get_action(), ArgAction::Append);
    let takes_value = arg.get_action().takes_values();
    let optional_value = arg.get_num_args().is_some_and(|n| n.min_values() == 0);
    let values = match &setting.value {
        Value::Boolean(on) if !takes_value || optional_value => {
            return Ok(if *on { vec![None] } else { vec![] });
        }
        Value::Array(items) if repeatable => items.iter().map(scalar).collect::<Result<_, _>>()?,
        Value::Array(_) => return Err("one value, not a list".to_owned()),
        value => vec![scalar(value)?],
    };
    for value in &values {
        check(arg, value).map_err(|reason| format!("{value:?}: {reason}"))?;
    }
    Ok(values.into_iter().map(Some).collect())
}

/// Parses `value` as clap would parse `--flag=value`: with the flag's own parser and range
/// checks, alone (without what it requires of or forbids to other flags, which the full parse
/// checks).
fn check(arg: &Arg, value: &str) -> Result<(), String> {
    let flag = arg
        .clone()
        .requires(Resettable::Reset)
        .conflicts_with(Resettable::Reset)
        .env(None)
        .global(false);
    let mut alone = Command::new("faultline-serve")
        .no_binary_name(true)
        .arg(flag);
    let long = arg.get_long().unwrap_or_default();
    match alone.try_get_matches_from_mut([format!("--{long}={value}")]) {
        Ok(_) => Ok(()),
        // A parser's own message (ours say what they accept) is the error's source; clap's
        // rendered error would name the flag, not the key.
        Err(e) => Err(std::error::Error::source(&e).map_or_else(
            || e.kind().as_str().unwrap_or("invalid value").to_owned(),
            ToString::to_string,
        )),
    }
}

/// A value as it would be written on the command line.
fn scalar(value: &Value) -> Result<String, String> {
    match value {
        Value::String(s) => Ok(s.clone()),
        Value::Integer(i) => Ok(i.to_string()),
        Value::Float(f) => Ok(f.to_string()),
        other => Err(format!("a {}, not a string or a number", other.type_str())),
    }
}

/// What a flag accepts, for error messages: its value name and the first line of its help.
fn expected(arg: &Arg) -> String {
    let name = arg
        .get_value_names()
        .and_then(|names| names.first())
        .map_or_else(|| arg.get_id().as_str().to_uppercase(), ToString::to_string);
    let list = if matches!(arg.get_action(), ArgAction::Append) {
        format!("{name} or a list of them")
    } else {
        name
    };
    match arg.get_help() {
        Some(help) => format!("{list}: {}", help.to_string().lines().next().unwrap_or("")),
        None => list,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use clap::CommandFactory as _;

    use super::*;
    use crate::cli::{Cli, Command as Subcommand};

    /// The shipped file's settings: `#key = value` lines, uncommented.
    fn shipped_settings() -> Vec<(String, String)> {
        SHIPPED
            .lines()
            .filter_map(|line| line.strip_prefix('#'))
            .filter(|line| line.starts_with(|c: char| c.is_ascii_lowercase()))
            .filter_map(|line| line.split_once(" = "))
            .map(|(key, value)| (key.to_owned(), value.to_owned()))
            .collect()
    }

    fn config(text: &str) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().unwrap();
        fs::write(file.path(), text).unwrap();
        file
    }

    /// Held while a test parses serve's command line, and while one sets a variable of serve's
    /// environment: parsing reads the process environment, which tests share.
    static ENVIRONMENT: std::sync::Mutex<()> = std::sync::Mutex::new(());

    fn serve(args: &[&str]) -> Result<(crate::cli::serve::Options, FileSettings), String> {
        let _environment = ENVIRONMENT.lock().unwrap_or_else(|e| e.into_inner());
        serve_unlocked(args)
    }

    fn serve_unlocked(args: &[&str]) -> Result<(crate::cli::serve::Options, FileSettings), String> {
        let argv = ["faultline", "serve"]
            .iter()
            .chain(args)
            .map(OsString::from);
        let (cli, settings) = crate::cli::parse_from(argv).map_err(|e| e.to_string())?;
        match cli.command {
            Subcommand::Serve(options) => Ok((options, settings)),
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn the_shipped_file_holds_exactly_the_flags_of_serve() {
        // Built, as the command line is when it parses: with --help, --version and the
        // global flags in every subcommand.
        let mut root = Cli::command();
        root.build();
        let flags: BTreeSet<String> = Flags::of(&root).keys().into_iter().collect();
        let shipped: BTreeSet<String> = shipped_settings().into_iter().map(|(k, _)| k).collect();
        assert_eq!(shipped, flags);
        assert!(flags.contains("socket") && flags.contains("tls-cert"));
        assert!(!flags.contains("config") && !flags.contains("agent"));
    }

    #[test]
    fn the_shipped_file_reads_as_the_defaults() {
        // As installed, every setting is commented out: the file changes nothing.
        let installed = config(SHIPPED);
        let path = installed.path().to_str().unwrap();
        let (_, settings) = serve(&["--config", path]).unwrap();
        assert!(settings.arguments.is_empty());
        // Uncommented, every value parses, and a flag with a default is shown with it.
        let root = Cli::command();
        let flags = Flags::of(&root);
        for (key, value) in shipped_settings() {
            let arg = flags.get(&key).unwrap();
            let defaults: Vec<String> = arg
                .get_default_values()
                .iter()
                .map(|d| d.to_string_lossy().into_owned())
                .collect();
            if !defaults.is_empty() {
                let value: Value = toml::from_str::<toml::Table>(&format!("v = {value}"))
                    .unwrap()
                    .remove("v")
                    .unwrap();
                let written = match value {
                    Value::Array(items) => items.iter().map(|i| scalar(i).unwrap()).collect(),
                    value => vec![scalar(&value).unwrap()],
                };
                assert_eq!(written, defaults, "{key}");
            }
        }
        let uncommented: String = SHIPPED
            .lines()
            .map(|line| match line.strip_prefix('#') {
                Some(setting) if setting.starts_with(|c: char| c.is_ascii_lowercase()) => setting,
                _ => line,
            })
            .collect::<Vec<_>>()
            .join("\n");
        let file = config(&uncommented);
        let (_, settings) = serve(&["--config", file.path().to_str().unwrap()]).unwrap();
        for (key, value) in shipped_settings() {
            let flag = format!("--{key}");
            let present = settings.arguments.iter().any(|a| {
                let a = a.to_string_lossy();
                a == flag || a.starts_with(&format!("{flag}="))
            });
            // A switch shipped as `false`, its default, adds no argument.
            assert_eq!(
                present,
                value != "false",
                "{key} in {:?}",
                settings.arguments
            );
        }
    }

    #[test]
    fn an_unknown_key_is_named_with_its_line() {
        let file = config("socket = \"/tmp/s\"\n\n# a comment\nsockt = \"/tmp/t\"\n");
        let error = serve(&["--config", file.path().to_str().unwrap()]).unwrap_err();
        assert!(
            error.contains("line 4: unknown key `sockt`") && error.contains("socket-group"),
            "{error}"
        );
    }

    #[test]
    fn a_bad_value_is_named_with_its_line_and_what_is_accepted() {
        let file = config("socket = \"/tmp/s\"\nmax-duration = \"soon\"\n");
        let error = serve(&["--config", file.path().to_str().unwrap()]).unwrap_err();
        assert!(
            error.contains("line 2: bad value for `max-duration`: \"soon\"")
                && error.contains("expected e.g. 30s")
                && error.contains("; `max-duration` takes DURATION: The longest duration"),
            "{error}"
        );
        let file = config("protected-port = [22, \"ssh\"]\n");
        let error = serve(&["--config", file.path().to_str().unwrap()]).unwrap_err();
        assert!(
            error.contains("line 1: bad value for `protected-port`: \"ssh\"")
                && error.contains("PORT or a list of them"),
            "{error}"
        );
        let file = config("socket = [\"/a\", \"/b\"]\n");
        let error = serve(&["--config", file.path().to_str().unwrap()]).unwrap_err();
        assert!(error.contains("one value, not a list"), "{error}");
        let file = config("socket = \n");
        let error = serve(&["--config", file.path().to_str().unwrap()]).unwrap_err();
        assert!(error.contains("line 1: "), "{error}");
    }

    #[test]
    fn the_command_line_beats_the_file_which_beats_the_default() {
        let file = config(
            "state-dir = \"/srv/faultline\"\nmax-duration = \"1h\"\nprotected-port = [22, 2222]\n\
             metrics-listen = true\n",
        );
        let path = file.path().to_str().unwrap();
        let (o, settings) = serve(&["--config", path, "--max-duration", "2h"]).unwrap();
        assert_eq!(settings.path.as_deref(), Some(file.path()));
        assert_eq!(o.state_dir, Path::new("/srv/faultline"));
        assert_eq!(o.max_duration, std::time::Duration::from_secs(7200));
        assert_eq!(o.protected_ports, [22, 2222]);
        assert_eq!(
            o.metrics_listen,
            Some(crate::monitor::http::DEFAULT_ADDR.parse().unwrap())
        );
        // The global --tls-cert counts as given before serve as well as after it.
        let tls_file = config("tls-cert = \"/etc/faultline/tls/agent.pem\"\n");
        let tls_path = tls_file.path().to_str().unwrap();
        let argv = [
            "faultline",
            "--tls-cert",
            "/a.pem",
            "serve",
            "--config",
            tls_path,
        ];
        let (cli, settings) = crate::cli::parse_from(argv.map(OsString::from)).unwrap();
        assert_eq!(cli.global.tls_cert.as_deref(), Some(Path::new("/a.pem")));
        assert!(settings.arguments.is_empty(), "{:?}", settings.arguments);
        let (_, settings) = serve(&["--config", tls_path, "--tls-cert", "/b.pem"]).unwrap();
        assert!(settings.arguments.is_empty(), "{:?}", settings.arguments);
        let (_, settings) = serve(&["--config", tls_path]).unwrap();
        assert_eq!(
            settings.arguments,
            ["--tls-cert=/etc/faultline/tls/agent.pem"]
        );
        // A list on the command line replaces the file's, it does not add to it.
        let (o, _) = serve(&["--config", path, "--protected-port", "80"]).unwrap();
        assert_eq!(o.protected_ports, [80]);
        // Untouched by the file: the default.
        assert_eq!(o.probe_interval, std::time::Duration::from_secs(5));
        // The environment beats the file too. FAULTLINE_LOG is read by serve alone; every
        // parse of serve waits while it is set.
        let file = config("log-level = \"warn\"\n");
        let path = file.path().to_str().unwrap();
        assert_eq!(serve(&["--config", path]).unwrap().0.log_level, "warn");
        let environment = ENVIRONMENT.lock().unwrap_or_else(|e| e.into_inner());
        std::env::set_var("FAULTLINE_LOG", "debug");
        let from_env = serve_unlocked(&["--config", path]);
        std::env::remove_var("FAULTLINE_LOG");
        drop(environment);
        assert_eq!(from_env.unwrap().0.log_level, "debug");
    }

    #[test]
    fn a_missing_file_is_an_error_only_when_named() {
        let error = serve(&["--config", "/nonexistent/faultline.toml"]).unwrap_err();
        assert!(
            error.contains("/nonexistent/faultline.toml: no such file"),
            "{error}"
        );
        // Without --config the default file is read only if it exists; point the default at
        // a file that does not, whatever this host has installed.
        let root = Cli::command().mut_subcommand("serve", |serve| {
            serve.mut_arg("config", |config| {
                config.default_value("/nonexistent/faultline.toml")
            })
        });
        let matches = root
            .clone()
            .try_get_matches_from(["faultline", "serve"])
            .unwrap();
        assert_eq!(settings(&root, &matches).unwrap(), FileSettings::default());
    }
}
