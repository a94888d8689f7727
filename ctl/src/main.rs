//! chctl: the command-line client of chd.

#[macro_use]
mod out;
mod bench;
mod commands;
mod exit;
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
    /// Compare every replica set and copy what differs; report what was found and fixed. Exits
    /// 5 if a node is failed or was not reachable (its replicas were not checked).
    Repair,
    /// Measure durable writes per second, beside the disk's raw fdatasync rate.
    Bench(bench::BenchArgs),
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
