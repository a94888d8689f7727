//! `<data-dir>/quarantine/`: listing it and deleting, on an operator's request, what is safe to
//! delete (`chctl quarantine list|purge`).
//!
//! chd itself never deletes a quarantined database (README, guarantee 5). It puts two kinds
//! there, both named `node-<id>-<unix seconds>[.<n>]` ([`crate::datadir::DataDir::quarantine`]):
//! - the database of a node that failed its own checks, set aside before the node was rebuilt
//!   from its peers. chd sets aside at most R-W replicas of a partition, so the remaining ones
//!   hold every acknowledged write; once the node is rebuilt, intact and `up` again, its old
//!   database holds nothing that is not on W replicas: redundant.
//! - the database of a node that left the ring when chd could not confirm its records on the
//!   new owners. It may hold the only copy of some records, and stays until a person decides.
//!
//! So an entry is deleted only when (pure rule, [`unsafe_because`]): chd made it (its name
//! parses), its node is still a member and is `up` with intact data, and it is older than the
//! operator asked. Everything else is kept and the report says why. A deletion first renames
//! the entry to `.purging-<name>` (so a crash mid-way never leaves a half-deleted database
//! under a name that looks whole), then removes it; leftovers of such a crash are removed by
//! the next purge, since they were already judged safe.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use chd_data::proto::{NodeState, QuarantineEntry, QuarantineReport};
use chd_data::NodeId;

use crate::cluster::Cluster;

const PURGING: &str = ".purging-";

/// The node and the time (unix seconds) in a name chd gave, `node-<id>-<secs>[.<n>]`.
pub fn parse_name(name: &str) -> Option<(NodeId, u64)> {
    let rest = name.strip_prefix("node-")?;
    let (id, stamp) = rest.split_once('-')?;
    let secs = stamp.split_once('.').map_or(stamp, |(s, n)| if n.parse::<u32>().is_ok() { s } else { "x" });
    Some((id.parse().ok()?, secs.parse().ok()?))
}

/// How chd sees the node a quarantined database came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// Not a member any more (it left the ring), or never was.
    NotMember,
    /// A member, with its state and whether its current data is intact.
    Member { state: NodeState, intact: bool },
}

/// Why deleting the entry `name` could lose data or is not chd's to do; `None` when it is
/// redundant.
pub fn unsafe_because(name: &str, origin: impl Fn(NodeId) -> Origin) -> Option<String> {
    let Some((id, _)) = parse_name(name) else {
        return Some("not a database chd set aside (unknown name); delete it by hand if you know what it is".into());
    };
    match origin(id) {
        Origin::NotMember => Some(format!(
            "node {id} left the ring before its records were confirmed on the new owners: this may be their only \
             copy"
        )),
        Origin::Member { state: NodeState::Up, intact: true } => None,
        Origin::Member { state, .. } => Some(format!(
            "node {id} is {} and not yet rebuilt: keep its old database until it is up again",
            state.as_str()
        )),
    }
}

/// Bytes allocated for every file under `path` (like `du`), not following symlinks.
fn disk_usage(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::symlink_metadata(path) else { return 0 };
    let mut total = meta.blocks() * 512;
    if meta.is_dir() {
        if let Ok(entries) = std::fs::read_dir(path) {
            total += entries.flatten().map(|e| disk_usage(&e.path())).sum::<u64>();
        }
    }
    total
}

