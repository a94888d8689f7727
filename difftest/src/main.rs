//! `chd-difftest`: random command sequences to redis-server and chd, replies compared.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

#[derive(Parser)]
#[command(about = "Differential test of chd's RESP endpoint against redis-server")]
struct Args {
    /// Seed of the run [default: random, printed].
    #[arg(long)]
    seed: Option<u64>,
    /// Commands to compare.
    #[arg(long, default_value_t = 1_000_000)]
    commands: u64,
    /// First sequence number (to replay one sequence of a seed).
    #[arg(long, default_value_t = 0)]
    first_sequence: u64,
    /// Sequences to run at most.
    #[arg(long)]
    sequences: Option<u64>,
    /// Commands per sequence (the unit that is shrunk).
    #[arg(long, default_value_t = 300)]
    sequence_len: usize,
    /// Requests pipelined at once.
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// No values of megabytes.
    #[arg(long)]
    no_huge: bool,
    /// Report a divergence as found, without shrinking it.
    #[arg(long)]
    no_shrink: bool,
    /// Stop after this many divergences.
    #[arg(long, default_value_t = 1)]
    max_divergences: usize,
    /// The chd binary to start [default: `chd` next to this binary].
    #[arg(long)]
    chd: Option<PathBuf>,
    /// The redis-server binary to start.
    #[arg(long, default_value = "redis-server")]
    redis_server: PathBuf,
    /// Use a running redis-server at this Unix socket (with --chd-socket) instead of starting both.
    #[arg(long, requires = "chd_socket")]
    redis_socket: Option<PathBuf>,
    /// Use a running chd at this RESP socket (with --redis-socket).
    #[arg(long, requires = "redis_socket")]
    chd_socket: Option<PathBuf>,
}

fn main() -> ExitCode {
    let a = Args::parse();
    let mut cfg = chd_difftest::Config::new(a.seed.unwrap_or_else(chd_difftest::random_seed), a.commands);
    cfg.first_sequence = a.first_sequence;
    cfg.sequences = a.sequences;
    cfg.sequence_len = a.sequence_len.max(1);
    cfg.batch = a.batch.clamp(1, 120);
    cfg.huge = !a.no_huge;
    cfg.shrink = !a.no_shrink;
    cfg.max_divergences = a.max_divergences.max(1);
    cfg.progress = Some(Duration::from_secs(30));
    let result = match (&a.redis_socket, &a.chd_socket) {
        (Some(r), Some(c)) => chd_difftest::run(&cfg, r, c),
        _ => {
            let chd = a.chd.unwrap_or_else(|| {
                std::env::current_exe().map(|p| p.with_file_name("chd")).unwrap_or_else(|_| "chd".into())
            });
            match chd_difftest::Servers::start(&a.redis_server, &chd) {
                Err(e) => Err(e),
                Ok(servers) => {
                    let r = chd_difftest::run(&cfg, &servers.redis_socket, &servers.chd_socket);
                    let stopped = servers.stop();
                    r.and_then(|s| stopped.map(|()| s))
                }
            }
        }
    };
    match result {
        Ok(s) if s.divergences.is_empty() => ExitCode::SUCCESS,
        Ok(_) => ExitCode::from(1),
        Err(e) => {
            eprintln!("chd-difftest: {e:#}");
            ExitCode::from(2)
        }
    }
}
