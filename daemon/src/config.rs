//! chd's settings: command-line flags over an optional TOML file over defaults.
//!
//! Every flag has a key of the same name in the file (`--write-quorum` is `write_quorum`).
//! Everything is validated before chd creates or touches anything, and each error names the key
//! at fault.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use chd_data::proto::EngineKind;
use serde::Deserialize;

pub const DEFAULT_CONFIG: &str = "/etc/chd/chd.toml";
/// sled's page cache per worker, in MiB. sled's own default is 1 GiB per database, so four
/// workers could grow past 4 GiB; with 64 MiB each, chd holding 1M keys of 100 B stays well
/// under 1 GiB resident in all (cold records are read from the kernel's page cache).
pub const DEFAULT_CACHE_MIB: u64 = 32;
/// chd's cache of current values ([`crate::cache`]): 256 MiB holds about a million keys of
/// 100 bytes, so a working set of that size is read from memory.
pub const DEFAULT_READ_CACHE_MIB: u64 = 256;

#[derive(Debug, Default, Clone, clap::Args)]
pub struct ConfigArgs {
    /// Config file [default: /etc/chd/chd.toml, if it exists].
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Data directory [default: $STATE_DIRECTORY, else $XDG_STATE_HOME/chd, else ~/.local/state/chd].
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Socket path [default: $CHD_SOCKET, else $RUNTIME_DIRECTORY/chd.sock, else $XDG_RUNTIME_DIR/chd.sock, else /tmp/chd-$UID/chd.sock].
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Number of nodes of a new data dir [default: 4].
    #[arg(long, value_name = "N")]
    pub nodes: Option<u32>,
    /// Replicas of each key [default: 3].
    #[arg(long, value_name = "R")]
    pub replicas: Option<u32>,
    /// Replicas that must have a write on disk before it is acknowledged [default: 2].
    #[arg(long, value_name = "W")]
    pub write_quorum: Option<u32>,
    /// Permissions of the socket file, in octal [default: 0600].
    #[arg(long, value_name = "MODE")]
    pub socket_mode: Option<String>,
    /// Group whose members may use chd, besides root and chd's own user [default: none].
    #[arg(long, value_name = "GROUP")]
    pub allowed_group: Option<String>,
    /// Log level: error, warn, info, debug or trace [default: info; RUST_LOG, a tracing
    /// filter, overrides].
    #[arg(long, value_name = "LEVEL")]
    pub log_level: Option<String>,
    /// Log line format: text (one line per event) or json (one JSON object per line)
    /// [default: text].
    #[arg(long, value_name = "FORMAT")]
    pub log_format: Option<String>,
    /// Compare all replicas in the background after start and copy what differs, healing
    /// what a crash left behind [default: true].
    #[arg(long, value_name = "BOOL")]
    pub startup_repair: Option<bool>,
    /// Socket of the Redis-protocol (RESP) endpoint, or `none` [default: chd-resp.sock next to
    /// the socket].
    #[arg(long, value_name = "PATH|none")]
    pub resp_socket: Option<String>,
    /// Also serve RESP over TCP on this loopback address, e.g. 127.0.0.1:6379 (needs
    /// `requirepass` in the config file) [default: off].
    #[arg(long, value_name = "ADDR")]
    pub resp_listen: Option<String>,
    /// Serve Prometheus metrics (GET /metrics) over HTTP on this loopback address, e.g.
    /// 127.0.0.1:9646 [default: off].
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<String>,
    /// How long a deleted key's tombstone is kept before it may be purged, like 10d or 12h
    /// (Cassandra's gc_grace_seconds); purged only once every replica holds it [default: 10d].
    #[arg(long, value_name = "D")]
    pub tombstone_grace: Option<String>,
    /// Memory chd and its workers may hold before new keys are refused, like 512MiB or 4GiB; 0
    /// for no limit [default: half the machine's memory].
    #[arg(long, value_name = "SIZE")]
    pub max_memory: Option<String>,
    /// The storage engine of new node databases: append or sled. A database keeps the engine
    /// it was created with; `chctl node rebuild ID --engine E` converts one [default: append].
    #[arg(long, value_name = "ENGINE")]
    pub engine: Option<EngineKind>,
    /// Page cache of each worker's sled database, in MiB (the append log reads through the
    /// kernel's page cache) [default: 32].
    #[arg(long, value_name = "MIB")]
    pub cache_mib: Option<u64>,
    /// chd's cache of the current values of recently used keys, in MiB; 0 turns it off
    /// [default: 256].
    #[arg(long, value_name = "MIB")]
    pub read_cache_mib: Option<u64>,
    /// For tests only (hidden, not in the config file): the workers' log segment size in
    /// bytes (see [`crate::storage::append::Shape`]).
    #[arg(long, hide = true, value_name = "BYTES")]
    pub log_segment_bytes: Option<u64>,
    /// For tests only (hidden, not in the config file): the fewest keys added to or removed
    /// from a worker's index that rebuild it.
    #[arg(long, hide = true, value_name = "N")]
    pub index_rebuild_min: Option<usize>,
}

