//! chctl: the command-line client of chd.

#[macro_use]
mod out;
mod bench;
mod commands;
mod exit;
mod gen;
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
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Store VALUE under KEY ("-" reads the value from stdin, binary-safe).
    Set { key: String, value: String },
    /// Print the value of KEY, byte for byte; exit 1 if there is none.
    Get { key: String },
    /// Delete KEY.
    Del { key: String },
    /// List live keys, one per line, newest version across replicas (streamed, never the whole
    /// key space at once).
    Keys {
        /// Only keys starting with P.
        #[arg(long, value_name = "P", default_value = "")]
        prefix: String,
        /// Stop after N keys.
        #[arg(long, value_name = "N")]
        limit: Option<u64>,
    },
    /// Exit 0 if KEY exists, 1 if not.
    Exists { key: String },
    /// Show chd and its nodes.
    Status {
        /// One JSON object instead of a table.
        #[arg(long)]
        json: bool,
        /// Health check: print one line and exit 0 only if every node is up, else 5 (3 if chd
        /// cannot be reached), like pg_isready.
        #[arg(long, conflicts_with = "json")]
        check: bool,
    },
    /// Show each node's share of the key space, or with --plan what a change would move.
    Ring {
        #[arg(long)]
        json: bool,
        /// Dry run of a change: `add [COUNT]`, `remove ID` or `replace ID`.
        #[arg(long, num_args = 1..=2, value_names = ["CHANGE", "ARG"])]
        plan: Option<Vec<String>>,
    },
    /// Manage nodes.
    #[command(subcommand)]
    Node(NodeCommand),
    /// Compare every replica set and copy what differs; report what was found and fixed.
    Repair {
        #[arg(long)]
        json: bool,
    },
    /// Measure durable writes per second, beside the disk's raw fdatasync rate.
    Bench(bench::BenchArgs),
    /// Print a completion script for SHELL (e.g. `chctl completions bash > /etc/bash_completion.d/chctl`).
    Completions {
        /// The shell to complete for.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write the man pages of chctl and its commands into DIR (for packaging).
    #[command(hide = true)]
    Man {
        /// Directory for the pages (created if missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
pub enum NodeCommand {
    /// Respawn a node's worker now, also one marked failed.
    Restart { id: u32 },
    /// Set a node's database aside and rebuild it from the replicas (shows progress).
    Rebuild { id: u32 },
    /// Add nodes; the keys they take over move to them (shows progress).
    Add {
        #[arg(long, default_value_t = 1)]
        count: u32,
    },
    /// Remove a node; its keys move to the others first (shows progress).
    Remove { id: u32 },
    /// Replace a (failed) node with a new one that takes over exactly its ranges.
    Replace { id: u32 },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let socket = cli.socket.unwrap_or_else(default_socket);
    if let Some(user) = &cli.server_user {
        chd_client::trust::set_server_user(user);
    }
    let result = commands::run(&socket, cli.command).and_then(|code| Ok(out::flush().map(|()| code)?));
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
