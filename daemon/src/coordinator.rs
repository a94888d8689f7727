//! The request path for keys: placement, per-key ordering, quorum writes and quorum reads.
//!
//! Linearizability, and why it holds:
//! - chd is the only coordinator, and it orders operations per key: each get, set or del holds
//!   the key's lock (a striped async mutex) from start to reply. So no read ever races an
//!   in-flight write of the same key inside chd.
//! - A write gets a fresh, larger version ([`crate::versions`]), goes to every running owner,
//!   and is acknowledged once W of them have it on disk.
//! - A read asks the owners that serve reads (nodes that are up, not catching up or
//!   rebuilding) and waits for R-W+1 answers: any such quorum includes at least one node of
//!   every acknowledged write's W, so the newest version among the answers is at least the last
//!   acknowledged write. Before replying, the read makes sure that version is on W nodes
//!   (read repair): a write that failed half-way (chd crashed, or too few acks) and is seen by
//!   one read is thus seen by every later read, never "un-happening".
//!
//! Nothing here waits on a hung node: calls run concurrently and the operation completes as
//! soon as enough replicas answered; a node that does not answer within [`CALL_TIMEOUT`] simply
//! does not count.

use std::hash::BuildHasher;
use std::sync::Arc;
use std::time::Duration;

use chd_data::{Error, Record};
use tokio::sync::{Mutex, OwnedMutexGuard};
use tokio::task::JoinSet;

use crate::cluster::{Cluster, Replica};
use crate::versions::Versions;
use crate::worker::link::WorkerLink;
use crate::worker::proto::{WorkerRequest, WorkerResponse};

/// How long one replica may take to answer before it is counted as failed for this request.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(3);
const LOCK_STRIPES: usize = 4096;

/// Per-key ordering. Striped, so memory stays fixed; two keys share a stripe rarely and then
/// only wait for each other.
pub struct KeyLocks {
    stripes: Vec<Arc<Mutex<()>>>,
    hasher: std::collections::hash_map::RandomState,
}

impl Default for KeyLocks {
    fn default() -> Self {
        KeyLocks { stripes: (0..LOCK_STRIPES).map(|_| Arc::default()).collect(), hasher: Default::default() }
    }
}

impl KeyLocks {
    /// Waits for the key's turn. Waiters are served in arrival order (tokio's mutex is fair),
    /// so requests pipelined on one connection apply in the order they were sent.
    pub async fn lock(&self, key: &[u8]) -> OwnedMutexGuard<()> {
        let h = self.hasher.hash_one(key);
        self.stripes[h as usize % LOCK_STRIPES].clone().lock_owned().await
    }
}

pub struct Coordinator {
    pub cluster: Arc<Cluster>,
    pub versions: Versions,
    pub locks: KeyLocks,
}

impl Coordinator {
    /// Stores `value` (or a tombstone for `None`). Caller holds the key's lock.
    pub async fn write(&self, key: &[u8], value: Option<Vec<u8>>) -> Result<(), Error> {
        let version = self.versions.next().await.map_err(|e| Error::Internal(format!("{e:#}")))?;
        let record = Record { version, value };
        let replicas = self.cluster.replicas_of(key);
        let targets: Vec<&Replica> = replicas.iter().filter(|r| r.takes_writes()).collect();
        let w = self.cluster.write_quorum();
        let acks = put_until(&targets, key, &record, w).await;
        if acks < w {
            return Err(Error::Unavailable { needed: w as u32, got: acks as u32 });
        }
        Ok(())
    }

    /// The latest acknowledged value of `key`. Caller holds the key's lock.
    pub async fn read(&self, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        let replicas = self.cluster.replicas_of(key);
        let r = replicas.len();
        let w = self.cluster.write_quorum();
        let need = r - w + 1;
        let readable: Vec<&Replica> = replicas.iter().filter(|x| x.serves_reads()).collect();
        if readable.len() < need {
            return Err(Error::Unavailable { needed: need as u32, got: readable.len() as u32 });
        }
        let mut calls = JoinSet::new();
        for x in &readable {
            let (link, id, key) = (x.link.clone().expect("readable has a link"), x.id, key.to_vec());
            calls.spawn(async move { (id, get(&link, key).await) });
        }
        let mut answers: Vec<(chd_data::NodeId, Option<Record>)> = Vec::with_capacity(need);
        while let Some(joined) = calls.join_next().await {
            if let Ok((id, Ok(rec))) = joined {
                answers.push((id, rec));
                if answers.len() == need {
                    break;
                }
            }
        }
        // Dropping the set cancels the calls still waiting (say, on a hung node).
        drop(calls);
        if answers.len() < need {
            return Err(Error::Unavailable { needed: need as u32, got: answers.len() as u32 });
        }
        let version_of = |r: &Option<Record>| r.as_ref().map_or(0, |r| r.version);
        let newest = answers.iter().map(|(_, r)| r).max_by_key(|r| version_of(r)).cloned().flatten();
        let Some(newest) = newest else { return Ok(None) };
        let holders: Vec<_> =
            answers.iter().filter(|(_, r)| version_of(r) == newest.version).map(|(id, _)| *id).collect();
        if holders.len() < w {
            // Read repair: make the newest version durable on W nodes before anyone sees it.
            let others: Vec<&Replica> =
                replicas.iter().filter(|x| x.takes_writes() && !holders.contains(&x.id)).collect();
            let acks = put_until(&others, key, &newest, w - holders.len()).await;
            if holders.len() + acks < w {
                return Err(Error::Unavailable { needed: w as u32, got: (holders.len() + acks) as u32 });
            }
        }
        Ok(newest.value)
    }
}

/// Sends `record` to all `targets` at once and returns when `enough` stored it (or all
/// answered). Returns the number of durable acknowledgements.
async fn put_until(targets: &[&Replica], key: &[u8], record: &Record, enough: usize) -> usize {
    if enough == 0 {
        return 0;
    }
    let mut calls = JoinSet::new();
    for x in targets {
        let Some(link) = x.link.clone() else { continue };
        let req = WorkerRequest::Put { key: key.to_vec(), record: record.clone() };
        calls.spawn(async move { link.call(req, CALL_TIMEOUT).await });
    }
    let mut acks = 0;
    while let Some(joined) = calls.join_next().await {
        // Stored(false) means the replica already had this version or a newer one: it is on
        // disk there all the same.
        if let Ok(Ok(WorkerResponse::Stored(_))) = joined {
            acks += 1;
            if acks >= enough {
                break;
            }
        }
    }
    // The other replicas still get the write; chd only stops waiting for their answers.
    calls.detach_all();
    acks
}

async fn get(link: &WorkerLink, key: Vec<u8>) -> Result<Option<Record>, ()> {
    match link.call(WorkerRequest::Get { key }, CALL_TIMEOUT).await {
        Ok(WorkerResponse::Record(r)) => Ok(r),
        _ => Err(()),
    }
}