/// The config file. Unknown keys are errors, so a typo is not silently ignored.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    data_dir: Option<PathBuf>,
    socket: Option<PathBuf>,
    nodes: Option<u32>,
    replicas: Option<u32>,
    write_quorum: Option<u32>,
    socket_mode: Option<String>,
    allowed_group: Option<String>,
    log_level: Option<String>,
    log_format: Option<String>,
    startup_repair: Option<bool>,
    resp_socket: Option<String>,
    resp_listen: Option<String>,
    metrics_listen: Option<String>,
    engine: Option<String>,
    max_memory: Option<String>,
    cache_mib: Option<u64>,
    read_cache_mib: Option<u64>,
    /// Allows `resp_listen` on an address other than loopback.
    resp_listen_any: Option<bool>,
    /// The password RESP clients give with AUTH (required on TCP). In the file only, so that it
    /// does not show in the process list.
    requirepass: Option<String>,
    tombstone_grace: Option<String>,
}

/// How chd writes its log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One line of text per event (no colour unless stderr is a terminal and `NO_COLOR` is unset).
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

impl LogFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

/// The levels `log_level` takes. A tracing filter would accept any word as a target name
/// (`verbose` would mean "everything from the module `verbose`", so nothing at all, errors
/// included); filters stay available through `RUST_LOG`.
pub const LOG_LEVELS: [&str; 5] = ["error", "warn", "info", "debug", "trace"];

fn check_log_level(level: &str) -> anyhow::Result<()> {
    if LOG_LEVELS.contains(&level) {
        Ok(())
    } else {
        bail!(
            "log_level: {level:?} is not a level; use one of {} (RUST_LOG takes a full filter)",
            LOG_LEVELS.join(", ")
        )
    }
}

/// What an existing data dir has fixed, as its `cluster.json` says.
#[derive(Debug, Clone, PartialEq)]
pub struct Fixed {
    pub replicas: u32,
    /// W as stored; `None` in files written before W was fixed with the data dir.
    pub write_quorum: Option<u32>,
    /// Its number of nodes (and the number after the change in progress, if any).
    pub nodes: u32,
    pub nodes_after_change: Option<u32>,
}

impl Fixed {
    pub fn of(file: &crate::datadir::ClusterFile) -> Fixed {
        Fixed {
            replicas: file.ring.replicas(),
            write_quorum: file.write_quorum,
            nodes: file.ring.nodes().len() as u32,
            nodes_after_change: file.transition.as_ref().map(|t| t.target.nodes().len() as u32),
        }
    }
}

/// A password; never printed.
#[derive(Clone, PartialEq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub config_file: Option<PathBuf>,
    pub data_dir: PathBuf,
    pub socket: PathBuf,
    pub nodes: u32,
    /// Whether `nodes` was set explicitly (it must then match an existing data dir).
    pub nodes_explicit: bool,
    pub replicas: u32,
    /// Whether `replicas` was set explicitly (it must then match an existing data dir).
    pub replicas_explicit: bool,
    pub write_quorum: u32,
    /// Whether `write_quorum` was set explicitly (else an existing data dir's own W applies).
    pub write_quorum_explicit: bool,
    pub socket_mode: u32,
    pub allowed_group: Option<(String, u32)>,
    pub log_level: String,
    pub log_format: LogFormat,
    pub startup_repair: bool,
    /// The RESP endpoint's Unix socket; `None` when turned off.
    pub resp_socket: Option<PathBuf>,
    /// The RESP endpoint's TCP address, if any.
    pub resp_listen: Option<std::net::SocketAddr>,
    pub resp_listen_any: bool,
    pub requirepass: Option<Secret>,
    /// The Prometheus endpoint's address (loopback only), if any.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// See [`crate::tombstones`].
    pub tombstone_grace: std::time::Duration,
    /// The engine of new node databases.
    pub engine: EngineKind,
    /// See [`crate::memory`]; bytes, 0 for no budget.
    pub max_memory: u64,
    /// Page cache of each worker's sled database, in MiB.
    pub cache_mib: u64,
    /// chd's cache of current values, in MiB (0: off).
    pub read_cache_mib: u64,
    /// The workers' log sizes (the defaults, unless a test set them).
    pub log_shape: crate::storage::append::Shape,
}

