//! INFO: Redis's sections that mean something for chd, and a `chd` section with its nodes.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::cmd::{self, REDIS_VERSION};
use super::reply::Reply;
use super::{stats, ConnInfo};
use crate::service::Server;

const DEFAULT: &[&str] = &["server", "clients", "memory", "persistence", "stats", "keyspace", "chd"];

pub async fn info(server: &Arc<Server>, args: &[Vec<u8>], _ctx: &ConnInfo) -> Result<Reply, Reply> {
    let asked: Vec<String> = args.iter().map(|a| String::from_utf8_lossy(a).to_ascii_lowercase()).collect();
    let all = asked.is_empty() || asked.iter().any(|a| matches!(a.as_str(), "all" | "everything" | "default"));
    let wants = |s: &str| all || asked.iter().any(|a| a == s);
    let cluster = &server.cluster;
    let st = &cluster.settings;
    let mut out = String::new();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs();
    for section in DEFAULT {
        if !wants(section) {
            continue;
        }
        if !out.is_empty() {
            out += "\r\n";
        }
        match *section {
            "server" => {
                let up = cluster.started.elapsed().as_secs();
                out += "# Server\r\n";
                out += &format!("redis_version:{REDIS_VERSION}\r\n");
                out += &format!("chd_version:{}\r\n", env!("CARGO_PKG_VERSION"));
                out += "redis_mode:standalone\r\nos:Linux\r\narch_bits:64\r\n";
                out += &format!("process_id:{}\r\n", std::process::id());
                out += &format!("tcp_port:{}\r\n", st.resp_listen.map_or(0, |a| a.port()));
                out += &format!("uptime_in_seconds:{up}\r\nuptime_in_days:{}\r\n", up / 86400);
                if let Some(f) = &st.config_file {
                    out += &format!("config_file:{}\r\n", f.display());
                }
            }
            "clients" => {
                let n = stats::CLIENTS.lock().expect("clients lock").len();
                out += &format!("# Clients\r\nconnected_clients:{n}\r\nblocked_clients:0\r\nmaxclients:1024\r\n");
            }
            "memory" => {
                // What chd and its workers hold resident, as the budget counts it.
                let (used, budget) = (cluster.memory.used(), cluster.memory.budget());
                out += "# Memory\r\n";
                out += &format!("used_memory:{used}\r\nused_memory_human:{}\r\n", human(used));
                out += &format!("used_memory_rss:{used}\r\n");
                out += &format!("maxmemory:{budget}\r\nmaxmemory_human:{}\r\n", human(budget));
                out += "maxmemory_policy:noeviction\r\n";
            }
            "persistence" => {
                out += "# Persistence\r\nloading:0\r\nrdb_changes_since_last_save:0\r\n";
                out += &format!("rdb_last_save_time:{now}\r\n");
                out += "aof_enabled:1\r\naof_rewrite_in_progress:0\r\n";
                out += &format!(
                    "chd_durability:every write is on {} of {} replicas' disks (fdatasync) before its reply\r\n",
                    st.write_quorum,
                    cluster.ring().replicas()
                );
            }
            "stats" => {
                out += "# Stats\r\n";
                out += &format!("total_connections_received:{}\r\n", stats::CONNECTIONS.load(Ordering::Relaxed));
                out += &format!("total_commands_processed:{}\r\n", stats::COMMANDS.load(Ordering::Relaxed));
                out += &format!("rejected_connections:{}\r\n", stats::REJECTED.load(Ordering::Relaxed));
                out += "expired_keys:0\r\nevicted_keys:0\r\n";
            }
            "keyspace" => {
                out += "# Keyspace\r\n";
                let n = cmd::dbsize(server).await?;
                if n > 0 {
                    out += &format!("db0:keys={n},expires=0,avg_ttl=0\r\n");
                }
            }
            "chd" => {
                out += "# chd\r\n";
                out += &format!("data_dir:{}\r\n", cluster.data.root().display());
                out += &format!("socket:{}\r\n", st.socket.display());
                out += &format!("replicas:{}\r\nwrite_quorum:{}\r\n", cluster.ring().replicas(), st.write_quorum);
                out += &format!("partitions:{}\r\n", cluster.ring().partitions());
                let lines = cmd::node_lines(server);
                out += &format!("nodes:{}\r\n", lines.len());
                for l in lines {
                    out += &l;
                    out += "\r\n";
                }
            }
            _ => {}
        }
    }
    Ok(Reply::Verbatim(out))
}

/// Bytes as Redis's `*_human` fields show them (`1.50M`).
fn human(bytes: u64) -> String {
    let mut v = bytes as f64;
    for unit in ["B", "K", "M", "G"] {
        if v < 1024.0 {
            return if unit == "B" { format!("{bytes}B") } else { format!("{v:.2}{unit}") };
        }
        v /= 1024.0;
    }
    format!("{v:.2}T")
}
