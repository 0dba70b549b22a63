//! `onceq completions SHELL` and `onceq man`: shell completions and man pages, generated from the
//! same clap definitions the parser uses (`clap_complete`, `clap_mangen`), so they cannot drift
//! from the flags the binary takes.

use std::path::PathBuf;

use crate::error::CliError;

/// `onceq completions`.
#[derive(Debug, clap::Args)]
pub struct CompletionsArgs {
    /// The shell. Install, e.g. bash: `onceq completions bash > ~/.local/share/bash-completion/completions/onceq`;
    /// zsh: into a directory of `$fpath` as `_onceq`; fish: `~/.config/fish/completions/onceq.fish`.
    pub shell: clap_complete::Shell,
}

/// `onceq man`.
#[derive(Debug, clap::Args)]
pub struct ManArgs {
    /// Write `onceq.1` and one page per command (`onceq-serve.1`, `onceq-queue-list.1`, ...)
    /// into this directory (created if missing) instead of printing `onceq.1` on stdout.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

/// Prints the completion script of `args.shell` for `command` (the whole command line).
pub fn completions(args: &CompletionsArgs, mut command: clap::Command) -> Result<(), CliError> {
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut command, "onceq", &mut script);
    write_stdout(&script)
}

/// Prints the man page of `command` (the whole command line), or writes every page into `args.dir`.
pub fn man(args: &ManArgs, command: clap::Command) -> Result<(), CliError> {
    match &args.dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .map_err(|e| CliError::Failed(format!("cannot create {}: {e}", dir.display())))?;
            clap_mangen::generate_to(command, dir)
                .map_err(|e| CliError::Failed(format!("cannot write the man pages into {}: {e}", dir.display())))?;
            let pages = std::fs::read_dir(dir)
                .map_err(|e| CliError::Failed(format!("cannot list {}: {e}", dir.display())))?
                .filter(|entry| entry.as_ref().is_ok_and(|e| e.path().extension().is_some_and(|x| x == "1")))
                .count();
            eprintln!(
                "wrote {pages} man pages into {} (read one with: man -l {}/onceq.1)",
                dir.display(),
                dir.display()
            );
            Ok(())
        }
        None => {
            let mut page = Vec::new();
            clap_mangen::Man::new(command)
                .render(&mut page)
                .map_err(|e| CliError::Failed(format!("cannot render the man page: {e}")))?;
            write_stdout(&page)
        }
    }
}

/// Writes generated text on stdout, quietly ending on a closed pipe as the `out!` macros do.
fn write_stdout(bytes: &[u8]) -> Result<(), CliError> {
    outln!("{}", String::from_utf8_lossy(bytes).trim_end_matches('\n'));
    Ok(())
}
