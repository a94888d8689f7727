//! chd: the daemon. `chd [flags]` serves; `chd check-config` validates the settings; `chd
//! worker` is how chd runs its own worker processes.

/// mimalloc instead of glibc's malloc, in chd and in its workers: sled allocates and frees on
/// every insert, chd on every request, and glibc's malloc was among the top costs of both in
/// profiles (`_int_malloc`, `malloc_consolidate`, `unlink_chunk`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use chd_daemon::config::{self, ConfigArgs, Settings};
use chd_daemon::{datadir, lifecycle, logging, worker};
use clap::{Parser, Subcommand};

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
    CheckConfig(Box<ConfigArgs>),
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

/// Validates the settings as chd's start would, also against the data dir's `cluster.json`
/// if there is one (read only, so it works beside a running chd), and prints them.
fn check_config(args: &ConfigArgs) -> anyhow::Result<()> {
    let mut settings = Settings::resolve(args)?;
    let existing = datadir::read_cluster_file(&settings.data_dir)?;
    if let Some(file) = &existing {
        for warning in settings.settle(&config::Fixed::of(file))? {
            eprintln!("chd: warning: {warning}");
        }
    }
    print!("{}", settings.render());
    if existing.is_some() {
        println!("# nodes, replicas and write_quorum are the existing data dir's");
    }
    Ok(())
}

/// `chd.1` and `chd-check-config.1` (hidden commands such as `worker` get none).
fn man_pages(dir: &std::path::Path) -> anyhow::Result<()> {
    use anyhow::Context;
    use clap::CommandFactory;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    clap_mangen::generate_to(Cli::command(), dir)
        .with_context(|| format!("cannot write man pages into {}", dir.display()))?;
    let page = dir.join("chd.1");
    let mut text = std::fs::read_to_string(&page).with_context(|| format!("cannot read {}", page.display()))?;
    text.push_str(EXTRA_SECTIONS);
    std::fs::write(&page, text).with_context(|| format!("cannot write {}", page.display()))
}

/// The sections of `chd.1` that clap does not write (roff).
const EXTRA_SECTIONS: &str = r#".SH EXAMPLES
.nf
chd                                   # 4 nodes, 3 replicas, writes acknowledged by 2
chd \-\-data\-dir /srv/chd \-\-nodes 6 \-\-engine sled
chd \-\-resp\-listen 127.0.0.1:6379      # with requirepass in the config file
chd check\-config \-\-config /etc/chd/chd.toml
systemctl enable \-\-now chd             # the packaged service
.fi
.SH "EXIT STATUS"
0 after a clean stop (SIGTERM, SIGINT, or SHUTDOWN from a Redis client on the Unix socket);
1 if chd cannot start (bad settings, another chd on the same socket or data dir, a data dir it
cannot read); a panic aborts it, and systemd starts it again.
.SH ENVIRONMENT
.TP
STATE_DIRECTORY, XDG_STATE_HOME
where the data dir is when \-\-data\-dir and data_dir are not given (chd in the first set).
.TP
CHD_SOCKET, RUNTIME_DIRECTORY, XDG_RUNTIME_DIR
where chd's socket is when \-\-socket and socket are not given.
.TP
RUST_LOG
a tracing filter that overrides log_level.
.TP
NO_COLOR
no colours in the log even on a terminal.
.TP
NOTIFY_SOCKET, WATCHDOG_USEC
set by systemd: chd reports readiness and status, and pings the watchdog.
.SH FILES
.TP
/etc/chd/chd.toml
the configuration file, read when it exists (\-\-config names another).
.TP
/var/lib/chd
the packaged service's data dir: cluster.json, nodes/<id>/ (one database per node),
quarantine/ (databases set aside, deleted only by chctl quarantine purge).
.TP
/run/chd/chd.sock, /run/chd/chd\-resp.sock
the packaged service's sockets, for chctl and for Redis clients.
.SH "SEE ALSO"
chctl(1), systemd.service(5)
"#;

fn serve(args: &ConfigArgs) -> anyhow::Result<()> {
    let settings = Settings::resolve(args)?;
    let set_log_level = logging::init(&settings.log_level, settings.log_format);
    // One thread: chd's own work per request is a few microseconds, and on a host whose cores
    // also run the workers, a second runtime thread cost more in wake-ups between threads than
    // it gave (measured: 25% less CPU per durable SET in chd). Nothing in chd blocks a task for
    // long: workers are spawned from their own thread and all node I/O is in the workers.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(lifecycle::run(settings, lifecycle::Reload { args: args.clone(), set_log_level }))
}
