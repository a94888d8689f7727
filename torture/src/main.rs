//! chd-torture: a nemesis soak of the real chd, and a linearizability checker of histories.
//!
//!     chd-torture [run] --seconds 600 --seed 42 [--out DIR] [--faults LIST] [--no-KIND ...]
//!     chd-torture check HISTORY.jsonl

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use chd_torture::nemesis::FaultKind;
use chd_torture::run::{self, RunConfig};
use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(name = "chd-torture", version, about = "Load, faults and a linearizability check against chd")]
#[command(args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Start chd, load it, inject faults, and judge the result (the default).
    Run(RunArgs),
    /// Check a recorded history for linearizability, key by key.
    Check { history: PathBuf },
}

#[derive(Args, Clone)]
struct RunArgs {
    /// How long to load and inject faults.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Seed of the fault schedule and the load [default: random, printed].
    #[arg(long)]
    seed: Option<u64>,
    /// Where the history, fault log, chd's log and data, and the summary go
    /// [default: a new directory under the temp dir].
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Hot keys, written, read and deleted all the time.
    #[arg(long, default_value_t = 40)]
    keys: usize,
    /// Cold keys, written once before the faults and only read afterwards.
    #[arg(long, default_value_t = 200)]
    cold_keys: usize,
    /// Nodes chd starts with.
    #[arg(long, default_value_t = 4)]
    nodes: u32,
    /// The storage engine of chd's nodes (chd's `--engine`: append or sled).
    #[arg(long, default_value = "append")]
    engine: String,
    /// Fault kinds to use, comma-separated (kill-one, kill-all, stop-one, stop-chd, kill-chd,
    /// restart-chd, delete-dir, delete-dir-stopped, corrupt, disk-full, node-add, node-remove,
    /// node-replace) [default: all].
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    faults: Option<Vec<String>>,
    #[command(flatten)]
    off: FaultsOff,
    /// Per-operation deadline of the clients, in seconds.
    #[arg(long, default_value_t = 10.0)]
    op_timeout: f64,
    /// Share of writes with a large value (128 KiB to 2 MiB).
    #[arg(long, default_value_t = 0.03)]
    large_share: f64,
    /// Size of the tmpfs the data dir lives on when disk-full faults run (as root).
    #[arg(long, default_value_t = 512)]
    tmpfs_mib: u64,
    /// Keep chd's data dir after a passing run (a failed run always keeps it).
    #[arg(long)]
    keep_data: bool,
    /// chd's executable [default: next to this one].
    #[arg(long, value_name = "PATH")]
    chd: Option<PathBuf>,
    /// chctl's executable [default: next to this one].
    #[arg(long, value_name = "PATH")]
    chctl: Option<PathBuf>,
}

#[derive(Args, Clone)]
struct FaultsOff {
    #[arg(long)]
    no_kill_one: bool,
    #[arg(long)]
    no_kill_all: bool,
    #[arg(long)]
    no_stop_one: bool,
    #[arg(long)]
    no_stop_chd: bool,
    #[arg(long)]
    no_kill_chd: bool,
    #[arg(long)]
    no_restart_chd: bool,
    #[arg(long)]
    no_delete_dir: bool,
    #[arg(long)]
    no_delete_dir_stopped: bool,
    #[arg(long)]
    no_corrupt: bool,
    #[arg(long)]
    no_disk_full: bool,
    #[arg(long)]
    no_node_add: bool,
    #[arg(long)]
    no_node_remove: bool,
    #[arg(long)]
    no_node_replace: bool,
}

impl FaultsOff {
    fn off(&self, k: FaultKind) -> bool {
        match k {
            FaultKind::KillOne => self.no_kill_one,
            FaultKind::KillAll => self.no_kill_all,
            FaultKind::StopOne => self.no_stop_one,
            FaultKind::StopChd => self.no_stop_chd,
            FaultKind::KillChd => self.no_kill_chd,
            FaultKind::RestartChd => self.no_restart_chd,
            FaultKind::DeleteDir => self.no_delete_dir,
            FaultKind::DeleteDirStopped => self.no_delete_dir_stopped,
            FaultKind::Corrupt => self.no_corrupt,
            FaultKind::DiskFull => self.no_disk_full,
            FaultKind::NodeAdd => self.no_node_add,
            FaultKind::NodeRemove => self.no_node_remove,
            FaultKind::NodeReplace => self.no_node_replace,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Check { history }) => check(&history),
        Some(Command::Run(args)) => torture(args),
        None => torture(cli.run),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("chd-torture: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn check(path: &std::path::Path) -> anyhow::Result<ExitCode> {
    let report = chd_torture::check::check_file(path)?;
    for v in &report.violations {
        println!("{}: {}", v.key, v.message);
    }
    if report.ok() {
        println!("linearizable");
        Ok(ExitCode::SUCCESS)
    } else {
        println!("{} keys not linearizable", report.violations.len());
        Ok(ExitCode::FAILURE)
    }
}

fn torture(a: RunArgs) -> anyhow::Result<ExitCode> {
    let seed = a.seed.unwrap_or_else(random_seed);
    let mut faults = match &a.faults {
        None => FaultKind::ALL.to_vec(),
        Some(list) => list
            .iter()
            .filter(|s| !s.is_empty())
            .map(|s| FaultKind::parse(s.trim()).ok_or_else(|| anyhow::anyhow!("unknown fault kind {s:?}")))
            .collect::<anyhow::Result<_>>()?,
    };
    faults.retain(|k| !a.off.off(*k));
    faults.dedup();
    let out = a.out.unwrap_or_else(|| std::env::temp_dir().join(format!("chd-torture-{seed}-{}", std::process::id())));
    eprintln!(
        "chd-torture: seed {seed}, {} s, faults {}; files in {}",
        a.seconds,
        faults.iter().map(|k| k.name()).collect::<Vec<_>>().join(","),
        out.display()
    );
    let cfg = RunConfig {
        seconds: a.seconds,
        seed,
        out,
        clients: a.clients,
        keys: a.keys,
        cold_keys: a.cold_keys,
        nodes: a.nodes,
        engine: a.engine,
        faults,
        chd: a.chd.unwrap_or_else(|| run::sibling("chd")),
        chctl: a.chctl.unwrap_or_else(|| run::sibling("chctl")),
        op_timeout: Duration::from_secs_f64(a.op_timeout),
        large_share: a.large_share,
        tmpfs_mib: a.tmpfs_mib,
        keep_data: a.keep_data,
    };
    let summary = run::run(cfg).map_err(|e| anyhow::anyhow!("{e:#} (seed {seed})"))?;
    run::print(&summary);
    Ok(if summary.verdict == "pass" { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

fn random_seed() -> u64 {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    t.as_nanos() as u64 ^ u64::from(std::process::id()).rotate_left(32)
}