impl Settings {
    pub fn resolve(args: &ConfigArgs) -> anyhow::Result<Settings> {
        let (config_file, file) = load_file(args.config.as_deref())?;
        Settings::over_file(args, config_file, file)
    }

    /// What [`Settings::resolve`] gives once it has read `text` from the config file `path`
    /// (`args.config` is not read): the parse and the checks of a file a user wrote, callable on
    /// text (the fuzz target `config` drives it).
    pub fn resolve_text(args: &ConfigArgs, path: &Path, text: &str) -> anyhow::Result<Settings> {
        let file = parse_file(path, text)?;
        Settings::over_file(args, Some(path.to_path_buf()), file)
    }

    fn over_file(args: &ConfigArgs, config_file: Option<PathBuf>, file: FileConfig) -> anyhow::Result<Settings> {
        let data_dir = match args.data_dir.clone().or(file.data_dir) {
            Some(d) => d,
            None => default_data_dir()?,
        };
        let socket = args.socket.clone().or(file.socket).unwrap_or_else(chd_data::paths::default_socket);
        let nodes_explicit = args.nodes.is_some() || file.nodes.is_some();
        let nodes = args.nodes.or(file.nodes).unwrap_or(4);
        let replicas_explicit = args.replicas.is_some() || file.replicas.is_some();
        let replicas = args.replicas.or(file.replicas).unwrap_or(3);
        let write_quorum_explicit = args.write_quorum.is_some() || file.write_quorum.is_some();
        let write_quorum = args.write_quorum.or(file.write_quorum).unwrap_or(2);
        let mode = args.socket_mode.clone().or(file.socket_mode).unwrap_or_else(|| "0600".into());
        let socket_mode = u32::from_str_radix(mode.trim_start_matches("0o"), 8)
            .ok()
            .filter(|m| *m <= 0o777)
            .with_context(|| format!("socket_mode: {mode:?} is not an octal mode like \"0660\""))?;
        let allowed_group = match args.allowed_group.clone().or(file.allowed_group) {
            None => None,
            Some(name) => {
                let group = nix::unistd::Group::from_name(&name)
                    .ok()
                    .flatten()
                    .with_context(|| format!("allowed_group: no group named {name:?}"))?;
                Some((name, group.gid.as_raw()))
            }
        };
        let log_level = args.log_level.clone().or(file.log_level).unwrap_or_else(|| "info".into());
        check_log_level(&log_level)?;
        let log_format = match args.log_format.clone().or(file.log_format).as_deref() {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(other) => bail!("log_format: {other:?} is not a format; use text or json"),
        };
        let startup_repair = args.startup_repair.or(file.startup_repair).unwrap_or(true);
        let resp_socket = match args.resp_socket.clone().or(file.resp_socket) {
            Some(s) if s == "none" => None,
            Some(s) => Some(PathBuf::from(s)),
            None => default_resp_socket(&socket),
        };
        let resp_listen_any = file.resp_listen_any.unwrap_or(false);
        let requirepass = file.requirepass.map(Secret);
        let resp_listen = match args.resp_listen.clone().or(file.resp_listen) {
            None => None,
            Some(a) if a == "none" => None,
            Some(a) => {
                let addr: std::net::SocketAddr =
                    a.parse().with_context(|| format!("resp_listen: {a:?} is not an address like 127.0.0.1:6379"))?;
                if requirepass.as_ref().is_none_or(|p| p.0.is_empty()) {
                    bail!("resp_listen: TCP needs a password; set requirepass in the config file");
                }
                if !addr.ip().is_loopback() && !resp_listen_any {
                    bail!("resp_listen: {addr} is not a loopback address; set resp_listen_any = true in the config file to allow it");
                }
                Some(addr)
            }
        };
        let metrics_listen = match args.metrics_listen.clone().or(file.metrics_listen) {
            None => None,
            Some(a) if a == "none" => None,
            Some(a) => {
                let addr: std::net::SocketAddr = a
                    .parse()
                    .with_context(|| format!("metrics_listen: {a:?} is not an address like 127.0.0.1:9646"))?;
                // The endpoint has no authentication: only this host's users may reach it.
                if !addr.ip().is_loopback() {
                    bail!("metrics_listen: {addr} is not a loopback address; metrics are served on loopback only");
                }
                Some(addr)
            }
        };
        let grace = args.tombstone_grace.clone().or(file.tombstone_grace).unwrap_or_else(|| "10d".into());
        let tombstone_grace = chd_data::duration::parse(&grace).map_err(|e| anyhow::anyhow!("tombstone_grace: {e}"))?;
        let engine = match (args.engine, &file.engine) {
            (Some(e), _) => e,
            (None, Some(name)) => name.parse().map_err(|e| anyhow::anyhow!("engine: {e}"))?,
            (None, None) => EngineKind::default(),
        };
        let max_memory = match args.max_memory.as_ref().or(file.max_memory.as_ref()) {
            Some(text) => crate::memory::parse_size(text).map_err(|e| anyhow::anyhow!("max_memory: {e}"))?,
            None => crate::memory::default_budget(),
        };
        if max_memory != 0 && max_memory < crate::memory::MIN_BUDGET {
            bail!(
                "max_memory: {} is below the smallest budget, 64MiB (0 turns it off)",
                crate::memory::render_size(max_memory)
            );
        }
        let cache_mib = args.cache_mib.or(file.cache_mib).unwrap_or(DEFAULT_CACHE_MIB);
        if cache_mib == 0 || cache_mib > 1 << 20 {
            bail!("cache_mib: {cache_mib} is not between 1 and 1048576 (MiB)");
        }
        let mut log_shape = crate::storage::append::Shape::default();
        if let Some(bytes) = args.log_segment_bytes {
            if !(4096..=1 << 30).contains(&bytes) {
                bail!("log_segment_bytes: {bytes} is not between 4096 and 1073741824");
            }
            log_shape.segment_bytes = bytes;
        }
        if let Some(n) = args.index_rebuild_min {
            if n == 0 {
                bail!("index_rebuild_min: must be at least 1");
            }
            log_shape.rebuild_min = n;
        }
        let read_cache_mib = args.read_cache_mib.or(file.read_cache_mib).unwrap_or(DEFAULT_READ_CACHE_MIB);
        if read_cache_mib > 1 << 20 {
            bail!("read_cache_mib: {read_cache_mib} is over 1048576 (MiB)");
        }
        if resp_socket.as_ref() == Some(&socket) {
            bail!("resp_socket: must differ from socket");
        }

        if nodes == 0 {
            bail!("nodes: must be at least 1");
        }
        if replicas == 0 {
            bail!("replicas: must be at least 1");
        }
        if write_quorum == 0 {
            bail!("write_quorum: must be at least 1");
        }
        if write_quorum > replicas {
            bail!("write_quorum: {write_quorum} is more than replicas ({replicas}); a write cannot be on more replicas than exist");
        }
        if replicas > nodes {
            bail!("replicas: {replicas} is more than nodes ({nodes}); each replica needs its own node");
        }
        Ok(Settings {
            config_file,
            data_dir,
            socket,
            nodes,
            nodes_explicit,
            replicas,
            replicas_explicit,
            write_quorum,
            write_quorum_explicit,
            socket_mode,
            allowed_group,
            log_level,
            log_format,
            startup_repair,
            resp_socket,
            resp_listen,
            resp_listen_any,
            requirepass,
            metrics_listen,
            tombstone_grace,
            engine,
            max_memory,
            cache_mib,
            read_cache_mib,
            log_shape,
        })
    }

