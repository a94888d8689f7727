//! What to copy so that the replicas of one partition agree: pure, fed each replica's sorted
//! (key, version) list.
//!
//! For every key the newest version wins: one replica that has it is the source, and every
//! replica with an older version, or none, receives it. Tombstones are versions like any other,
//! so a delete spreads the same way and an old value never comes back.

use std::collections::BTreeMap;

/// Copy `key` (at `version`) from replica `from` to replicas `to` (indices into the input).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transfer {
    pub key: Vec<u8>,
    pub version: u64,
    pub from: usize,
    pub to: Vec<usize>,
}

pub fn plan(replicas: &[Vec<(Vec<u8>, u64)>]) -> Vec<Transfer> {
    // key -> (newest version, first replica holding it, versions seen per replica)
    let mut newest: BTreeMap<&[u8], (u64, usize)> = BTreeMap::new();
    for (i, list) in replicas.iter().enumerate() {
        for (k, v) in list {
            let e = newest.entry(k.as_slice()).or_insert((*v, i));
            if *v > e.0 {
                *e = (*v, i);
            }
        }
    }
    let lookup: Vec<BTreeMap<&[u8], u64>> =
        replicas.iter().map(|l| l.iter().map(|(k, v)| (k.as_slice(), *v)).collect()).collect();
    newest
        .into_iter()
        .filter_map(|(k, (version, from))| {
            let to: Vec<usize> =
                (0..replicas.len()).filter(|&i| lookup[i].get(k).is_none_or(|&v| v < version)).collect();
            (!to.is_empty()).then(|| Transfer { key: k.to_vec(), version, from, to })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(items: &[(&str, u64)]) -> Vec<(Vec<u8>, u64)> {
        items.iter().map(|(k, v)| (k.as_bytes().to_vec(), *v)).collect()
    }

    #[test]
    fn agreeing_replicas_need_nothing() {
        let a = list(&[("a", 1), ("b", 2)]);
        assert!(plan(&[a.clone(), a.clone(), a]).is_empty());
        assert!(plan(&[vec![], vec![]]).is_empty());
    }

    #[test]
    fn newest_version_goes_everywhere_it_is_missing_or_older() {
        let t = plan(&[list(&[("a", 1), ("b", 5)]), list(&[("a", 3)]), list(&[("b", 5), ("c", 9)])]);
        assert_eq!(
            t,
            vec![
                Transfer { key: b"a".to_vec(), version: 3, from: 1, to: vec![0, 2] },
                Transfer { key: b"b".to_vec(), version: 5, from: 0, to: vec![1] },
                Transfer { key: b"c".to_vec(), version: 9, from: 2, to: vec![0, 1] },
            ]
        );
    }

    #[test]
    fn an_empty_replica_receives_everything() {
        let full = list(&[("a", 1), ("b", 2), ("c", 3)]);
        let t = plan(&[vec![], full.clone(), full]);
        assert_eq!(t.len(), 3);
        assert!(t.iter().all(|t| t.to == vec![0] && t.from == 1));
    }

    #[test]
    fn applying_the_plan_makes_replicas_equal() {
        // A small deterministic fuzz: random replicas, apply the plan, check agreement.
        let mut seed = 7u64;
        let mut rnd = |n: u64| {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (seed >> 33) % n
        };
        for _ in 0..200 {
            let mut reps: Vec<BTreeMap<Vec<u8>, u64>> = (0..3).map(|_| BTreeMap::new()).collect();
            for _ in 0..20 {
                let r = rnd(3) as usize;
                reps[r].insert(vec![rnd(10) as u8], rnd(50));
            }
            let lists: Vec<_> = reps.iter().map(|m| m.iter().map(|(k, v)| (k.clone(), *v)).collect()).collect();
            for t in plan(&lists) {
                assert_eq!(reps[t.from][&t.key], t.version);
                for i in t.to {
                    reps[i].insert(t.key.clone(), t.version);
                }
            }
            assert!(reps[0] == reps[1] && reps[1] == reps[2]);
        }
    }
}
