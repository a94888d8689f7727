//! The placement ring: which R nodes store a key.
//!
//! chd uses consistent hashing with fixed partitions (Dynamo's "strategy 3", as in Riak and
//! garage): blake3 of the key picks one of `P` equal slices of the hash space (its partition),
//! and a table maps each partition to R distinct nodes. `P` is fixed when a data dir is created
//! (1024 by default), so a key's partition never changes; only the table does.
//!
//! Why a table rather than virtual-node tokens: with tokens, balance within 10% at 32 nodes takes
//! hundreds of tokens per node and is still only statistical. With a table, membership changes
//! are planned explicitly: a new node takes `R*P/(n+1)` replica slots from the most loaded nodes,
//! a removed node's slots go to the least loaded nodes that do not already hold that partition.
//! So every node holds within one slot of the mean, and only the slots that must change move:
//! adding a node to `n` moves exactly `1/(n+1)` of the stored copies; removing one moves only the
//! copies it held.
//!
//! Invariants, checked by [`Ring::check`]: every partition has exactly R owners, they are
//! distinct, and each is a member. The ring is plain data: it is persisted in the data dir and
//! rebuilding it from its serialized form places every key exactly where it was.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub type NodeId = u32;

/// Partitions of a new data dir. 1024 keeps every node within 2% of the mean share up to a few
/// hundred nodes, and keeps the table (P x R ids) small enough to persist as one file.
pub const DEFAULT_PARTITIONS: u32 = 1024;

