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
        .with_context(|| format!("cannot write man pages into {}", dir.display()))?;
    let page = dir.join("chctl.1");
    let mut text = std::fs::read_to_string(&page).with_context(|| format!("cannot read {}", page.display()))?;
    text.push_str(EXTRA_SECTIONS);
    std::fs::write(&page, text).with_context(|| format!("cannot write {}", page.display()))
}

/// The sections of `chctl.1` that clap does not write: examples, exit status, environment and
/// files (roff).
const EXTRA_SECTIONS: &str = r#".SH EXAMPLES
.nf
chctl set greeting hello
chctl get greeting
chctl set blob \-\-value\-file photo.jpg
chctl set \-\-hex 00ff 0a0b
chctl keys \-\-prefix user: \-\-limit 10
chctl status \-\-check || echo "a node is not up"
chctl node rebuild 2 \-\-engine sled
chctl dump > backup.chd && chctl restore backup.chd
.fi
.SH "EXIT STATUS"
.TP
0
success (also when the reader of stdout went away early)
.TP
1
no such key (get, exists)
.TP
2
usage: bad arguments
.TP
3
cannot reach chd: not running, connection lost, a socket served by an untrusted user, a
protocol version mismatch; nothing was done
.TP
4
refused: permission denied, key or value too large, empty key, no such node, out of memory
(max_memory); retrying will not help
.TP
5
chd cannot serve it now: too few replicas answered, disk full, another change in progress,
nodes not up; retry later
.TP
6
anything else: chctl cannot read its input or write its output
.TP
130
bench interrupted by Ctrl\-C, after deleting the keys it wrote
.SH ENVIRONMENT
.TP
CHD_SOCKET
chd's socket, unless \-\-socket is given.
.TP
RUNTIME_DIRECTORY, XDG_RUNTIME_DIR
where chd's socket is looked for next (chd.sock in the first that is set).
.TP
CHD_SERVER_USER
the user chd runs as, trusted besides root and the caller (as \-\-server\-user).
.SH FILES
.TP
/run/chd/chd.sock
the packaged service's socket, used when no other is found.
.TP
/etc/chd/chd.toml
chd's configuration (see chd(1)).
.SH "SEE ALSO"
chd(1)
"#;
