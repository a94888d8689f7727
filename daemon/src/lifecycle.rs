//! The life of the daemon: open the data dir, start the nodes, serve every endpoint, reload
//! settings on SIGHUP, and stop cleanly on SIGTERM or SIGINT.

use std::sync::Arc;
use std::time::Duration;

use chd_data::proto::NodeState;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{error, info, warn};

use crate::cache::ValueCache;
use crate::cluster::{Cluster, Event, Registry};
use crate::config::Settings;
use crate::coordinator::{Coordinator, KeyLocks};
use crate::datadir::{ClusterFile, DataDir};
use crate::hooks;
use crate::logging::SetLogLevel;
use crate::membership;
use crate::net::socket;
use crate::repair;
use crate::resp;
use crate::server;
use crate::service::Server;
use crate::supervisor::{self, spawn::Spawner};
use crate::versions::Versions;

/// How long startup waits for every node before serving with those that are up.
const STARTUP_WAIT: Duration = Duration::from_secs(60);
/// How long a graceful stop waits for requests in flight.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

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
    socket::refuse_live_socket(&settings.socket)?;
    let data = DataDir::open(&settings.data_dir, if settings.allowed_group.is_some() { 0o750 } else { 0o700 })?;
    // Absolute paths from here on: workers and status output do not depend on chd's cwd.
    settings.data_dir = data.root().to_path_buf();
    settings.socket = std::path::absolute(&settings.socket)?;
    if let Some(resp) = settings.resp_socket.clone() {
        socket::refuse_live_socket(&resp)?;
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
    hooks::crash_point("cluster-created");
    let write_quorum = settings.write_quorum;
    // A lowered W (or one missing from an older file) is kept from now on.
    if file.write_quorum != Some(write_quorum) {
        file.write_quorum = Some(write_quorum);
        data.save_cluster(&file)?;
    }
    if created {
        info!(write_quorum, "write quorum fixed with the data dir");
    }
    let listener = socket::bind(&settings.socket, settings.socket_mode, settings.allowed_group.as_ref().map(|g| g.1))?;
    let socket_id = socket::file_id(&settings.socket);
    // The RESP endpoint: the same bind (stale-socket detection, mode, group) as the main socket.
    let resp_listener = match &settings.resp_socket {
        Some(p) => Some(socket::bind(p, settings.socket_mode, settings.allowed_group.as_ref().map(|g| g.1))?),
        None => None,
    };
    let resp_socket_id = settings.resp_socket.as_deref().and_then(socket::file_id);
    let resp_tcp = socket::listen_tcp(settings.resp_listen, "resp_listen").await?;
    let metrics_tcp = socket::listen_tcp(settings.metrics_listen, "metrics_listen").await?;
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

    start_memory_sampler(server.cluster.clone());
    crate::metrics::register(&crate::metrics::CHD);
    crate::metrics::register(&resp::METRICS);
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
        server::http::serve(server.clone(), l, stop_rx.clone());
    }
    info!(socket = %settings.socket.display(), "serving chd's socket");
    server::serve(server.clone(), listener, stop_rx.clone(), conn_tx.clone());
    loop {
        tokio::select! {
            _ = hup.recv() => reload_settings(&mut loaded, &reload),
            _ = term.recv() => { info!("SIGTERM: shutting down"); break }
            _ = int.recv() => { info!("SIGINT: shutting down"); break }
        }
    }

    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    // Only the sockets chd made: whatever replaced one since is not chd's to remove.
    if socket_id.is_some() && socket::file_id(&settings.socket) == socket_id {
        let _ = std::fs::remove_file(&settings.socket);
    }
    if let Some(p) =
        settings.resp_socket.as_ref().filter(|p| resp_socket_id.is_some() && socket::file_id(p) == resp_socket_id)
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

fn count_up(cluster: &Cluster) -> usize {
    cluster.nodes.read().expect("nodes lock").values().filter(|s| s.state == NodeState::Up).count()
}

/// Waits until no node is still starting (or until [`STARTUP_WAIT`]).
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

/// Measures what chd and its workers hold resident, several times a second, for the memory
/// budget ([`crate::memory`]) and `chctl status`.
fn start_memory_sampler(cluster: Arc<Cluster>) {
    tokio::spawn(async move {
        loop {
            let pids: Vec<(u32, u32)> = {
                let nodes = cluster.nodes.read().expect("nodes lock");
                nodes.iter().filter_map(|(&id, s)| s.pid.map(|p| (id, p))).collect()
            };
            let workers = pids.into_iter().filter_map(|(id, pid)| Some((id, crate::memory::resident(pid)?))).collect();
            let own = crate::memory::resident(std::process::id()).unwrap_or(0);
            cluster.memory.record(own, workers);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
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
