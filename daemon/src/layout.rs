//! Where keys live while membership changes: the current ring and, during a change, the target
//! ring and which partitions have already moved to it. Pure data, persisted in `cluster.json`.
//!
//! A partition whose owners change goes through three steps:
//! 1. *pending*: reads use the old owners; writes go to old and new owners and are acknowledged
//!    only once W of each set have them (a joint quorum), so every write made from now on is
//!    already where it must be after the switch;
//! 2. its existing records are copied from the old owners to the new ones (newest wins);
//! 3. *done*: reads and writes use the new owners only.
//!
//! When every moving partition is done, the target becomes the ring and the nodes that lost a
//! partition drop it. Each step is persisted before it takes effect, so chd can be killed at
//! any point and resumes the change where it was.

use std::collections::BTreeSet;

use chd_data::{NodeId, Ring};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Layout {
    pub ring: Ring,
    pub transition: Option<Transition>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Transition {
    /// What the operator asked for, e.g. "add node 4".
    pub what: String,
    pub target: Ring,
    /// Partitions that have switched to the target owners.
    pub done: BTreeSet<u32>,
    /// Nodes that leave the cluster when the change completes.
    pub leaving: Vec<NodeId>,
}

/// Where one partition is read and written right now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    pub read: Vec<NodeId>,
    /// A write is acknowledged once W nodes of every set have it.
    pub write_sets: Vec<Vec<NodeId>>,
}

impl Placement {
    /// Every node a write goes to.
    pub fn write_targets(&self) -> Vec<NodeId> {
        let mut all: Vec<NodeId> = self.write_sets.iter().flatten().copied().collect();
        all.sort_unstable();
        all.dedup();
        all
    }
}

impl Layout {
    #[cfg(test)]
    pub fn stable(ring: Ring) -> Layout {
        Layout { ring, transition: None }
    }

    pub fn partitions(&self) -> u32 {
        self.ring.partitions()
    }

    fn moving(&self, p: u32) -> Option<&Transition> {
        self.transition.as_ref().filter(|t| !same_owners(self.ring.owners(p), t.target.owners(p)))
    }

    pub fn placement(&self, p: u32) -> Placement {
        let old = self.ring.owners(p).to_vec();
        match self.moving(p) {
            None => Placement { read: old.clone(), write_sets: vec![old] },
            Some(t) => {
                let new = t.target.owners(p).to_vec();
                if t.done.contains(&p) {
                    Placement { read: new.clone(), write_sets: vec![new] }
                } else {
                    Placement { read: old.clone(), write_sets: vec![old, new] }
                }
            }
        }
    }

    /// Every node that holds or is receiving data: the members of both rings.
    pub fn members(&self) -> Vec<NodeId> {
        let mut m: BTreeSet<NodeId> = self.ring.nodes().iter().copied().collect();
        if let Some(t) = &self.transition {
            m.extend(t.target.nodes());
        }
        m.into_iter().collect()
    }

    /// Partitions node `id` must hold right now: those it reads or writes.
    pub fn partitions_of(&self, id: NodeId) -> Vec<u32> {
        (0..self.partitions()).filter(|&p| self.placement(p).write_targets().contains(&id)).collect()
    }

    /// Moving partitions not yet switched.
    pub fn pending(&self) -> Vec<u32> {
        match &self.transition {
            None => Vec::new(),
            Some(t) => (0..self.partitions()).filter(|&p| self.moving(p).is_some() && !t.done.contains(&p)).collect(),
        }
    }

    pub fn moving_count(&self) -> usize {
        (0..self.partitions()).filter(|&p| self.moving(p).is_some()).count()
    }

    /// Starts a change to `target`. Refused while another change runs.
    pub fn begin(&mut self, what: String, target: Ring, leaving: Vec<NodeId>) -> Result<(), String> {
        if let Some(t) = &self.transition {
            return Err(format!("another change is in progress ({}); wait for it to finish", t.what));
        }
        self.transition = Some(Transition { what, target, done: BTreeSet::new(), leaving });
        Ok(())
    }