    /// Takes what an existing data dir fixes, refusing any setting chd could not honour on it.
    /// Shared by chd's start and `chd check-config`, so that the check approves exactly what
    /// chd accepts. The data dir's R and W win over the defaults; an explicit setting must
    /// agree with them, except that W may be lowered (reads then ask more replicas; the lower W
    /// is kept from then on). `nodes` only sizes a new data dir: an explicit one that differs
    /// from the data dir's is not refused, because membership changes at run time (`chctl node
    /// add/remove`) and a chd restarted by systemd after a crash must come back whatever the
    /// config file says; it is ignored with a warning (returned, for the caller to print or
    /// log) that says how to change the number of nodes.
    pub fn settle(&mut self, fixed: &Fixed) -> anyhow::Result<Vec<String>> {
        let mut warnings = Vec::new();
        let dir = self.data_dir.display();
        let r = fixed.replicas;
        if self.replicas_explicit && self.replicas != r {
            bail!(
                "replicas: data dir {dir} was created with {r} replicas and R cannot change; remove `replicas` from the settings or set it to {r}"
            );
        }
        self.replicas = r;
        let n = fixed.nodes;
        if self.nodes_explicit && self.nodes != n && fixed.nodes_after_change != Some(self.nodes) {
            warnings.push(format!(
                "nodes = {} is ignored: data dir {dir} has {n} nodes, and `nodes` only sizes a new data dir. Change the number of nodes with `chctl node add --count N` or `chctl node remove ID`; remove `nodes` from the settings or set it to {n} to silence this",
                self.nodes
            ));
        }
        self.nodes = n;
        let w = match fixed.write_quorum {
            None => self.write_quorum,
            Some(stored) if !self.write_quorum_explicit => stored,
            Some(stored) if self.write_quorum > stored => bail!(
                "write_quorum: data dir {dir} uses {stored}; raising it is not supported (reads ask R-W+1 replicas, which would miss writes acknowledged by only {stored}); lowering it is"
            ),
            Some(_) => self.write_quorum,
        };
        if w > r {
            bail!("write_quorum: {w} is more than the data dir's {r} replicas");
        }
        self.write_quorum = w;
        Ok(warnings)
    }

