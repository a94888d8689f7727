//! chd's front: the Unix socket, its connections, and the life cycle of the daemon.

pub(crate) mod accept;
pub(crate) mod auth;
mod conn;
mod handlers;
mod http;

use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use chd_data::proto::NodeState;
use tokio::net::UnixListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{error, info, warn};

use crate::cache::ValueCache;
use crate::cluster::{Cluster, Registry};
use crate::config::Settings;
use crate::coordinator::{Coordinator, KeyLocks};
use crate::datadir::{ClusterFile, DataDir};
use crate::membership;
use crate::repair;
use crate::resp;
use crate::supervisor::{self, spawn::Spawner, Event};
use crate::versions::Versions;

pub struct Server {
    pub cluster: Arc<Cluster>,
    pub coordinator: Coordinator,
    pub spawner: Spawner,
}

/// How long startup waits for every node before serving with those that are up.
const STARTUP_WAIT: Duration = Duration::from_secs(60);
/// Clients served at once; more are refused (closed) rather than queued without bound.
const MAX_CONNECTIONS: usize = 1024;
/// How long a graceful stop waits for requests in flight.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

pub use crate::logging::SetLogLevel;

/// What SIGHUP needs: how chd was configured, and the handle on its log filter (`None` when
/// `RUST_LOG` fixes the filter).
pub struct Reload {
    pub args: crate::config::ConfigArgs,
    pub set_log_level: Option<SetLogLevel>,
}

