//! `faultline completions SHELL`: the shell completion script, generated from the command
//! line's own definition, so it can never offer a flag the binary does not have.

use clap::{Args, CommandFactory as _};
use clap_complete::Shell;

use super::{output::Failure, Cli};

#[derive(Debug, Args)]
#[command(after_long_help = "\
Load it in the current shell, or install it where the shell looks (the Debian package \
installs bash, zsh and fish completions already):
  bash:  source <(faultline completions bash)
         faultline completions bash > /etc/bash_completion.d/faultline
  zsh:   faultline completions zsh > \"${fpath[1]}/_faultline\"
  fish:  faultline completions fish > ~/.config/fish/completions/faultline.fish")]
pub(crate) struct Options {
    /// The shell to complete for
    #[arg(value_enum)]
    pub(crate) shell: Shell,
}

pub(crate) fn run(o: Options) -> Result<(), Failure> {
    clap_complete::generate(
        o.shell,
        &mut Cli::command(),
        "faultline",
        &mut std::io::stdout(),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts_complete_subcommands_and_their_flags_but_not_hidden_ones() {
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "faultline", &mut script);
            let script = String::from_utf8(script).unwrap();
            for word in ["serve", "block", "max-duration", "completions", "renew"] {
                assert!(script.contains(word), "{shell}: no {word}");
            }
            assert!(!script.contains("__worker"), "{shell} offers __worker");
        }
    }
}