    /// The settings that differ between `self` (running) and `new` (just read again), each
    /// named as its key, split into those applied at once and those that need a restart.
    /// Only the log level is applied live: the others are bound to resources opened at start
    /// (the socket, its mode and group, the data dir and its quorum) or only matter then.
    pub fn changes(&self, new: &Settings) -> (Vec<&'static str>, Vec<&'static str>) {
        let mut live = Vec::new();
        let mut restart = Vec::new();
        if self.log_level != new.log_level {
            live.push("log_level");
        }
        for (key, differs) in [
            ("data_dir", self.data_dir != new.data_dir),
            ("socket", self.socket != new.socket),
            ("nodes", self.nodes != new.nodes),
            ("replicas", self.replicas != new.replicas),
            ("write_quorum", self.write_quorum != new.write_quorum),
            ("socket_mode", self.socket_mode != new.socket_mode),
            ("allowed_group", self.allowed_group != new.allowed_group),
            ("log_format", self.log_format != new.log_format),
            ("startup_repair", self.startup_repair != new.startup_repair),
            ("resp_socket", self.resp_socket != new.resp_socket),
            ("resp_listen", self.resp_listen != new.resp_listen),
            ("metrics_listen", self.metrics_listen != new.metrics_listen),
            ("tombstone_grace", self.tombstone_grace != new.tombstone_grace),
            ("engine", self.engine != new.engine),
            ("max_memory", self.max_memory != new.max_memory),
            ("cache_mib", self.cache_mib != new.cache_mib),
            ("read_cache_mib", self.read_cache_mib != new.read_cache_mib),
        ] {
            if differs {
                restart.push(key);
            }
        }
        (live, restart)
    }

    /// The effective settings, as `chd --check-config` prints them (valid TOML).
    pub fn render(&self) -> String {
        let q = |p: &Path| toml::Value::String(p.display().to_string()).to_string();
        let mut s = String::new();
        match &self.config_file {
            Some(f) => s += &format!("# read from {}\n", f.display()),
            None => s += "# no config file; flags and defaults only\n",
        }
        s += &format!("data_dir = {}\n", q(&self.data_dir));
        s += &format!("socket = {}\n", q(&self.socket));
        s += &format!("nodes = {}\n", self.nodes);
        s += &format!("replicas = {}\n", self.replicas);
        s += &format!("write_quorum = {}\n", self.write_quorum);
        s += &format!("socket_mode = \"{:04o}\"\n", self.socket_mode);
        match &self.allowed_group {
            Some((name, gid)) => s += &format!("allowed_group = \"{name}\" # gid {gid}\n"),
            None => s += "# allowed_group: none\n",
        }
        s += &format!("log_level = \"{}\"\n", self.log_level);
        s += &format!("log_format = \"{}\"\n", self.log_format.as_str());
        s += &format!("startup_repair = {}\n", self.startup_repair);
        match &self.resp_socket {
            Some(p) => s += &format!("resp_socket = {}\n", q(p)),
            None => s += "resp_socket = \"none\"\n",
        }
        match &self.resp_listen {
            Some(a) => s += &format!("resp_listen = \"{a}\"\n"),
            None => s += "# resp_listen: off\n",
        }
        s += &format!("resp_listen_any = {}\n", self.resp_listen_any);
        match &self.metrics_listen {
            Some(a) => s += &format!("metrics_listen = \"{a}\"\n"),
            None => s += "# metrics_listen: off\n",
        }
        s += &format!("tombstone_grace = \"{}\"\n", chd_data::duration::render(self.tombstone_grace));
        s += &format!("engine = \"{}\"\n", self.engine);
        s += &format!("max_memory = \"{}\"\n", crate::memory::render_size(self.max_memory));
        s += &format!("cache_mib = {}\n", self.cache_mib);
        s += &format!("read_cache_mib = {}\n", self.read_cache_mib);
        if self.requirepass.is_some() {
            s += "# requirepass: set (not shown)\n";
        }
        s
    }
}