pub async fn run(mut settings: Settings, reload: Reload) -> anyhow::Result<()> {
    // Handled from the start: a stop requested while nodes start is served once ready, and a
    // SIGHUP (the default action of which ends the process) never kills chd.
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let mut loaded = settings.clone();
    // Refuse a second chd before creating anything.
    refuse_live_socket(&settings.socket)?;
    let data = DataDir::open(&settings.data_dir, if settings.allowed_group.is_some() { 0o750 } else { 0o700 })?;
    // Absolute paths from here on: workers and status output do not depend on chd's cwd.
    settings.data_dir = data.root().to_path_buf();
    settings.socket = std::path::absolute(&settings.socket)?;
    if let Some(resp) = settings.resp_socket.clone() {
        refuse_live_socket(&resp)?;
        settings.resp_socket = Some(std::path::absolute(resp)?);
    }
    let (mut file, created) = match data.load_cluster()? {
        Some(f) => {
            // The same check as `chd check-config`: R, W and the node count are the data dir's.
            for warning in settings.settle(&crate::config::Fixed::of(&f))? {
                warn!("{warning}");
            }
            (f, false)
        }
        None => {
            let ids: Vec<u32> = (0..settings.nodes).collect();
            let ring = chd_data::Ring::new(&ids, settings.replicas, chd_data::ring::DEFAULT_PARTITIONS)?;
            let f = ClusterFile {
                format: 1,
                ring,
                transition: None,
                next_node_id: settings.nodes,
                // No node has its identity yet: a crash before they get it leaves them empty,
                // and that must not read as lost data at the next start.
                unborn: ids.iter().copied().collect(),
                write_quorum: Some(settings.write_quorum),
            };
            data.save_cluster(&f)?;
            info!(nodes = settings.nodes, replicas = settings.replicas, "created a new data dir");
            (f, true)
        }
    };
    crash_point("cluster-created");
    let write_quorum = settings.write_quorum;
    // A lowered W (or one missing from an older file) is kept from now on.
    if file.write_quorum != Some(write_quorum) {
        file.write_quorum = Some(write_quorum);
        data.save_cluster(&file)?;
    }
    if created {
        info!(write_quorum, "write quorum fixed with the data dir");
    }
    let listener = bind(&settings.socket, settings.socket_mode, settings.allowed_group.as_ref().map(|g| g.1))?;
    let socket_id = file_id(&settings.socket);
    // The RESP endpoint: the same bind (stale-socket detection, mode, group) as the main socket.
    let resp_listener = match &settings.resp_socket {
        Some(p) => Some(bind(p, settings.socket_mode, settings.allowed_group.as_ref().map(|g| g.1))?),
        None => None,
    };
    let resp_socket_id = settings.resp_socket.as_deref().and_then(file_id);
    let resp_tcp = listen_tcp(settings.resp_listen, "resp_listen").await?;
    let metrics_tcp = listen_tcp(settings.metrics_listen, "metrics_listen").await?;
    let layout = file.layout();
    let registry = Registry { next_node_id: file.next_node_id, unborn: file.unborn.clone(), write_quorum };
    let cluster = Cluster::new(settings.clone(), data, layout.clone(), registry);
    let spawner = Spawner::start(settings.cache_mib, settings.log_shape)?;
    for id in layout.members() {
        supervisor::start_node(&cluster, &spawner, id);
    }
    notify_status("starting nodes");
    wait_for_nodes(&cluster).await;
    let floor = cluster.nodes.read().expect("nodes lock").values().map(|s| s.max_version).max().unwrap_or(0);
    let versions = Versions::open(cluster.data.versions_path(), floor)?;
    let server = Arc::new(Server {
        cluster: cluster.clone(),
        coordinator: Coordinator {
            cluster: cluster.clone(),
            versions,
            locks: KeyLocks::default(),
            cache: ValueCache::new((settings.read_cache_mib as usize) << 20),
        },
        spawner,
    });
    // A change interrupted by a crash goes on; leftovers of a completed one are dropped.
    membership::resume(&cluster);
    let versions_of = server.clone();
    tokio::spawn(crate::tombstones::run(
        cluster.clone(),
        move || versions_of.coordinator.versions.issued_below(),
        settings.tombstone_grace,
    ));
    let startup_repair = settings.startup_repair;
    tokio::spawn(async move {
        membership::drop_unowned(&cluster).await;
        // A crash of chd can leave a write on W replicas but not on all R (the rest was still
        // on its way), and nodes that were down when chd stopped come back behind. Reads are
        // correct regardless (quorums intersect); this pass restores R copies of everything.
        if startup_repair {
            match repair::repair_all(&cluster).await {
                Ok(r) => info!(
                    partitions_differing = r.partitions_differing,
                    records = r.keys_repaired,
                    unreachable = %crate::logging::list(&r.unreachable_nodes),
                    "startup repair done"
                ),
                Err(e) => warn!(error = %format!("{e:#}"), "startup repair stopped; run `chctl repair`"),
            }
        }
    });

    let up = count_up(&server.cluster);
    info!(socket = %settings.socket.display(), data_dir = %settings.data_dir.display(), nodes_up = up, "chd is ready");
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    notify_status(&format!("serving; {up} nodes up"));
    start_watchdog(server.clone());

    let (stop_tx, stop_rx) = watch::channel(false);
    let (conn_tx, mut conn_rx) = mpsc::channel::<()>(1);
    if let Some(l) = resp_listener {
        info!(socket = %settings.resp_socket.as_ref().expect("resp socket").display(), "serving RESP");
        resp::serve_unix(server.clone(), l, stop_rx.clone(), conn_tx.clone());
    }
    if let Some(l) = resp_tcp {
        info!(address = %l.local_addr().map_or("?".into(), |a| a.to_string()), "serving RESP over TCP (AUTH required)");
        resp::serve_tcp(server.clone(), l, stop_rx.clone(), conn_tx.clone());
    }
    if let Some(l) = metrics_tcp {
        info!(address = %l.local_addr().map_or("?".into(), |a| a.to_string()), "serving metrics (GET /metrics)");
        http::serve(server.clone(), l, stop_rx.clone());
    }
    let connections = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    // A client opening connections in a loop must not turn the log into the same line 1000
    // times a millisecond.
    let mut too_many = crate::logging::RateLimit::new(Duration::from_secs(1), 1);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let Ok(slot) = connections.clone().try_acquire_owned() else {
                        if let Some(n) = too_many.check(std::time::Instant::now()) {
                            warn!(limit = MAX_CONNECTIONS, "too many connections; refusing one{}", crate::logging::suppressed(n));
                        }
                        continue;
                    };
                    let (server, stop_rx, conn_tx) = (server.clone(), stop_rx.clone(), conn_tx.clone());
                    tokio::spawn(async move {
                        conn::serve(server, stream, stop_rx).await;
                        drop((conn_tx, slot));
                    });
                }
                Err(e) => {
                    // Out of fds and the like: back off rather than spin.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            _ = hup.recv() => reload_settings(&mut loaded, &reload),
            _ = term.recv() => { info!("SIGTERM: shutting down"); break }
            _ = int.recv() => { info!("SIGINT: shutting down"); break }
        }
    }

    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    drop(listener);
    // Only the sockets chd made: whatever replaced one since is not chd's to remove.
    if socket_id.is_some() && file_id(&settings.socket) == socket_id {
        let _ = std::fs::remove_file(&settings.socket);
    }
    if let Some(p) = settings.resp_socket.as_ref().filter(|p| resp_socket_id.is_some() && file_id(p) == resp_socket_id)
    {
        let _ = std::fs::remove_file(p);
    }
    let _ = stop_tx.send(true);
    drop(conn_tx);
    if tokio::time::timeout(DRAIN_TIMEOUT, conn_rx.recv()).await.is_err() {
        warn!("requests still in flight after {}s; stopping anyway", DRAIN_TIMEOUT.as_secs());
    }
    let ids: Vec<u32> = server.cluster.nodes.read().expect("nodes lock").keys().copied().collect();
    let mut waits = Vec::new();
    for id in ids {
        let (done, wait) = oneshot::channel();
        if server.cluster.send(id, Event::Shutdown(done)) {
            waits.push(wait);
        }
    }
    for w in waits {
        let _ = tokio::time::timeout(Duration::from_secs(15), w).await;
    }
    info!("stopped");
    Ok(())
}

