//! The request path for keys: placement, per-key ordering, quorum writes and quorum reads.
//!
//! Linearizability, and why it holds:
//! - chd is the only coordinator, and it orders operations per key: each get, set or del holds
//!   the key's lock (a striped async mutex) from start to reply. So no read ever races an
//!   in-flight write of the same key inside chd.
//! - A write gets a fresh, larger version ([`crate::versions`]), goes to every running owner,
//!   and is acknowledged once W of them have it on disk. With every owner up, the R-W copies
//!   chd does not wait for are sent as spares ([`spares`]): their workers may sync them a
//!   moment later, together with other writes. Their answers still mean "on disk".
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

use std::future::Future;
use std::hash::BuildHasher;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use chd_data::{Error, NodeId, Record};
use tokio::sync::{Mutex, OwnedMutexGuard};

use crate::cache::ValueCache;
use crate::cluster::{Cluster, Replica};
use crate::layout::Placement;
use crate::versions::Versions;
use crate::worker::link::{self, LinkError, WorkerLink};
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
        self.stripes[self.stripe(key)].clone().lock_owned().await
    }

    /// Takes the locks of all `keys` (for commands that must see and change several keys at
    /// once, such as MSETNX). Stripes are taken in ascending order, each once, so two such
    /// callers cannot deadlock and two keys sharing a stripe do not wait for themselves.
    pub async fn lock_many<K: AsRef<[u8]>>(&self, keys: &[K]) -> Vec<OwnedMutexGuard<()>> {
        let mut stripes: Vec<usize> = keys.iter().map(|k| self.stripe(k.as_ref())).collect();
        stripes.sort_unstable();
        stripes.dedup();
        let mut guards = Vec::with_capacity(stripes.len());
        for s in stripes {
            guards.push(self.stripes[s].clone().lock_owned().await);
        }
        guards
    }

    /// The key's lock if it is free right now (for answers that need no waiting).
    pub fn try_lock(&self, key: &[u8]) -> Option<OwnedMutexGuard<()>> {
        self.stripes[self.stripe(key)].clone().try_lock_owned().ok()
    }

    fn stripe(&self, key: &[u8]) -> usize {
        self.hasher.hash_one(key) as usize % LOCK_STRIPES
    }
}

pub struct Coordinator {
    pub cluster: Arc<Cluster>,
    pub versions: Versions,
    pub locks: KeyLocks,
    /// Current values of recently used keys (see [`crate::cache`] for why reads may trust it).
    pub cache: ValueCache,
}

impl Coordinator {
    /// Stores `value` (or a tombstone for `None`). Caller holds the key's lock.
    pub async fn write(&self, key: &[u8], value: Option<Vec<u8>>) -> Result<(), Error> {
        // Past the memory budget only a key that exists may be written: an overwrite or a
        // delete adds no index entry. The read is paid only while the budget is exceeded.
        if value.is_some() && self.cluster.memory.is_full() && self.read(key).await?.is_none() {
            let memory = &self.cluster.memory;
            return Err(Error::OutOfMemory { used: memory.used(), budget: memory.budget() });
        }
        // Forgotten before anything is sent: if this write fails half-way, its outcome is
        // unknown and only the replicas can tell what is current.
        self.cache.remove(key);
        let version = self.versions.next().await.map_err(|e| Error::Internal(format!("{e:#}")))?;
        let record = Record { version, value };
        let placement = self.cluster.placement_of(key);
        let req = link::encode_put(key, &record, false);
        // A second encoding, for spares, only of a small write: a large one is not worth a
        // second copy in memory, and its sync is mostly its own bytes anyway.
        let spare = (req.len() <= SPARE_MAX_BYTES).then(|| link::encode_put(key, &record, true));
        // A value the cache will not keep is dropped now, before the replicas answer: a
        // maximal write then holds one copy in chd (the encoded request), not two.
        let cached = self.cache.keeps(key, record.value.as_deref()).then_some(record.value);
        self.make_durable(&placement, req, spare, &[]).await?;
        if let Some(value) = cached {
            self.cache.put(key, value.as_deref());
        }
        Ok(())
    }