/// `<stem>-resp.sock` next to the socket (`chd.sock` gives `chd-resp.sock`), so that two chd
/// with sockets in one directory get two RESP sockets. Off, rather than a failed start, when
/// that path would not fit a Unix socket address (107 bytes).
fn default_resp_socket(socket: &Path) -> Option<PathBuf> {
    let stem = socket.file_stem()?.to_string_lossy();
    let p = socket.with_file_name(format!("{stem}-resp.sock"));
    (p.as_os_str().len() <= 107).then_some(p)
}

fn load_file(explicit: Option<&Path>) -> anyhow::Result<(Option<PathBuf>, FileConfig)> {
    let path = match explicit {
        Some(p) => p.to_path_buf(),
        None if Path::new(DEFAULT_CONFIG).exists() => PathBuf::from(DEFAULT_CONFIG),
        None => return Ok((None, FileConfig::default())),
    };
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read config file {}", path.display()))?;
    let file = parse_file(&path, &text)?;
    Ok((Some(path), file))
}

fn parse_file(path: &Path, text: &str) -> anyhow::Result<FileConfig> {
    toml::from_str(text).map_err(|e| anyhow::anyhow!("config file {}: {e}", path.display()))
}

fn default_data_dir() -> anyhow::Result<PathBuf> {
    let var = |v: &str| std::env::var(v).ok().filter(|s| !s.is_empty());
    if let Some(dirs) = var("STATE_DIRECTORY") {
        return Ok(PathBuf::from(dirs.split(':').next().unwrap_or(&dirs)));
    }
    if let Some(d) = var("XDG_STATE_HOME") {
        return Ok(PathBuf::from(d).join("chd"));
    }
    match var("HOME") {
        Some(h) => Ok(PathBuf::from(h).join(".local/state/chd")),
        None => {
            bail!("data_dir: no default (neither STATE_DIRECTORY, XDG_STATE_HOME nor HOME is set); pass --data-dir")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(f: impl FnOnce(&mut ConfigArgs)) -> ConfigArgs {
        let mut a = ConfigArgs {
            config: Some(PathBuf::from("/dev/null")),
            data_dir: Some("/tmp/x".into()),
            socket: Some("/tmp/x.sock".into()),
            ..Default::default()
        };
        f(&mut a);
        a
    }

    #[test]
    fn only_the_log_level_is_applied_without_a_restart() {
        let old = Settings::resolve(&args(|_| {})).unwrap();
        let new = Settings::resolve(&args(|a| {
            a.log_level = Some("debug".into());
            a.socket_mode = Some("0660".into());
            a.nodes = Some(5);
        }))
        .unwrap();
        assert_eq!(old.changes(&new), (vec!["log_level"], vec!["nodes", "socket_mode"]));
        assert_eq!(old.changes(&old), (vec![], vec![]));
    }

    #[test]
    fn defaults_are_valid() {
        let s = Settings::resolve(&args(|_| {})).unwrap();
        assert_eq!((s.nodes, s.replicas, s.write_quorum, s.socket_mode), (4, 3, 2, 0o600));
    }

    #[test]
    fn bad_combinations_are_refused() {
        let err = |f: fn(&mut ConfigArgs)| Settings::resolve(&args(f)).unwrap_err().to_string();
        assert!(err(|a| a.write_quorum = Some(4)).starts_with("write_quorum"));
        assert!(err(|a| a.replicas = Some(5)).starts_with("replicas"));
        assert!(err(|a| a.nodes = Some(0)).starts_with("nodes"));
        assert!(err(|a| a.write_quorum = Some(0)).starts_with("write_quorum"));
        assert!(err(|a| a.socket_mode = Some("rw".into())).starts_with("socket_mode"));
        assert!(err(|a| a.cache_mib = Some(0)).starts_with("cache_mib"));
        assert!(err(|a| a.log_segment_bytes = Some(100)).starts_with("log_segment_bytes"));
        assert!(err(|a| a.index_rebuild_min = Some(0)).starts_with("index_rebuild_min"));
    }

    #[test]
    fn the_log_has_its_production_sizes_unless_a_test_shrinks_them() {
        use crate::storage::append::{Shape, REBUILD_MIN, SEGMENT_BYTES};
        let s = Settings::resolve(&args(|_| {})).unwrap();
        assert_eq!(s.log_shape, Shape { segment_bytes: SEGMENT_BYTES, rebuild_min: REBUILD_MIN });
        let s = Settings::resolve(&args(|a| {
            a.log_segment_bytes = Some(65536);
            a.index_rebuild_min = Some(32);
        }))
        .unwrap();
        assert_eq!(s.log_shape, Shape { segment_bytes: 65536, rebuild_min: 32 });
    }

    #[test]
    fn file_keys_apply_and_flags_override_them() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("chd.toml");
        std::fs::write(&f, "nodes = 6\nreplicas = 2\nwrite_quorum = 1\nsocket_mode = \"0660\"\ncache_mib = 32\n")
            .unwrap();
        let s = Settings::resolve(&args(|a| {
            a.config = Some(f.clone());
            a.write_quorum = Some(2);
        }))
        .unwrap();
        assert_eq!((s.nodes, s.replicas, s.write_quorum, s.socket_mode), (6, 2, 2, 0o660));
        assert_eq!(s.cache_mib, 32);
        assert_eq!(Settings::resolve(&args(|_| {})).unwrap().cache_mib, DEFAULT_CACHE_MIB);

        // The rendered settings read back as the same settings.
        std::fs::write(&f, s.render()).unwrap();
        let again = Settings::resolve(&ConfigArgs { config: Some(f.clone()), ..Default::default() }).unwrap();
        assert_eq!(again.data_dir, s.data_dir);
        assert_eq!((again.nodes, again.replicas, again.write_quorum, again.cache_mib), (6, 2, 2, 32));

        std::fs::write(&f, "engine = \"sled\"\n").unwrap();
        let e = Settings::resolve(&args(|a| a.config = Some(f.clone()))).unwrap();
        assert_eq!(e.engine, EngineKind::Sled);
        assert!(e.render().contains("engine = \"sled\""));
        let e = Settings::resolve(&args(|a| {
            a.config = Some(f.clone());
            a.engine = Some(EngineKind::Append);
        }))
        .unwrap();
        assert_eq!(e.engine, EngineKind::Append);
        std::fs::write(&f, "engine = \"lmdb\"\n").unwrap();
        let err = Settings::resolve(&args(|a| a.config = Some(f.clone()))).unwrap_err().to_string();
        assert!(err.starts_with("engine: unknown engine \"lmdb\""), "{err}");
    }

    #[test]
    fn resp_endpoint_settings() {
        let s = Settings::resolve(&args(|_| {})).unwrap();
        assert_eq!(s.resp_socket, Some(PathBuf::from("/tmp/x-resp.sock")));
        assert_eq!(s.resp_listen, None);
        let s = Settings::resolve(&args(|a| a.resp_socket = Some("none".into()))).unwrap();
        assert_eq!(s.resp_socket, None);
        let s = Settings::resolve(&args(|a| a.socket = Some("/run/x/chd-7.sock".into()))).unwrap();
        assert_eq!(s.resp_socket, Some(PathBuf::from("/run/x/chd-7-resp.sock")));
        let long = format!("/{}/chd.sock", "d".repeat(96));
        let s = Settings::resolve(&args(|a| a.socket = Some(long.into()))).unwrap();
        assert_eq!(s.resp_socket, None, "a default that cannot be bound turns RESP off");
        let e = Settings::resolve(&args(|a| a.resp_listen = Some("127.0.0.1:6379".into()))).unwrap_err();
        assert!(e.to_string().contains("requirepass"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("chd.toml");
        std::fs::write(&f, "requirepass = \"s3cr3t-Zq9\"\n").unwrap();
        let with = |addr: &str| {
            let f = f.clone();
            let addr = addr.to_string();
            Settings::resolve(&args(move |a| {
                a.config = Some(f);
                a.resp_listen = Some(addr);
            }))
        };
        assert_eq!(with("127.0.0.1:6379").unwrap().resp_listen, Some("127.0.0.1:6379".parse().unwrap()));
        let e = with("0.0.0.0:6379").unwrap_err().to_string();
        assert!(e.contains("loopback"), "{e}");
        std::fs::write(&f, "requirepass = \"s3cr3t-Zq9\"\nresp_listen_any = true\n").unwrap();
        assert!(with("0.0.0.0:6379").is_ok());
        assert!(!with("127.0.0.1:1").unwrap().render().contains("s3cr3t-Zq9"));
    }

    #[test]
    fn metrics_listen_is_off_by_default_and_loopback_only() {
        assert_eq!(Settings::resolve(&args(|_| {})).unwrap().metrics_listen, None);
        let s = Settings::resolve(&args(|a| a.metrics_listen = Some("127.0.0.1:9646".into()))).unwrap();
        assert_eq!(s.metrics_listen, Some("127.0.0.1:9646".parse().unwrap()));
        assert!(s.render().contains("metrics_listen = \"127.0.0.1:9646\""));
        assert!(Settings::resolve(&args(|a| a.metrics_listen = Some("[::1]:9646".into()))).is_ok());
        for bad in ["0.0.0.0:9646", "192.168.1.1:9646"] {
            let e = Settings::resolve(&args(|a| a.metrics_listen = Some(bad.into()))).unwrap_err().to_string();
            assert!(e.contains("loopback"), "{e}");
        }
        let e = Settings::resolve(&args(|a| a.metrics_listen = Some("localhost".into()))).unwrap_err().to_string();
        assert!(e.starts_with("metrics_listen"), "{e}");
    }

    #[test]
    fn unknown_keys_and_bad_values_name_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("chd.toml");
        for (text, key) in [("nodez = 3\n", "nodez"), ("nodes = \"four\"\n", "nodes")] {
            std::fs::write(&f, text).unwrap();
            let e = Settings::resolve(&args(|a| a.config = Some(f.clone()))).unwrap_err().to_string();
            assert!(e.contains(key), "{e}");
        }
    }

    #[test]
    fn an_existing_data_dir_fixes_r_w_and_the_node_count() {
        let fixed = Fixed { replicas: 3, write_quorum: Some(2), nodes: 4, nodes_after_change: Some(5) };
        let settle = |f: fn(&mut ConfigArgs)| {
            let mut s = Settings::resolve(&args(f)).unwrap();
            s.settle(&fixed).map(|_| (s.nodes, s.replicas, s.write_quorum)).map_err(|e| e.to_string())
        };
        assert_eq!(settle(|_| {}), Ok((4, 3, 2)));
        assert_eq!(settle(|a| a.write_quorum = Some(1)), Ok((4, 3, 1)), "lowering W is allowed");
        assert_eq!(settle(|a| a.nodes = Some(5)), Ok((4, 3, 2)), "the count after the change in progress");
        assert!(settle(|a| a.replicas = Some(2)).unwrap_err().starts_with("replicas: "));
        assert!(settle(|a| a.write_quorum = Some(3)).unwrap_err().contains("raising it is not supported"));
        assert_eq!(settle(|a| a.nodes = Some(7)), Ok((4, 3, 2)), "a differing node count is ignored");
        let mut s = Settings::resolve(&args(|a| a.nodes = Some(7))).unwrap();
        let warnings = s.settle(&fixed).unwrap();
        assert!(warnings.len() == 1 && warnings[0].contains("chctl node add --count N"), "{warnings:?}");
        assert!(Settings::resolve(&args(|_| {})).unwrap().settle(&fixed).unwrap().is_empty());
    }

    #[test]
    fn log_level_is_a_level_not_any_word() {
        for ok in LOG_LEVELS {
            assert!(Settings::resolve(&args(|a| a.log_level = Some(ok.into()))).is_ok());
        }
        let e = Settings::resolve(&args(|a| a.log_level = Some("verbose".into()))).unwrap_err().to_string();
        assert!(e.starts_with("log_level: \"verbose\" is not a level"), "{e}");
        let e = Settings::resolve(&args(|a| a.log_format = Some("xml".into()))).unwrap_err().to_string();
        assert!(e.starts_with("log_format"), "{e}");
    }
}
