//! chctl: the command-line client of chd.

#[macro_use]
mod out;
mod bench;
mod commands;
mod connect;
mod dump;
mod exit;
mod gen;
mod human;
mod progress;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "chctl", version, about = "Talk to chd, the replicated key-value daemon", after_help = exit::HELP)]
struct Cli {
    /// chd's socket [default: $CHD_SOCKET, else $RUNTIME_DIRECTORY/chd.sock, else
    /// $XDG_RUNTIME_DIR/chd.sock, else /tmp/chd-$UID/chd.sock; else /run/chd/chd.sock if only
    /// that one exists].
    #[arg(long, global = true, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// The user chd runs as, trusted besides root and yourself: chctl checks who serves the
    /// socket before it sends anything [default: the user `chd`, if it exists].
    #[arg(long, global = true, value_name = "USER", env = "CHD_SERVER_USER")]
    server_user: Option<String>,
    /// Print one JSON object instead of text (`keys`: one JSON object per line). Keys and
    /// values that are not UTF-8 come as `key_hex`/`value_hex`.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

/// A key as given on the command line.
#[derive(clap::Args, Clone, Debug)]
pub struct KeyArgs {
    /// The key: any bytes but empty, at most 64 KiB (as hex digits with --hex).
    pub key: String,
    /// KEY (and VALUE, and what get prints) as hex digits, for binary data: `--hex 00ff`.
    #[arg(long)]
    pub hex: bool,
}

#[derive(Subcommand)]
pub enum Command {
    /// Store a value under KEY, durably (on W replicas before it returns).
    Set {
        #[command(flatten)]
        key: KeyArgs,
        /// The value, at most 32 MiB ("-" reads it from stdin, binary-safe; hex digits with
        /// --hex).
        #[arg(required_unless_present = "value_file")]
        value: Option<String>,
        /// Read the value from PATH, byte for byte ("-": stdin), instead of VALUE.
        #[arg(long, value_name = "PATH", conflicts_with = "value")]
        value_file: Option<PathBuf>,
    },
    /// Print the value of KEY, byte for byte to a pipe or file (a newline is added only on a
    /// terminal; hex digits and a newline with --hex); exit 1 if there is none.
    Get {
        #[command(flatten)]
        key: KeyArgs,
    },
    /// Delete KEY (a versioned tombstone: an older value never comes back).
    Del {
        #[command(flatten)]
        key: KeyArgs,
    },
    /// List live keys, one per line, newest version across replicas (streamed, never the whole
    /// key space at once).
    Keys {
        /// Only keys starting with P (hex digits with --hex).
        #[arg(long, value_name = "P", default_value = "")]
        prefix: String,
        /// Stop after N keys.
        #[arg(long, value_name = "N")]
        limit: Option<u64>,
        /// Print keys (and take --prefix) as hex digits, for binary keys.
        #[arg(long)]
        hex: bool,
    },
    /// Exit 0 if KEY exists, 1 if not.
    Exists {
        #[command(flatten)]
        key: KeyArgs,
    },
    /// Show chd and its nodes; exit 5 if a node is failed (it needs `chctl node restart`,
    /// `rebuild` or `replace`).
    Status {
        /// Health check: print one line and exit 0 only if every node is up, else 5 (3 if chd
        /// cannot be reached), like pg_isready.
        #[arg(long)]
        check: bool,
    },
    /// Show each node's share of the keys, or with --plan what a change would move.
    Ring {
        /// Dry run of a change: `--plan add [--count N]`, `--plan remove ID`, `--plan replace ID`.
        #[arg(long, value_name = "CHANGE")]
        plan: Option<PlanKind>,
        /// The node to remove or replace, with --plan remove|replace.
        #[arg(value_name = "ID")]
        id: Option<u32>,
        /// How many nodes to add, with --plan add [default: 1].
        #[arg(long, value_name = "N")]
        count: Option<u32>,
    },
    /// Manage nodes.
    #[command(subcommand)]
    Node(NodeCommand),
    /// Counters since chd started: requests by command and outcome with latency percentiles,
    /// bytes in and out, each node's keys, bytes, group-commit batch sizes and sync latency,
    /// value-cache hits, repairs and rebuilds. Percentiles are bucket bounds ("<=").
    Stats,
    /// Compare every replica set and copy what differs; report what was found and fixed. Exits
    /// 5 if a node is failed or was not reachable (its replicas were not checked).
    Repair,
    /// Measure durable writes per second, beside the disk's raw fdatasync rate.
    Bench(bench::BenchArgs),
    /// Write every live key and its value to stdout, while chd serves: `chctl dump > FILE`.
    ///
    /// Keys are listed like `chctl keys` and each value is read like `chctl get` (the latest
    /// acknowledged value when it is read). Not one snapshot across keys: keys written during
    /// the dump may or may not be in it. Memory stays bounded whatever the key count. The chd
    /// format (header CHD-DUMP, version, length-prefixed records, end marker) is what `chctl
    /// restore` reads; `--format resp` writes SET commands for `redis-cli --pipe`, to move the
    /// data into Redis or Valkey.
    Dump {
        /// Only keys starting with P.
        #[arg(long, value_name = "P", default_value = "")]
        prefix: String,
        #[arg(long, value_enum, default_value = "chd")]
        format: dump::Format,
    },
    /// Load a dump made by `chctl dump` from FILE (default: stdin) into chd.
    ///
    /// A key that has a value in chd now is newer than the dump and is kept as it is (the
    /// summary counts and names such keys); keys that are absent now, including keys deleted
    /// since the dump was taken, get the dump's value. With --force every key in the dump is
    /// written, replacing what chd holds. A dump cut short (no end marker) is reported, exit 6,
    /// after restoring the records before the cut.
    Restore {
        /// The dump file; "-" or none reads stdin.
        file: Option<PathBuf>,
        /// Overwrite keys that exist in chd now with the dump's (older) values.
        #[arg(long)]
        force: bool,
    },
    /// Print a completion script for SHELL (e.g. `chctl completions bash > /etc/bash_completion.d/chctl`).
    Completions {
        /// The shell to complete for.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write the man pages of chctl and its commands into DIR (`man -l DIR/chctl.1` reads one).
    Man {
        /// Directory for the pages (created if missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    /// Databases chd set aside in <data-dir>/quarantine/.
    #[command(subcommand)]
    Quarantine(QuarantineCommand),
}

#[derive(Subcommand)]
pub enum QuarantineCommand {
    /// Show each set-aside database: its node, size, age, and whether deleting it is safe.
    List,
    /// Delete set-aside databases older than D that are safe to delete; keep and explain the rest.
    ///
    /// chd sets a node's database aside when it fails its own checks, then rebuilds the node
    /// from its peers; once that node is up again, the old database holds nothing the replicas
    /// lack, and it is deleted here. A database is kept when its node is not up yet (rebuild
    /// unfinished), when its node left the ring without its records being confirmed on the new
    /// owners (it may be their only copy), or when chd did not name it. chd never deletes
    /// anything there by itself.
    Purge {
        /// Minimum age, like 7d, 12h, 30m, 90s, or 0 for any age.
        #[arg(long, value_name = "D", value_parser = chd_data::duration::parse)]
        older_than: std::time::Duration,
    },
}

/// The changes `ring --plan` can show.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum PlanKind {
    /// Add nodes (--count N).
    Add,
    /// Remove node ID.
    Remove,
    /// Replace node ID with a new node.
    Replace,
}

#[derive(Subcommand)]
pub enum NodeCommand {
    /// Respawn a node's worker now, also one marked failed.
    Restart {
        /// The node's id (see `chctl status`).
        id: u32,
    },
    /// Set a node's database aside and rebuild it from the replicas (shows progress).
    Rebuild {
        /// The node's id (see `chctl status`).
        id: u32,
        /// The engine of the rebuilt database (append or sled); by default the node keeps its own.
        #[arg(long, value_name = "ENGINE")]
        engine: Option<chd_data::proto::EngineKind>,
    },
    /// Add nodes; the keys they take over move to them (shows progress).
    Add {
        /// How many nodes to add.
        #[arg(long, value_name = "N", default_value_t = 1)]
        count: u32,
    },
    /// Remove a node; its keys move to the others first (shows progress).
    Remove {
        /// The node's id (see `chctl status`).
        id: u32,
    },
    /// Replace a (failed) node with a new one that takes over exactly its ranges.
    Replace {
        /// The node's id (see `chctl status`).
        id: u32,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let socket = cli.socket.unwrap_or_else(default_socket);
    if let Some(user) = &cli.server_user {
        chd_client::trust::set_server_user(user);
    }
    let result = commands::run(&socket, cli.command, cli.json).and_then(|code| Ok(out::flush().map(|()| code)?));
    match result {
        Ok(code) => code,
        Err(e) => match exit::code_of(&e) {
            // The reader went away (`| head`): a normal end, see `out`.
            None => ExitCode::SUCCESS,
            Some(code) => {
                // stderr may be closed too; there is nobody left to tell then.
                let _ = writeln!(std::io::stderr(), "chctl: {e:#}");
                ExitCode::from(code)
            }
        },
    }
}

/// chd's own resolution order, then the system service's socket as a last resort, so that an
/// administrator's shell finds the packaged chd without flags.
fn default_socket() -> PathBuf {
    let p = chd_data::paths::default_socket();
    let system = PathBuf::from(chd_data::paths::SYSTEM_SOCKET);
    if !p.exists() && std::env::var_os("CHD_SOCKET").is_none() && system.exists() {
        return system;
    }
    p
}