fn entries(dir: &Path, now: SystemTime, origin: &impl Fn(NodeId) -> Origin) -> std::io::Result<Vec<QuarantineEntry>> {
    let read = match std::fs::read_dir(dir) {
        Ok(r) => r,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for e in read {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        let path = e.path();
        let set_aside = match parse_name(&name) {
            Some((_, secs)) => SystemTime::UNIX_EPOCH + Duration::from_secs(secs),
            None => e.metadata().and_then(|m| m.modified()).unwrap_or(now),
        };
        out.push(QuarantineEntry {
            node: parse_name(&name).map(|(id, _)| id),
            bytes: disk_usage(&path),
            age_secs: now.duration_since(set_aside).map_or(0, |d| d.as_secs()),
            unsafe_because: if name.starts_with(PURGING) { None } else { unsafe_because(&name, origin) },
            name,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

fn origin_in(cluster: &Cluster) -> impl Fn(NodeId) -> Origin + '_ {
    move |id| {
        let member = cluster.ring().nodes().contains(&id);
        match cluster.nodes.read().expect("nodes lock").get(&id) {
            Some(s) if member => Origin::Member { state: s.state, intact: s.intact },
            _ => Origin::NotMember,
        }
    }
}

fn dir_of(cluster: &Cluster) -> PathBuf {
    cluster.data.root().join("quarantine")
}

pub fn list(cluster: &Cluster) -> std::io::Result<QuarantineReport> {
    let dir = dir_of(cluster);
    let entries = entries(&dir, SystemTime::now(), &origin_in(cluster))?;
    Ok(QuarantineReport { dir: dir.display().to_string(), entries, purged: Vec::new() })
}

/// Deletes every safe entry at least `older_than` old; reports what went and what stayed.
pub fn purge(cluster: &Cluster, older_than: Duration) -> std::io::Result<QuarantineReport> {
    let dir = dir_of(cluster);
    let mut report = QuarantineReport { dir: dir.display().to_string(), ..Default::default() };
    for mut e in entries(&dir, SystemTime::now(), &origin_in(cluster))? {
        let leftover = e.name.starts_with(PURGING);
        if !leftover && (e.unsafe_because.is_some() || e.age_secs < older_than.as_secs()) {
            report.entries.push(e);
            continue;
        }
        let from = dir.join(&e.name);
        let doomed = if leftover { from.clone() } else { dir.join(format!("{PURGING}{}", e.name)) };
        if !leftover {
            std::fs::rename(&from, &doomed)?;
        }
        match std::fs::remove_dir_all(&doomed) {
            Err(err) if err.kind() == std::io::ErrorKind::NotADirectory => std::fs::remove_file(&doomed)?,
            r => r?,
        }
        e.unsafe_because = None;
        report.purged.push(e);
    }
    if !report.purged.is_empty() {
        std::fs::File::open(&dir)?.sync_all()?;
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_chd_gives_parse_and_others_do_not() {
        assert_eq!(parse_name("node-2-1764000000"), Some((2, 1_764_000_000)));
        assert_eq!(parse_name("node-12-1764000000.3"), Some((12, 1_764_000_000)));
        for other in ["node-2", "node-x-1", "node-2-12x", "backup", "node-2-1.x", ".purging-node-1-5"] {
            assert_eq!(parse_name(other), None, "{other}");
        }
    }

    #[test]
    fn only_a_rebuilt_up_node_makes_its_old_database_redundant() {
        let up = |_| Origin::Member { state: NodeState::Up, intact: true };
        assert_eq!(unsafe_because("node-1-100", up), None);
        let rebuilding = |_| Origin::Member { state: NodeState::Rebuilding, intact: false };
        assert!(unsafe_because("node-1-100", rebuilding).unwrap().contains("node 1 is rebuilding"));
        let failed = |_| Origin::Member { state: NodeState::Failed, intact: true };
        assert!(unsafe_because("node-1-100", failed).is_some());
        // Up but not intact: its rebuild is still pending, the old database may be needed.
        let pending = |_| Origin::Member { state: NodeState::Up, intact: false };
        assert!(unsafe_because("node-1-100", pending).is_some());
        let left = |_| Origin::NotMember;
        assert!(unsafe_because("node-1-100", left).unwrap().contains("only copy"));
        assert!(unsafe_because("my-backup", up).unwrap().contains("unknown name"));
    }

    #[test]
    fn entries_report_size_age_and_safety() {
        let dir = tempfile::tempdir().unwrap();
        let q = dir.path();
        std::fs::create_dir_all(q.join("node-1-1000/values")).unwrap();
        std::fs::write(q.join("node-1-1000/values/1"), vec![7u8; 100_000]).unwrap();
        std::fs::create_dir(q.join("node-9-1500")).unwrap();
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(4600);
        let origin =
            |id| if id == 1 { Origin::Member { state: NodeState::Up, intact: true } } else { Origin::NotMember };
        let e = entries(q, now, &origin).unwrap();
        assert_eq!(e.iter().map(|e| e.name.as_str()).collect::<Vec<_>>(), ["node-1-1000", "node-9-1500"]);
        assert!(e[0].bytes >= 100_000, "{}", e[0].bytes);
        assert_eq!((e[0].age_secs, e[1].age_secs), (3600, 3100));
        assert_eq!(e[0].unsafe_because, None);
        assert!(e[1].unsafe_because.is_some());
        assert!(entries(&q.join("absent"), now, &origin).unwrap().is_empty());
    }
}