    /// The current value of `key` if chd has it in memory: no I/O, no waiting. Caller holds
    /// the key's lock.
    pub fn cached(&self, key: &[u8]) -> Option<crate::cache::Value> {
        self.cache.get_before_read(key)
    }

    /// The latest acknowledged value of `key`. Caller holds the key's lock.
    pub async fn read(&self, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        if let Some(value) = self.cache.get(key) {
            return Ok(value.map(|v| v.to_vec()));
        }
        let placement = self.cluster.placement_of(key);
        let replicas = self.cluster.replicas(&placement.read);
        let w = self.cluster.write_quorum();
        let need = replicas.len() + 1 - w;
        let readable: Vec<&Replica> = replicas.iter().filter(|x| x.serves_reads()).collect();
        if readable.len() < need {
            return Err(Error::Unavailable { needed: need as u32, got: readable.len() as u32 });
        }
        let mut calls: Vec<Call<_>> = Vec::with_capacity(readable.len());
        for x in &readable {
            let (link, id, key) = (x.link.clone().expect("readable has a link"), x.id, key.to_vec());
            calls.push(Box::pin(async move { (id, get(&link, key).await) }));
        }
        let mut answers: Vec<(NodeId, Option<Record>)> = Vec::with_capacity(need);
        let waiting = until_enough(calls, |(id, answer)| {
            if let Ok(rec) = answer {
                answers.push((id, rec));
            }
            answers.len() == need
        })
        .await;
        // Dropped: chd stops waiting for them (say, on a hung node); their replies are thrown away.
        drop(waiting);
        if answers.len() < need {
            return Err(Error::Unavailable { needed: need as u32, got: answers.len() as u32 });
        }
        let version_of = |r: &Option<Record>| r.as_ref().map_or(0, |r| r.version);
        let newest = answers.iter().map(|(_, r)| r).max_by_key(|r| version_of(r)).cloned().flatten();
        let Some(newest) = newest else {
            self.cache.put(key, None);
            return Ok(None);
        };
        let holders: Vec<NodeId> =
            answers.iter().filter(|(_, r)| version_of(r) == newest.version).map(|(id, _)| *id).collect();
        // Read repair: the newest version must be durable on W nodes of every write set before
        // anyone sees it, or a later read could miss it.
        self.make_durable(&placement, link::encode_put(key, &newest, false), None, &holders).await?;
        self.cache.put(key, newest.value.as_deref());
        Ok(newest.value)
    }

