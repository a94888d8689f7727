//! chd: the daemon. `chd [flags]` serves; `chd check-config` validates the settings; `chd
//! worker` is how chd runs its own worker processes.

mod cluster;
mod config;
mod coordinator;
mod datadir;
mod frame;
mod layout;
mod membership;
mod repair;
mod resp;
mod scan;
mod server;
mod storage;
mod supervisor;
mod versions;
mod worker;

use clap::{Parser, Subcommand};
use config::{ConfigArgs, Settings};

#[derive(Parser)]
#[command(name = "chd", version, about = "A crash-safe, replicated key-value daemon")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    config: ConfigArgs,
    /// Validate the settings, print the effective ones, and exit.
    #[arg(long)]
    check_config: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Validate the settings, print the effective ones, and exit.
    CheckConfig(ConfigArgs),
    /// Run one worker process (chd starts these itself).
    #[command(hide = true)]
    Worker(worker::WorkerArgs),
    /// Write the man page of chd into DIR (for packaging), generated from these definitions.
    #[command(hide = true)]
    Man {
        /// Directory for the pages (created if missing).
        #[arg(long, value_name = "DIR")]
        out: std::path::PathBuf,
    },
}

fn main() {
    // A panic leaves no half-updated state behind to serve from: the process ends, and the
    // supervisor (chd for a worker, systemd for chd) starts a clean one.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default_hook(info);
        std::process::abort();
    }));
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Worker(args)) => worker::run(args),
        Some(Command::CheckConfig(args)) => check_config(&args),
        Some(Command::Man { out }) => man_pages(&out),
        None if cli.check_config => check_config(&cli.config),
        None => serve(&cli.config),
    };
    if let Err(e) = result {
        eprintln!("chd: {e:#}");
        std::process::exit(1);
    }
}

fn check_config(args: &ConfigArgs) -> anyhow::Result<()> {
    let settings = Settings::resolve(args)?;
    print!("{}", settings.render());
    Ok(())
}

/// `chd.1` and `chd-check-config.1` (hidden commands such as `worker` get none).
fn man_pages(dir: &std::path::Path) -> anyhow::Result<()> {
    use anyhow::Context;
    use clap::CommandFactory;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    clap_mangen::generate_to(Cli::command(), dir)
        .with_context(|| format!("cannot write man pages into {}", dir.display()))
}

fn serve(args: &ConfigArgs) -> anyhow::Result<()> {
    let settings = Settings::resolve(args)?;
    let set_log_level = init_logging(&settings.log_level);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(server::run(settings, server::Reload { args: args.clone(), set_log_level }))
}

/// Starts logging; returns how to change the level later (SIGHUP), or `None` when `RUST_LOG`
/// rules it.
fn init_logging(level: &str) -> Option<server::SetLogLevel> {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let from_env = tracing_subscriber::EnvFilter::try_from_default_env().ok();
    let pinned = from_env.is_some();
    let filter = from_env.unwrap_or_else(|| tracing_subscriber::EnvFilter::new(level));
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
    // Colors only for a terminal: a log file or the journal gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_target(false).with_ansi(ansi);
    // Under systemd the journal adds its own timestamps.
    let journal = std::env::var_os("JOURNAL_STREAM").is_some();
    let registry = tracing_subscriber::registry().with(filter);
    if journal {
        registry.with(fmt.without_time().with_ansi(false)).init();
    } else {
        registry.with(fmt).init();
    }
    if pinned {
        return None;
    }
    Some(Box::new(move |level: &str| {
        let filter = tracing_subscriber::EnvFilter::try_new(level).map_err(|e| e.to_string())?;
        handle.reload(filter).map_err(|e| e.to_string())
    }))
}
