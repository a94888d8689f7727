//! What a membership change moves, per node: pure, fed the partition moves and the size of each
//! moving partition.

use std::collections::BTreeMap;

use chd_data::proto::NodeTraffic;
use chd_data::ring::PartitionMove;
use chd_data::{NodeId, Ring};

/// Per node of either ring: records and bytes it would send and receive. Each moving
/// partition is sent once per gaining node, by its `sender` (one of its current owners).
pub fn traffic(
    before: &Ring,
    after: &Ring,
    sizes: &BTreeMap<u32, (u64, u64)>,
    sender: impl Fn(&PartitionMove) -> NodeId,
) -> Vec<NodeTraffic> {
    let mut nodes: BTreeMap<NodeId, NodeTraffic> = BTreeMap::new();
    for &id in before.nodes().iter().chain(after.nodes()) {
        nodes.entry(id).or_insert_with(|| NodeTraffic {
            id,
            share_before: if before.contains(id) { before.share(id) } else { 0.0 },
            share_after: if after.contains(id) { after.share(id) } else { 0.0 },
            ..Default::default()
        });
    }
    for mv in before.moves_to(after) {
        let (records, bytes) = sizes.get(&mv.partition).copied().unwrap_or_default();
        let from = sender(&mv);
        for to in mv.gaining() {
            let s = nodes.get_mut(&from).expect("sender is a member");
            s.send_records += records;
            s.send_bytes += bytes;
            let r = nodes.get_mut(&to).expect("receiver is a member");
            r.receive_records += records;
            r.receive_bytes += bytes;
        }
    }
    nodes.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adding_a_node_only_feeds_the_new_node() {
        let before = Ring::new(&[0, 1, 2], 3, 64).unwrap();
        let after = before.with_node_added(3).unwrap();
        let sizes: BTreeMap<u32, (u64, u64)> = (0..64).map(|p| (p, (10, 1000))).collect();
        let t = traffic(&before, &after, &sizes, |mv| mv.old[0]);
        let moved = before.moves_to(&after).len() as u64;
        assert_eq!(t.len(), 4);
        let new = &t[3];
        assert_eq!((new.receive_records, new.receive_bytes), (10 * moved, 1000 * moved));
        assert_eq!(new.send_records, 0);
        assert!(t[..3].iter().all(|n| n.receive_records == 0));
        assert_eq!(t.iter().map(|n| n.send_records).sum::<u64>(), 10 * moved);
        assert_eq!(new.share_before, 0.0);
    }

    #[test]
    fn removing_a_node_sends_only_its_partitions() {
        let before = Ring::new(&[0, 1, 2, 3], 3, 64).unwrap();
        let after = before.with_node_removed(2).unwrap();
        let sizes: BTreeMap<u32, (u64, u64)> = (0..64).map(|p| (p, (1, 1))).collect();
        let t = traffic(&before, &after, &sizes, |mv| *mv.old.iter().find(|&&n| n != 2).unwrap());
        let received: u64 = t.iter().map(|n| n.receive_records).sum();
        assert_eq!(received, before.partitions_of(2).len() as u64);
        assert_eq!(t.iter().find(|n| n.id == 2).unwrap().share_after, 0.0);
    }
}