/// Binds the socket, refusing if a live chd answers on it and replacing a stale socket left by
/// one that was killed. The socket is born with its final mode (the umask is set around
/// `bind`), so it is never reachable with a wider one, not even for a moment.
pub(crate) fn bind(path: &Path, mode: u32, group: Option<u32>) -> anyhow::Result<UnixListener> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    // Pause points are named after the socket: chd binds more than one (RESP).
    let name = path.file_name().map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    pause_point_blocking(&format!("socket-dir:{name}"));
    prepare_socket_dir(dir, group)?;
    remove_stale_socket(path)?;
    // The umask is process-wide: this runs before the spawner thread and any task that creates
    // files, so nothing else is created under it.
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(!mode & 0o777));
    let bound = UnixListener::bind(path);
    nix::sys::stat::umask(old);
    let listener = bound.with_context(|| format!("cannot listen on {}", path.display()))?;
    pause_point_blocking(&format!("socket-bound:{name}"));
    // The allowed group owns the socket, so that a mode like 0660 lets its members in. Until
    // then the group is chd's own, whose members the credential check still refuses.
    if let Some(gid) = group.filter(|&g| g != nix::unistd::Gid::effective().as_raw()) {
        if let Err(e) = nix::unistd::chown(path, None, Some(nix::unistd::Gid::from_raw(gid))) {
            warn!(socket = %path.display(), gid, error = %e, "cannot give the socket to the allowed group; its members need a socket_mode that lets them in");
        }
    }
    Ok(listener)
}

/// Makes sure nobody but chd's user (and root) can replace or swap the socket: the directory is
/// created 0700 by chd itself (`mkdir`, which fails if someone made it first), and an existing
/// one must be owned by chd's user or root and not writable by others.
fn prepare_socket_dir(dir: &Path, group: Option<u32>) -> anyhow::Result<()> {
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty() && !p.exists()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => info!(dir = %dir.display(), "created the socket directory"),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e).with_context(|| format!("cannot create socket directory {}", dir.display())),
    }
    // Followed if a symlink: what counts is who can change the directory the socket lands in.
    let meta = std::fs::metadata(dir).with_context(|| format!("cannot inspect socket directory {}", dir.display()))?;
    let ours = SocketDirOwner {
        uid: nix::unistd::Uid::effective().as_raw(),
        gids: [Some(nix::unistd::Gid::effective().as_raw()), group].into_iter().flatten().collect(),
    };
    if let Some(why) = socket_dir_problem(meta.is_dir(), meta.uid(), meta.gid(), meta.mode(), &ours) {
        bail!("socket directory {}: {why}; fix it or pass --socket", dir.display());
    }
    Ok(())
}