    /// Whether node `id`'s database may be set aside (moved to quarantine and rebuilt) when
    /// the nodes for which `lost` holds have already lost theirs. Pure; the rule behind it: chd
    /// never sets aside more than R-W replicas of a partition on its own, nor more than W-1 (so
    /// that an intact replica of every acknowledged write remains). With R=3, W=2: one.
    pub fn may_set_aside(&self, id: NodeId, w: usize, lost: impl Fn(NodeId) -> bool) -> Result<(), String> {
        let r = self.ring.replicas() as usize;
        let limit = r.saturating_sub(w).min(w.saturating_sub(1));
        for p in self.partitions_of(id) {
            let already: Vec<String> = self
                .placement(p)
                .write_targets()
                .into_iter()
                .filter(|&n| n != id && lost(n))
                .map(|n| n.to_string())
                .collect();
            if already.len() + 1 > limit {
                return Err(if already.is_empty() {
                    format!("with R={r} and W={w} chd sets aside no replica on its own")
                } else {
                    format!(
                        "partition {p} already has node {} being rebuilt; setting node {id} aside too could lose acknowledged writes",
                        already.join(", ")
                    )
                });
            }
        }
        Ok(())
    }

    pub fn mark_done(&mut self, p: u32) {
        if let Some(t) = &mut self.transition {
            t.done.insert(p);
        }
    }

    /// Completes the change once nothing is pending: the target becomes the ring.
    pub fn finish(&mut self) -> Option<Transition> {
        if !self.pending().is_empty() {
            return None;
        }
        let t = self.transition.take()?;
        self.ring = t.target.clone();
        Some(t)
    }
}

fn same_owners(a: &[NodeId], b: &[NodeId]) -> bool {
    a.len() == b.len() && a.iter().all(|x| b.contains(x))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_moves_partitions_through_pending_to_done() {
        let ring = Ring::new(&[0, 1, 2], 3, 64).unwrap();
        let target = ring.with_node_added(3).unwrap();
        let mut l = Layout::stable(ring.clone());
        l.begin("add node 3".into(), target.clone(), vec![]).unwrap();
        assert!(l.begin("again".into(), target.clone(), vec![]).is_err());
        let pending = l.pending();
        assert_eq!(pending.len(), ring.moves_to(&target).len());
        let p = pending[0];
        let before = l.placement(p);
        assert_eq!(before.read, ring.owners(p));
        assert_eq!(before.write_sets, vec![ring.owners(p).to_vec(), target.owners(p).to_vec()]);
        assert_eq!(before.write_targets().len(), 4);
        // A partition that does not move is untouched.
        let still = (0..64).find(|q| !pending.contains(q)).unwrap();
        assert_eq!(l.placement(still).write_sets.len(), 1);
        assert!(l.finish().is_none(), "cannot finish with partitions pending");
        for q in pending {
            l.mark_done(q);
        }
        assert_eq!(l.placement(p).read, target.owners(p));
        assert_eq!(l.placement(p).write_sets.len(), 1);
        assert!(l.finish().is_some());
        assert_eq!(l.ring, target);
        assert_eq!(l.transition, None);
    }

    #[test]
    fn at_most_r_minus_w_replicas_of_a_partition_are_set_aside() {
        // R=3 on 4 nodes: every pair of nodes shares partitions.
        let l = Layout::stable(Ring::new(&[0, 1, 2, 3], 3, 64).unwrap());
        assert_eq!(l.may_set_aside(0, 2, |_| false), Ok(()));
        let e = l.may_set_aside(0, 2, |n| n == 2).unwrap_err();
        assert!(e.contains("node 2 being rebuilt"), "{e}");
        // The node's own state does not count against it.
        assert_eq!(l.may_set_aside(0, 2, |n| n == 0), Ok(()));
        // W=1 could leave an acknowledged write with no intact copy; W=R leaves no slack.
        assert!(l.may_set_aside(0, 1, |_| false).is_err());
        assert!(l.may_set_aside(0, 3, |_| false).is_err());
        // R=5, W=3: two may be set aside at once, not three.
        let l = Layout::stable(Ring::new(&[0, 1, 2, 3, 4, 5], 5, 64).unwrap());
        assert_eq!(l.may_set_aside(0, 3, |n| n == 1), Ok(()));
        assert!(l.may_set_aside(0, 3, |n| n == 1 || n == 2).is_err());
    }

    #[test]
    fn members_and_partitions_cover_both_rings_during_a_change() {
        let ring = Ring::new(&[0, 1, 2, 3], 3, 64).unwrap();
        let target = ring.with_node_removed(1).unwrap();
        let mut l = Layout::stable(ring.clone());
        l.begin("remove node 1".into(), target, vec![1]).unwrap();
        assert_eq!(l.members(), vec![0, 1, 2, 3]);
        assert_eq!(l.partitions_of(1), ring.partitions_of(1));
        for p in l.pending() {
            l.mark_done(p);
        }
        assert!(l.partitions_of(1).is_empty());
        l.finish().unwrap();
        assert_eq!(l.members(), vec![0, 2, 3]);
    }
}
