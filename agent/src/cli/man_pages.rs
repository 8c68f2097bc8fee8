//! `faultline __man-pages DIR` (internal, for packaging): writes `faultline.1` and one page per
//! subcommand, nested ones too (`faultline-serve.1`, `faultline-certs-ca.1`), generated from
//! the command line's own definition.

use std::{fs, path::PathBuf};

use clap::{Args, CommandFactory as _};

use super::{output::Failure, Cli};

#[derive(Debug, Args)]
pub(crate) struct Options {
    /// The directory to write the pages into (created if missing)
    pub(crate) dir: PathBuf,
}

pub(crate) fn run(o: Options) -> Result<(), Failure> {
    let failed = |e: std::io::Error| {
        Failure::internal(format!("writing man pages into {}: {e}", o.dir.display()))
    };
    fs::create_dir_all(&o.dir).map_err(failed)?;
    clap_mangen::generate_to(Cli::command(), &o.dir).map_err(failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_visible_subcommand_gets_a_page() {
        let dir = tempfile::tempdir().unwrap();
        run(Options {
            dir: dir.path().join("man1"),
        })
        .unwrap();
        let pages: Vec<String> = fs::read_dir(dir.path().join("man1"))
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        for page in [
            "faultline.1",
            "faultline-serve.1",
            "faultline-stress-cpu.1",
            "faultline-certs-ca.1",
            "faultline-completions.1",
        ] {
            assert!(pages.iter().any(|p| p == page), "no {page} in {pages:?}");
        }
        assert!(
            !pages.iter().any(|p| p.contains("__") || p.contains("help")),
            "{pages:?}"
        );
        let serve = fs::read_to_string(dir.path().join("man1/faultline-serve.1")).unwrap();
        assert!(serve.contains("max\\-duration"), "{serve}");
    }
}