struct SocketDirOwner {
    uid: u32,
    /// Groups whose write access to the directory is no stranger's.
    gids: Vec<u32>,
}

/// Why a directory is not safe to hold chd's socket, if it is not. A sticky world-writable
/// directory such as `/tmp` is safe: others cannot remove or rename what chd creates there.
fn socket_dir_problem(is_dir: bool, uid: u32, gid: u32, mode: u32, us: &SocketDirOwner) -> Option<String> {
    if !is_dir {
        return Some("not a directory".into());
    }
    if uid != us.uid && uid != 0 {
        return Some(format!("owned by uid {uid}, not by chd's user ({}) or root", us.uid));
    }
    let sticky = mode & 0o1000 != 0;
    if mode & 0o002 != 0 && !sticky {
        return Some(format!("mode {:o} lets every user replace the socket", mode & 0o7777));
    }
    if mode & 0o020 != 0 && !sticky && !us.gids.contains(&gid) {
        return Some(format!("mode {:o} lets group {gid} replace the socket", mode & 0o7777));
    }
    None
}

/// Removes what a killed chd left at `path`: only a socket, only when nobody answers on it, and
/// never by following a symlink. Anything else there is someone's file; chd refuses to start.
fn remove_stale_socket(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("cannot inspect {}", path.display())),
    };
    let kind = meta.file_type();
    if !kind.is_socket() {
        let what = if kind.is_symlink() {
            "a symlink"
        } else if kind.is_dir() {
            "a directory"
        } else {
            "not a socket"
        };
        bail!("{} is {what}; chd removes only a stale socket of its own; remove it or pass --socket", path.display());
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => bail!("another chd is serving socket {}; stop it first", path.display()),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            warn!(socket = %path.display(), "removing stale socket of a chd that is gone");
            std::fs::remove_file(path).with_context(|| format!("cannot remove stale socket {}", path.display()))
        }
        Err(e) => bail!("cannot tell whether socket {} is stale: {e}; remove it or pass --socket", path.display()),
    }
}

/// SIGHUP: reads the flags and the config file again, applies what can change while chd runs
/// (the log level) and says which other changes wait for a restart. Never stops chd: a bad
/// file keeps the running settings.
fn reload_settings(loaded: &mut Settings, reload: &Reload) {
    let new = match Settings::resolve(&reload.args) {
        Ok(s) => s,
        Err(e) => {
            warn!(error = %format!("{e:#}"), "SIGHUP: configuration not reloaded; the running settings stay");
            return;
        }
    };
    let (live, restart) = loaded.changes(&new);
    if live.contains(&"log_level") {
        match &reload.set_log_level {
            None => {
                warn!(log_level = %new.log_level, "SIGHUP: log_level changed, but RUST_LOG sets the filter; unchanged")
            }
            Some(set) => match set(&new.log_level) {
                Ok(()) => {
                    info!(from = %loaded.log_level, to = %new.log_level, "SIGHUP: log level changed");
                    loaded.log_level = new.log_level.clone();
                }
                Err(e) => warn!(error = %e, "SIGHUP: cannot change the log level"),
            },
        }
    }
    for key in &restart {
        warn!(setting = key, "SIGHUP: changed in the configuration; takes effect at the next start of chd");
    }
    let file = new.config_file.as_ref().map_or("none".into(), |f| f.display().to_string());
    info!(config_file = %file, applied = %crate::logging::list(&live), need_restart = %crate::logging::list(&restart), "SIGHUP: configuration reloaded");
}

/// In debug builds, `CHD_TEST_PAUSE_AT=<point>` with `CHD_TEST_PAUSE_FILE=<path>` makes chd
/// stop at that point: it creates the file, and goes on once a test has removed it. Tests force
/// an interleaving with it instead of racing a timer.
pub async fn pause_point(point: &str) {
    if let Some(file) = pause_file(point) {
        while file.exists() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        eprintln!("chd: resuming at {point}");
    }
}