    /// Sends `req` (a put, encoded once by [`link::encode_put`] for every replica) to every
    /// write target not in `holders` at once, and returns as soon as W nodes of each write set
    /// have it on disk (counting `holders`, which already do). `spare` is the same put marked
    /// spare, sent instead to the targets [`spares`] names, if any.
    async fn make_durable(
        &self,
        placement: &Placement,
        req: Arc<[u8]>,
        spare: Option<Arc<[u8]>>,
        holders: &[NodeId],
    ) -> Result<(), Error> {
        let w = self.cluster.write_quorum();
        let mut have: Vec<NodeId> = holders.to_vec();
        let weakest = |have: &[NodeId]| {
            placement.write_sets.iter().map(|set| set.iter().filter(|n| have.contains(n)).count()).min().unwrap_or(0)
        };
        if weakest(&have) >= w {
            return Ok(());
        }
        let mut calls: Vec<Call<_>> = Vec::new();
        // Whether a call had to wait for room in its link's queue: such a call may not be
        // queued yet when enough replicas have answered.
        let mut waits = false;
        let timeout = put_timeout(req.len());
        let targets = self.cluster.replicas(&placement.write_targets());
        let spares = match spare {
            Some(_) => spares(placement, holders, w, |id| targets.iter().any(|x| x.id == id && x.serves_reads())),
            None => Vec::new(),
        };
        for x in targets {
            if have.contains(&x.id) || !x.takes_writes() {
                continue;
            }
            let Some(link) = x.link else { continue };
            let id = x.id;
            let req = match (&spare, spares.contains(&id)) {
                (Some(spare), true) => spare,
                _ => &req,
            };
            match link.try_call_encoded(req, timeout) {
                Some(Ok(reply)) => calls.push(Box::pin(async move { (id, reply.await) })),
                Some(Err(e)) => calls.push(Box::pin(async move { (id, Err(e)) })),
                None => {
                    waits = true;
                    let req = req.clone();
                    calls.push(Box::pin(async move { (id, link.call_encoded(req, timeout).await) }));
                }
            }
        }
        drop((req, spare));
        let mut disk_full = None;
        let waiting = until_enough(calls, |(id, answer)| {
            match answer {
                // Stored(false) means the replica already had this version or a newer one: on
                // disk there all the same.
                Ok(WorkerResponse::Stored(_)) => have.push(id),
                Err(LinkError::DiskFull { free, needed }) => {
                    disk_full = Some(format!("node {id} has {free} bytes free and needs {needed}"))
                }
                _ => {}
            }
            weakest(&have) >= w
        })
        .await;
        if weakest(&have) >= w {
            // The other replicas still get the write; chd only stops waiting for them. A queued
            // call needs nothing more (its reply is dropped); one still waiting for room in its
            // link's queue is let finish.
            if waits && !waiting.is_empty() {
                tokio::spawn(async move {
                    for call in waiting {
                        let _ = call.await;
                    }
                });
            }
            return Ok(());
        }
        // A full disk is the operator's to fix, not a reason to retry: say so.
        match disk_full {
            Some(why) => Err(Error::DiskFull(why)),
            None => Err(Error::Unavailable { needed: w as u32, got: weakest(&have) as u32 }),
        }
    }
}

/// Largest encoded put that is also encoded as a spare (see [`spares`]).
const SPARE_MAX_BYTES: usize = 64 << 10;

/// The write targets of a put whose copy chd does not wait for: with one write set (no
/// migration), no replica holding the write yet and every member of the set up, the last R-W
/// members in ring order. Their workers may then hold their sync a moment for other writes to
/// share it (see [`crate::worker::SPARE_WAIT`]): one flush fewer per write for the disk. In
/// every other case none, so that a write never waits on a spare while a replica is known to
/// be missing. A spare's answer still counts: it is only late, by [`crate::worker::SPARE_WAIT`]
/// at most, when a replica fails to answer.
fn spares(placement: &Placement, holders: &[NodeId], w: usize, up: impl Fn(NodeId) -> bool) -> Vec<NodeId> {
    let [set] = &placement.write_sets[..] else { return Vec::new() };
    if !holders.is_empty() || set.len() <= w || !set.iter().all(|&id| up(id)) {
        return Vec::new();
    }
    set[w..].to_vec()
}

/// How long a replica may take to store a write of `bytes`: [`CALL_TIMEOUT`], plus time to
/// move and sync a large value at a slow disk's pace (10 MB/s), so that a 32 MiB write on a
/// busy disk is not counted as a failed replica.
fn put_timeout(bytes: usize) -> Duration {
    CALL_TIMEOUT + Duration::from_secs_f64(bytes as f64 / 10e6)
}

/// One replica call of a request, boxed so that calls to several replicas can be polled side
/// by side.
type Call<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// Polls `calls` together, in this task, and hands each answer to `answer` as it arrives,
/// until `answer` says there are enough (returns true) or every call has answered. Returns the
/// calls still waiting: dropping them cancels them, awaiting them lets them finish.
///
/// One task per request instead of one per replica call: spawning three tasks per SET was a
/// measurable share of chd's CPU per write.
async fn until_enough<T>(mut calls: Vec<Call<T>>, mut answer: impl FnMut(T) -> bool) -> Vec<Call<T>> {
    std::future::poll_fn(move |cx| {
        let mut i = 0;
        while i < calls.len() {
            match calls[i].as_mut().poll(cx) {
                Poll::Ready(out) => {
                    drop(calls.swap_remove(i));
                    if answer(out) {
                        return Poll::Ready(std::mem::take(&mut calls));
                    }
                }
                Poll::Pending => i += 1,
            }
        }
        match calls.is_empty() {
            true => Poll::Ready(Vec::new()),
            false => Poll::Pending,
        }
    })
    .await
}

