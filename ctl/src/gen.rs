//! Shell completions and man pages, generated from chctl's own clap definition at run time, so
//! they always describe the binary that prints them: a flag added to `Cli` shows up in both
//! without anything else to edit. The Debian package ships their output (packaging/build-deb.sh).

use std::path::Path;

use anyhow::Context;
use clap::CommandFactory;

/// Writes the completion script for `shell` to stdout.
pub fn completions(shell: clap_complete::Shell) -> anyhow::Result<()> {
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut crate::Cli::command(), "chctl", &mut script);
    crate::out::write_all(&script)?;
    Ok(())
}

/// Writes `chctl.1` and one page per visible subcommand (`chctl-node-add.1`, ...) into `dir`,
/// creating it if needed.
pub fn man_pages(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    clap_mangen::generate_to(crate::Cli::command(), dir)
        .with_context(|| format!("cannot write man pages into {}", dir.display()))
}