/// [`pause_point`] for code that runs outside the async runtime or before it serves.
pub fn pause_point_blocking(point: &str) {
    if let Some(file) = pause_file(point) {
        while file.exists() {
            std::thread::sleep(Duration::from_millis(5));
        }
        eprintln!("chd: resuming at {point}");
    }
}

fn pause_file(point: &str) -> Option<std::path::PathBuf> {
    if !cfg!(debug_assertions) || std::env::var("CHD_TEST_PAUSE_AT").map_or(true, |p| p != point) {
        return None;
    }
    let file = std::path::PathBuf::from(std::env::var_os("CHD_TEST_PAUSE_FILE")?);
    std::fs::write(&file, point).ok()?;
    eprintln!("chd: paused at {point} until {} is removed", file.display());
    Some(file)
}

/// In debug builds, `CHD_TEST_CRASH_AT=<point>` makes chd die at that point, the way a kill -9
/// would, so that tests can reach a crash window without racing a signal against it.
pub fn crash_point(point: &str) {
    if cfg!(debug_assertions) && std::env::var("CHD_TEST_CRASH_AT").is_ok_and(|p| p == point) {
        eprintln!("chd: crashing at {point} (CHD_TEST_CRASH_AT)");
        std::process::abort();
    }
}

fn refuse_live_socket(path: &Path) -> anyhow::Result<()> {
    // Only connects (never removes): following a symlink here harms nobody.
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        bail!("another chd is serving socket {}; stop it first", path.display());
    }
    Ok(())
}

/// The identity (device, inode) of what is at `path` itself, not following a symlink.
fn file_id(path: &Path) -> Option<(u64, u64)> {
    std::fs::symlink_metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

fn count_up(cluster: &Cluster) -> usize {
    cluster.nodes.read().expect("nodes lock").values().filter(|s| s.state == NodeState::Up).count()
}

/// Waits until no node is still starting (or until [`STARTUP_WAIT`]).
/// A TCP listener on `addr` if the setting named `setting` gives one.
async fn listen_tcp(
    addr: Option<std::net::SocketAddr>,
    setting: &str,
) -> anyhow::Result<Option<tokio::net::TcpListener>> {
    let Some(addr) = addr else { return Ok(None) };
    let listener = tokio::net::TcpListener::bind(addr).await;
    Ok(Some(listener.with_context(|| format!("{setting}: cannot listen on {addr}"))?))
}

async fn wait_for_nodes(cluster: &Cluster) {
    let deadline = tokio::time::Instant::now() + STARTUP_WAIT;
    loop {
        let starting = cluster
            .nodes
            .read()
            .expect("nodes lock")
            .values()
            .filter(|s| matches!(s.state, NodeState::Starting))
            .count();
        if starting == 0 {
            return;
        }
        if tokio::time::Instant::now() > deadline {
            error!(starting, "nodes did not start in time; serving with the others");
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn notify_status(s: &str) {
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Status(s)]);
}

/// Pings systemd's watchdog while chd's runtime and its node table stay responsive; a chd that
/// is stopped or deadlocked stops pinging and systemd restarts it. Also keeps STATUS= current.
fn start_watchdog(server: Arc<Server>) {
    let interval = sd_notify::watchdog_enabled();
    let enabled = interval.is_some();
    tokio::spawn(async move {
        let every = interval.map_or(Duration::from_secs(2), |d| d / 2);
        let mut last = String::new();
        loop {
            tokio::time::sleep(every).await;
            let status = describe(&server.cluster);
            if enabled {
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
            }
            if status != last {
                notify_status(&status);
                last = status;
            }
        }
    });
}

fn describe(cluster: &Cluster) -> String {
    let nodes = cluster.nodes.read().expect("nodes lock");
    let up = nodes.values().filter(|s| s.state == NodeState::Up).count();
    let mut s = format!("serving; {up}/{} nodes up", nodes.len());
    for (id, slot) in nodes.iter() {
        if slot.state == NodeState::Up {
            continue;
        }
        match &slot.progress {
            Some(p) if !p.finished && p.partitions_total > 0 => {
                let pct = 100 * p.partitions_done / p.partitions_total;
                s += &format!("; {} node {id}: {pct}%", p.what);
            }
            _ => s += &format!("; node {id} {}", slot.state.as_str()),
        }
    }
    s
}
