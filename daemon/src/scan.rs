//! Key listing (RESP's SCAN, KEYS, DBSIZE, RANDOMKEY and `chctl keys`), one partition at a time.
//!
//! A partition's keys are read from R-W+1 of its read owners that serve reads and merged: for
//! each key the newest version wins, and a key whose newest version is a tombstone is left out.
//! R-W+1 owners include one of every acknowledged write's W, so every key whose last
//! acknowledged write is a set is listed, and no acknowledged delete is undone. Keys written or
//! deleted while a listing runs may or may not appear (as with Redis's SCAN).
//!
//! Memory is bounded by one partition's keys (about 1/1024 of the key space) per replica; the
//! whole key space is never held. The cursor of a scan is a partition number, so it stays
//! valid across calls and across restarts of chd.

use std::collections::BTreeMap;
use std::sync::Arc;

use chd_data::Error;
use tokio::task::JoinSet;

use crate::cluster::Cluster;
use crate::coordinator::CALL_TIMEOUT;
use crate::worker::link::WorkerLink;
use crate::worker::proto::{WorkerRequest, WorkerResponse};

/// Keys asked of a worker per call.
const PAGE: u32 = 4096;

/// One replica's listing of a partition: (key, version, is a tombstone), ascending.
pub type Listing = Vec<(Vec<u8>, u64, bool)>;

/// The live keys of partition `p`, ascending, that start with `prefix`.
pub async fn partition_keys(cluster: &Arc<Cluster>, p: u32, prefix: &[u8]) -> Result<Vec<Vec<u8>>, Error> {
    let placement = cluster.layout().placement(p);
    let replicas = cluster.replicas(&placement.read);
    let need = replicas.len() + 1 - cluster.write_quorum();
    let mut calls = JoinSet::new();
    for x in replicas.into_iter().filter(|x| x.serves_reads()) {
        let link = x.link.expect("a replica that serves reads has a link");
        let prefix = prefix.to_vec();
        calls.spawn(async move { list(&link, p, &prefix).await });
    }
    let mut listings = Vec::with_capacity(need);
    while let Some(joined) = calls.join_next().await {
        if let Ok(Ok(l)) = joined {
            listings.push(l);
            if listings.len() == need {
                break;
            }
        }
    }
    if listings.len() < need {
        return Err(Error::Unavailable { needed: need as u32, got: listings.len() as u32 });
    }
    Ok(merge(listings))
}

/// Pages through one replica's records of `p` from `prefix` on, stopping past the prefix.
async fn list(link: &WorkerLink, p: u32, prefix: &[u8]) -> Result<Listing, ()> {
    let mut out = Listing::new();
    let mut after: Option<Vec<u8>> = predecessor(prefix);
    loop {
        let req = WorkerRequest::Keys { partition: p, after: after.clone(), limit: PAGE };
        let page = match link.call(req, CALL_TIMEOUT).await {
            Ok(WorkerResponse::Keys(page)) => page,
            _ => return Err(()),
        };
        let Some((last, _, _)) = page.last() else { return Ok(out) };
        after = Some(last.clone());
        for entry in page {
            if entry.0.starts_with(prefix) {
                out.push(entry);
            } else if entry.0.as_slice() > prefix {
                return Ok(out);
            }
        }
        // A page may be cut short by bytes, so only an empty page ends the listing.
    }
}

/// A key below every key that starts with `prefix` (so listing "after" it misses none of them),
/// and close below: the few keys between it and `prefix` are skipped by the caller.
fn predecessor(prefix: &[u8]) -> Option<Vec<u8>> {
    let (&last, head) = prefix.split_last()?;
    if last == 0 {
        return (!head.is_empty()).then(|| head.to_vec());
    }
    let mut k = head.to_vec();
    k.push(last - 1);
    Some(k)
}

/// Newest version per key across listings; tombstoned keys dropped; ascending.
pub fn merge(listings: Vec<Listing>) -> Vec<Vec<u8>> {
    let mut newest: BTreeMap<Vec<u8>, (u64, bool)> = BTreeMap::new();
    for l in listings {
        for (k, version, tombstone) in l {
            match newest.get_mut(&k) {
                Some(e) if e.0 >= version => {}
                Some(e) => *e = (version, tombstone),
                None => {
                    newest.insert(k, (version, tombstone));
                }
            }
        }
    }
    newest.into_iter().filter(|(_, (_, tombstone))| !tombstone).map(|(k, _)| k).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(k: &str, v: u64, t: bool) -> (Vec<u8>, u64, bool) {
        (k.as_bytes().to_vec(), v, t)
    }

    #[test]
    fn newest_version_wins_and_tombstones_hide_keys() {
        let a = vec![e("a", 1, false), e("b", 5, true), e("c", 3, false)];
        let b = vec![e("a", 2, true), e("b", 4, false), e("d", 1, false)];
        let keys = merge(vec![a, b]);
        assert_eq!(keys, vec![b"c".to_vec(), b"d".to_vec()]);
    }

    #[test]
    fn predecessors_start_listings_before_the_prefix() {
        assert_eq!(predecessor(b""), None);
        assert_eq!(predecessor(b"key:"), Some(b"key9".to_vec()));
        assert_eq!(predecessor(b"a\0"), Some(b"a".to_vec()));
        assert_eq!(predecessor(b"\0"), None);
        // Every key with the prefix sorts after the predecessor.
        for k in [&b"key:"[..], b"key:\0", b"key:zz"] {
            assert!(k > predecessor(b"key:").unwrap().as_slice());
        }
    }
}