/// The partition of `key`: the top of its blake3 hash scaled to `0..partitions`, so that each
/// partition is one contiguous slice of the hash space.
pub fn partition_of(key: &[u8], partitions: u32) -> u32 {
    let hash = blake3::hash(key);
    let top = u64::from_be_bytes(hash.as_bytes()[..8].try_into().expect("8 bytes"));
    ((u128::from(top) * u128::from(partitions)) >> 64) as u32
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RingError {
    #[error("a ring needs at least one partition")]
    NoPartitions,
    #[error("replicas must be at least 1")]
    NoReplicas,
    #[error("{replicas} replicas need at least {replicas} nodes, the ring would have {nodes}")]
    TooFewNodes { replicas: u32, nodes: u32 },
    #[error("node {0} is already a member")]
    AlreadyMember(NodeId),
    #[error("node {0} is not a member")]
    NotMember(NodeId),
    #[error("ring table is inconsistent: {0}")]
    Corrupt(String),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ring {
    replicas: u32,
    /// Members, sorted.
    nodes: Vec<NodeId>,
    /// Partition -> its R distinct owners.
    table: Vec<Vec<NodeId>>,
}

/// One partition whose owners differ between two rings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionMove {
    pub partition: u32,
    pub old: Vec<NodeId>,
    pub new: Vec<NodeId>,
}

impl PartitionMove {
    /// Owners that gain the partition and must receive its keys.
    pub fn gaining(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.new.iter().copied().filter(|n| !self.old.contains(n))
    }
    /// Owners that lose the partition and may drop its keys once the move is done.
    pub fn losing(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.old.iter().copied().filter(|n| !self.new.contains(n))
    }
}

impl Ring {
    /// A balanced ring over `nodes`: replica slots are dealt round-robin, so loads differ by at
    /// most one slot, and the R owners of a partition are R consecutive members (distinct
    /// because R <= n).
    pub fn new(nodes: &[NodeId], replicas: u32, partitions: u32) -> Result<Ring, RingError> {
        let mut members = nodes.to_vec();
        members.sort_unstable();
        members.dedup();
        validate(members.len(), replicas, partitions)?;
        let n = members.len();
        let r = replicas as usize;
        let table = (0..partitions as usize).map(|p| (0..r).map(|i| members[(p * r + i) % n]).collect()).collect();
        Ok(Ring { replicas, nodes: members, table })
    }

    pub fn replicas(&self) -> u32 {
        self.replicas
    }

    pub fn partitions(&self) -> u32 {
        self.table.len() as u32
    }

    pub fn nodes(&self) -> &[NodeId] {
        &self.nodes
    }

    pub fn contains(&self, node: NodeId) -> bool {
        self.nodes.binary_search(&node).is_ok()
    }

    pub fn partition_of(&self, key: &[u8]) -> u32 {
        partition_of(key, self.partitions())
    }

    /// The R distinct owners of `partition`.
    pub fn owners(&self, partition: u32) -> &[NodeId] {
        &self.table[partition as usize]
    }

    /// The partition of `key` and its owners: the whole placement lookup.
    pub fn locate(&self, key: &[u8]) -> (u32, &[NodeId]) {
        let p = self.partition_of(key);
        (p, self.owners(p))
    }

    /// The partitions `node` holds a replica of, ascending.
    pub fn partitions_of(&self, node: NodeId) -> Vec<u32> {
        (0..self.partitions()).filter(|&p| self.owners(p).contains(&node)).collect()
    }

    /// The fraction of the key space `node` stores a replica of (the mean is R/n).
    pub fn share(&self, node: NodeId) -> f64 {
        self.partitions_of(node).len() as f64 / f64::from(self.partitions())
    }

    /// The ring with `node` added: it takes `floor(R*P/(n+1))` slots, each from the currently
    /// most loaded owner of a partition it does not hold yet.
    pub fn with_node_added(&self, node: NodeId) -> Result<Ring, RingError> {
        if self.contains(node) {
            return Err(RingError::AlreadyMember(node));
        }
        let mut next = self.clone();
        next.nodes.push(node);
        next.nodes.sort_unstable();
        let total = self.table.len() * self.replicas as usize;
        let target = total / next.nodes.len();
        let mut loads = next.loads();
        // Visit partitions in an order unique to the new node, so that the slots it takes are
        // spread over the key space instead of bunched at its start.
        let order = spread_order(node, self.partitions());
        while loads[&node] < target {
            let mut donors: Vec<NodeId> = next.nodes.iter().copied().filter(|&m| m != node).collect();
            donors.sort_by_key(|m| (std::cmp::Reverse(loads[m]), *m));
            let taken = donors.iter().find_map(|&donor| {
                order
                    .iter()
                    .find(|&&p| {
                        let owners = &next.table[p as usize];
                        owners.contains(&donor) && !owners.contains(&node)
                    })
                    .map(|&p| (donor, p))
            });
            let Some((donor, p)) = taken else { break };
            let owners = &mut next.table[p as usize];
            let slot = owners.iter().position(|&m| m == donor).expect("donor owns p");
            owners[slot] = node;
            *loads.get_mut(&donor).expect("member") -= 1;
            *loads.get_mut(&node).expect("member") += 1;
        }
        next.check()?;
        Ok(next)
    }

    /// The ring without `node`: each slot it held goes to the least loaded member that does not
    /// already own that partition. Nothing else moves.
    pub fn with_node_removed(&self, node: NodeId) -> Result<Ring, RingError> {
        if !self.contains(node) {
            return Err(RingError::NotMember(node));
        }
        let mut next = self.clone();
        next.nodes.retain(|&m| m != node);
        validate(next.nodes.len(), self.replicas, self.partitions())?;
        let mut loads = next.loads();
        for p in spread_order(node, self.partitions()) {
            let owners = &mut next.table[p as usize];
            let Some(slot) = owners.iter().position(|&m| m == node) else { continue };
            let heir = next
                .nodes
                .iter()
                .copied()
                .filter(|m| !owners.contains(m))
                .min_by_key(|m| (loads[m], *m))
                .expect("n >= R leaves a member outside every partition");
            owners[slot] = heir;
            *loads.get_mut(&heir).expect("member") += 1;
        }
        next.check()?;
        Ok(next)
    }

    /// The ring with `new` taking exactly the slots of `old`.
    pub fn with_node_replaced(&self, old: NodeId, new: NodeId) -> Result<Ring, RingError> {
        if !self.contains(old) {
            return Err(RingError::NotMember(old));
        }
        if self.contains(new) {
            return Err(RingError::AlreadyMember(new));
        }
        let mut next = self.clone();
        for owners in &mut next.table {
            for m in owners.iter_mut().filter(|m| **m == old) {
                *m = new;
            }
        }
        next.nodes.retain(|&m| m != old);
        next.nodes.push(new);
        next.nodes.sort_unstable();
        next.check()?;
        Ok(next)
    }

    /// The partitions whose owners differ in `next`.
    pub fn moves_to(&self, next: &Ring) -> Vec<PartitionMove> {
        self.table
            .iter()
            .zip(&next.table)
            .enumerate()
            .filter(|(_, (a, b))| {
                let mut a = (*a).clone();
                let mut b = (*b).clone();
                a.sort_unstable();
                b.sort_unstable();
                a != b
            })
            .map(|(p, (a, b))| PartitionMove { partition: p as u32, old: a.clone(), new: b.clone() })
            .collect()
    }

    /// Verifies the invariants; a ring read from disk is checked before use.
    pub fn check(&self) -> Result<(), RingError> {
        validate(self.nodes.len(), self.replicas, self.partitions())?;
        if self.nodes.windows(2).any(|w| w[0] >= w[1]) {
            return Err(RingError::Corrupt("members are not sorted and distinct".into()));
        }
        for (p, owners) in self.table.iter().enumerate() {
            if owners.len() != self.replicas as usize {
                return Err(RingError::Corrupt(format!("partition {p} has {} owners", owners.len())));
            }
            for (i, m) in owners.iter().enumerate() {
                if !self.contains(*m) {
                    return Err(RingError::Corrupt(format!("partition {p} names non-member {m}")));
                }
                if owners[..i].contains(m) {
                    return Err(RingError::Corrupt(format!("partition {p} names {m} twice")));
                }
            }
        }
        Ok(())
    }

    fn loads(&self) -> BTreeMap<NodeId, usize> {
        let mut loads: BTreeMap<NodeId, usize> = self.nodes.iter().map(|&m| (m, 0)).collect();
        // A node being removed still appears in the table; it is not counted.
        for m in self.table.iter().flatten() {
            if let Some(l) = loads.get_mut(m) {
                *l += 1;
            }
        }
        loads
    }
}

fn validate(nodes: usize, replicas: u32, partitions: u32) -> Result<(), RingError> {
    if partitions == 0 {
        return Err(RingError::NoPartitions);
    }
    if replicas == 0 {
        return Err(RingError::NoReplicas);
    }
    if nodes < replicas as usize {
        return Err(RingError::TooFewNodes { replicas, nodes: nodes as u32 });
    }
    Ok(())
}

/// All partitions, in an order that depends on `node` (sorted by a hash of both).
fn spread_order(node: NodeId, partitions: u32) -> Vec<u32> {
    let mut order: Vec<(u64, u32)> = (0..partitions)
        .map(|p| {
            let mut h = blake3::Hasher::new();
            h.update(&node.to_le_bytes());
            h.update(&p.to_le_bytes());
            let top = u64::from_le_bytes(h.finalize().as_bytes()[..8].try_into().expect("8 bytes"));
            (top, p)
        })
        .collect();
    order.sort_unstable();
    order.into_iter().map(|(_, p)| p).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: u32) -> Vec<NodeId> {
        (0..n).collect()
    }

    /// Copies of keys stored per node, for `keys` synthetic keys.
    fn copies(ring: &Ring, keys: u32) -> BTreeMap<NodeId, u64> {
        let mut c: BTreeMap<NodeId, u64> = ring.nodes().iter().map(|&m| (m, 0)).collect();
        for k in 0..keys {
            for m in ring.locate(format!("key-{k}").as_bytes()).1 {
                *c.get_mut(m).unwrap() += 1;
            }
        }
        c
    }

    /// Fraction of stored copies that change owner between two rings, over real keys.
    fn moved_fraction(a: &Ring, b: &Ring, keys: u32) -> f64 {
        let mut moved = 0u64;
        for k in 0..keys {
            let key = format!("key-{k}");
            let (_, old) = a.locate(key.as_bytes());
            let (_, new) = b.locate(key.as_bytes());
            moved += new.iter().filter(|m| !old.contains(m)).count() as u64;
        }
        moved as f64 / (u64::from(keys) * u64::from(a.replicas())) as f64
    }

    #[test]
    fn partition_is_stable_and_in_range() {
        assert_eq!(partition_of(b"hello", 1024), partition_of(b"hello", 1024));
        for k in 0..10_000u32 {
            assert!(partition_of(&k.to_le_bytes(), 1024) < 1024);
        }
        // Pinned: a change of hash or scaling would silently move every stored key.
        assert_eq!(partition_of(b"", 1024), (0xaf1349b9f5f9a1a6u64 >> 54) as u32);
    }

    #[test]
    fn owners_are_r_distinct_members() {
        for n in 1..=12 {
            for r in 1..=n.min(5) {
                let ring = Ring::new(&ids(n), r, 256).unwrap();
                ring.check().unwrap();
                for p in 0..256 {
                    assert_eq!(ring.owners(p).len(), r as usize);
                }
            }
        }
    }

    #[test]
    fn placement_survives_a_round_trip_through_storage() {
        let ring = Ring::new(&ids(5), 3, DEFAULT_PARTITIONS).unwrap().with_node_added(9).unwrap();
        let stored = postcard::to_stdvec(&ring).unwrap();
        let back: Ring = postcard::from_bytes(&stored).unwrap();
        for k in 0..1000u32 {
            assert_eq!(ring.locate(&k.to_le_bytes()), back.locate(&k.to_le_bytes()));
        }
        assert_eq!(Ring::new(&ids(5), 3, 64).unwrap(), Ring::new(&[4, 3, 2, 1, 0], 3, 64).unwrap());
    }

    #[test]
    fn refuses_impossible_rings() {
        assert_eq!(Ring::new(&ids(2), 3, 64), Err(RingError::TooFewNodes { replicas: 3, nodes: 2 }));
        assert_eq!(Ring::new(&ids(2), 0, 64), Err(RingError::NoReplicas));
        assert_eq!(Ring::new(&ids(2), 1, 0), Err(RingError::NoPartitions));
        let ring = Ring::new(&ids(3), 3, 64).unwrap();
        assert_eq!(ring.with_node_added(1), Err(RingError::AlreadyMember(1)));
        assert!(matches!(ring.with_node_removed(0), Err(RingError::TooFewNodes { .. })));
        assert_eq!(ring.with_node_removed(7), Err(RingError::NotMember(7)));
    }

    #[test]
    fn every_node_count_is_balanced_within_ten_percent() {
        // Built both ways an operator gets there: created at n, and grown one node at a time.
        let mut grown = Ring::new(&ids(3), 3, DEFAULT_PARTITIONS).unwrap();
        for n in 3..=32u32 {
            if n > 3 {
                grown = grown.with_node_added(n - 1).unwrap();
            }
            for ring in [Ring::new(&ids(n), 3, DEFAULT_PARTITIONS).unwrap(), grown.clone()] {
                let mean = 3.0 / f64::from(n);
                let max = ring.nodes().iter().map(|&m| ring.share(m)).fold(0.0, f64::max);
                assert!(max / mean <= 1.10, "n={n}: max share {max} vs mean {mean}");
            }
        }
    }

    #[test]
    fn stored_keys_follow_the_shares() {
        let ring = Ring::new(&ids(8), 3, DEFAULT_PARTITIONS).unwrap();
        let c = copies(&ring, 200_000);
        let mean = 600_000.0 / 8.0;
        for (m, n) in c {
            assert!((n as f64 / mean - 1.0).abs() < 0.05, "node {m} holds {n} copies");
        }
    }

    #[test]
    fn adding_a_node_moves_the_optimal_fraction() {
        for n in [3u32, 8, 32] {
            let before = Ring::new(&ids(n), 3, DEFAULT_PARTITIONS).unwrap();
            let after = before.with_node_added(100).unwrap();
            let moved = moved_fraction(&before, &after, 100_000);
            let optimum = 1.0 / f64::from(n + 1);
            assert!((moved / optimum - 1.0).abs() <= 0.10, "n={n}: moved {moved:.4}, optimum {optimum:.4}");
            // Only the new node gains anything.
            for mv in before.moves_to(&after) {
                assert_eq!(mv.gaining().collect::<Vec<_>>(), vec![100]);
            }
        }
    }

    #[test]
    fn removing_a_node_moves_only_its_keys() {
        for n in [4u32, 9, 33] {
            let before = Ring::new(&ids(n), 3, DEFAULT_PARTITIONS).unwrap();
            let after = before.with_node_removed(2).unwrap();
            for mv in before.moves_to(&after) {
                assert_eq!(mv.losing().collect::<Vec<_>>(), vec![2]);
            }
            assert_eq!(before.moves_to(&after).len(), before.partitions_of(2).len());
            let mean = 3.0 / f64::from(n - 1);
            let max = after.nodes().iter().map(|&m| after.share(m)).fold(0.0, f64::max);
            assert!(max / mean <= 1.10, "n={n}: max share {max} vs mean {mean}");
        }
    }

    #[test]
    fn replacing_a_node_hands_over_exactly_its_partitions() {
        let before = Ring::new(&ids(5), 3, DEFAULT_PARTITIONS).unwrap();
        let after = before.with_node_replaced(3, 7).unwrap();
        assert_eq!(before.partitions_of(3), after.partitions_of(7));
        assert_eq!(before.moves_to(&after).len(), before.partitions_of(3).len());
        assert!(!after.contains(3));
    }

    #[test]
    fn check_catches_a_corrupt_table() {
        let mut ring = Ring::new(&ids(4), 3, 16).unwrap();
        ring.table[5][1] = ring.table[5][0];
        assert!(matches!(ring.check(), Err(RingError::Corrupt(_))));
    }
}