async fn get(link: &WorkerLink, key: Vec<u8>) -> Result<Option<Record>, ()> {
    match link.call(WorkerRequest::Get { key }, CALL_TIMEOUT).await {
        Ok(WorkerResponse::Record(r)) => Ok(r),
        _ => Err(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spares_only_when_every_replica_is_up_and_one_ring_owns_the_key() {
        let one = |set: Vec<NodeId>| Placement { read: set.clone(), write_sets: vec![set] };
        let all_up = |_| true;
        // R=3, W=2: the last owner in ring order is the spare.
        assert_eq!(spares(&one(vec![4, 1, 3]), &[], 2, all_up), [3]);
        // R=5, W=3: the last two.
        assert_eq!(spares(&one(vec![0, 1, 2, 3, 4]), &[], 3, all_up), [3, 4]);
        // R=W: every copy is waited for.
        assert!(spares(&one(vec![0, 1, 2]), &[], 3, all_up).is_empty());
        // One replica down, hung or catching up: chd waits for the others at once.
        assert!(spares(&one(vec![0, 1, 2]), &[], 2, |id| id != 0).is_empty());
        // Read repair: some replicas already hold the write.
        assert!(spares(&one(vec![0, 1, 2]), &[1], 2, all_up).is_empty());
        // Moving partition: W of each of two sets.
        let moving = Placement { read: vec![0, 1, 2], write_sets: vec![vec![0, 1, 2], vec![0, 1, 3]] };
        assert!(spares(&moving, &[], 2, all_up).is_empty());
    }

    #[tokio::test]
    async fn until_enough_stops_once_answers_suffice_and_hands_back_the_calls_still_waiting() {
        let (txs, rxs): (Vec<_>, Vec<_>) = (0..3).map(|_| tokio::sync::oneshot::channel::<u32>()).unzip();
        let calls: Vec<Call<u32>> =
            rxs.into_iter().map(|rx| Box::pin(async move { rx.await.unwrap() }) as Call<u32>).collect();
        let [a, b, c]: [_; 3] = txs.try_into().unwrap();
        c.send(3).unwrap();
        a.send(1).unwrap();
        let mut got = Vec::new();
        let waiting = until_enough(calls, |v| {
            got.push(v);
            got.len() == 2
        })
        .await;
        got.sort_unstable();
        assert_eq!(got, [1, 3]);
        assert_eq!(waiting.len(), 1, "the call not answered yet is handed back");
        b.send(2).unwrap();
        assert_eq!(waiting.into_iter().next().unwrap().await, 2, "and can still finish");

        // Not enough answers from all the calls: returns once every call has answered.
        let calls: Vec<Call<u32>> = vec![Box::pin(async { 1 }), Box::pin(async { 2 })];
        let mut seen = 0;
        let waiting = until_enough(calls, |_| {
            seen += 1;
            false
        })
        .await;
        assert!(waiting.is_empty());
        assert_eq!(seen, 2);
    }

    #[tokio::test]
    async fn lock_many_takes_a_shared_stripe_once_and_excludes_single_locks() {
        let locks = KeyLocks::default();
        // Many keys: some share a stripe; taking them all must not wait on itself.
        let keys: Vec<Vec<u8>> = (0..10_000u32).map(|i| i.to_be_bytes().to_vec()).collect();
        let guards = locks.lock_many(&keys).await;
        assert!(guards.len() < keys.len());
        let single = tokio::time::timeout(Duration::from_millis(20), locks.lock(&keys[7])).await;
        assert!(single.is_err(), "a key held by lock_many was locked again");
        drop(guards);
        let _again = locks.lock(&keys[7]).await;
    }
}
