//! Partition shapes (grudges), as Jepsen's `nemesis/partition-*` draws them,
//! turned into the directed links the proxies cut or slow down.
//!
//! A grudge says, for each replica, whose bytes it no longer receives. A
//! "complete" grudge between components cuts every link across them both
//! ways; the majorities ring and the bridge are not complete, which is what
//! makes them interesting (every node sees a majority, yet no two agree on
//! which).

use std::collections::{BTreeMap, BTreeSet};

use rand::seq::SliceRandom;
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::proxy::{Link, LinkState};

/// Smallest and largest delay of the slow-links shape, milliseconds.
pub const SLOW_LINK_DELAY_MS: (u64, u64) = (10, 80);

/// Which partition to draw.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PartitionShape {
    /// Random halves: a minority and a majority that cannot talk.
    Halves,
    /// The leader alone on one side.
    IsolateLeader,
    /// Two halves and one node that talks to both.
    Bridge,
    /// Every node sees a majority, no two see the same one.
    MajoritiesRing,
    /// Nothing cut; every link delayed a random amount.
    SlowLinks,
}

impl PartitionShape {
    pub const ALL: [PartitionShape; 5] = [
        PartitionShape::Halves,
        PartitionShape::IsolateLeader,
        PartitionShape::Bridge,
        PartitionShape::MajoritiesRing,
        PartitionShape::SlowLinks,
    ];

    pub fn name(self) -> &'static str {
        match self {
            PartitionShape::Halves => "halves",
            PartitionShape::IsolateLeader => "isolate-leader",
            PartitionShape::Bridge => "bridge",
            PartitionShape::MajoritiesRing => "majorities-ring",
            PartitionShape::SlowLinks => "slow-links",
        }
    }
}

/// A drawn partition: the links to set, the replicas left without a
/// majority (cut off), and a description for the history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Partition {
    pub links: LinkState,
    pub cut_off: Vec<u64>,
    pub description: String,
}

/// Draws `shape` over `nodes` (the members), using `leader` when it matters.
pub fn draw(shape: PartitionShape, nodes: &[u64], leader: Option<u64>, rng: &mut impl Rng) -> Partition {
    assert!(!nodes.is_empty(), "a partition needs nodes");
    let mut shuffled = nodes.to_vec();
    shuffled.shuffle(rng);
    match shape {
        PartitionShape::Halves => {
            let (minority, majority) = shuffled.split_at(shuffled.len() / 2);
            components(&[minority.to_vec(), majority.to_vec()], shape)
        }
        PartitionShape::IsolateLeader => {
            let alone = leader.filter(|leader| nodes.contains(leader)).unwrap_or(shuffled[0]);
            let rest: Vec<u64> = shuffled.iter().copied().filter(|node| *node != alone).collect();
            components(&[vec![alone], rest], shape)
        }
        PartitionShape::Bridge => bridge(&shuffled),
        PartitionShape::MajoritiesRing => majorities_ring(&shuffled),
        PartitionShape::SlowLinks => {
            let mut delay_ms = BTreeMap::new();
            for from in nodes {
                for to in nodes.iter().filter(|to| *to != from) {
                    delay_ms.insert((*from, *to), rng.gen_range(SLOW_LINK_DELAY_MS.0..=SLOW_LINK_DELAY_MS.1));
                }
            }
            Partition {
                description: format!(
                    "{}: every link delayed {}-{} ms",
                    shape.name(),
                    SLOW_LINK_DELAY_MS.0,
                    SLOW_LINK_DELAY_MS.1
                ),
                links: LinkState {
                    cut: BTreeSet::new(),
                    delay_ms,
                },
                cut_off: Vec::new(),
            }
        }
    }
}

/// Cuts every link between different components, both ways.
fn components(parts: &[Vec<u64>], shape: PartitionShape) -> Partition {
    let mut cut = BTreeSet::new();
    for (i, part) in parts.iter().enumerate() {
        for other in parts.iter().skip(i + 1) {
            for a in part {
                for b in other {
                    cut.insert((*a, *b));
                    cut.insert((*b, *a));
                }
            }
        }
    }
    let total: usize = parts.iter().map(Vec::len).sum();
    let cut_off: Vec<u64> = parts.iter().filter(|part| part.len() * 2 <= total).flatten().copied().collect();
    let description = format!(
        "{}: {}",
        shape.name(),
        parts.iter().map(|part| format!("{part:?}")).collect::<Vec<_>>().join(" | ")
    );
    Partition {
        links: LinkState {
            cut,
            delay_ms: BTreeMap::new(),
        },
        cut_off,
        description,
    }
}

/// Jepsen's `bridge`: halves, except that the first node of the second half
/// talks to everyone.
fn bridge(shuffled: &[u64]) -> Partition {
    let (first, second) = shuffled.split_at(shuffled.len() / 2);
    let Some((&bridge, rest)) = second.split_first() else {
        return components(&[shuffled.to_vec()], PartitionShape::Bridge);
    };
    let mut partition = components(&[first.to_vec(), rest.to_vec()], PartitionShape::Bridge);
    partition.description = format!("bridge: {first:?} | {bridge} | {rest:?}");
    // With the bridge, each side reaches a majority (for 3 and 5 nodes): no
    // node is cut off, yet the two sides cannot hear each other.
    partition.cut_off = Vec::new();
    partition
}

/// Jepsen's `majorities-ring-perfect`: a shuffled ring; each window of a
/// majority's size is the majority its middle node still hears.
fn majorities_ring(shuffled: &[u64]) -> Partition {
    let n = shuffled.len();
    let majority = n / 2 + 1;
    let mut cut: BTreeSet<Link> = BTreeSet::new();
    let mut hears = Vec::new();
    for start in 0..n {
        let window: Vec<u64> = (0..majority).map(|offset| shuffled[(start + offset) % n]).collect();
        let node = window[majority / 2];
        for other in shuffled.iter().filter(|other| !window.contains(other)) {
            cut.insert((*other, node));
        }
        hears.push(format!("{node}<-{window:?}"));
    }
    Partition {
        links: LinkState {
            cut,
            delay_ms: BTreeMap::new(),
        },
        cut_off: Vec::new(),
        description: format!("majorities-ring: {}", hears.join(" ")),
    }
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    use super::*;

    fn heard_by(partition: &Partition, node: u64, nodes: &[u64]) -> BTreeSet<u64> {
        nodes
            .iter()
            .copied()
            .filter(|from| *from == node || !partition.links.cut.contains(&(*from, node)))
            .collect()
    }

    #[test]
    fn halves_cut_a_minority_off_both_ways() {
        let nodes = [1, 2, 3, 4, 5];
        let partition = draw(PartitionShape::Halves, &nodes, None, &mut StdRng::seed_from_u64(1));
        assert_eq!(2, partition.cut_off.len());
        assert_eq!(2 * 2 * 3, partition.links.cut.len(), "every cross link, both ways");
        for node in partition.cut_off.iter() {
            assert_eq!(2, heard_by(&partition, *node, &nodes).len());
        }
    }

    #[test]
    fn the_isolated_leader_hears_nobody() {
        let nodes = [1, 2, 3];
        let partition = draw(PartitionShape::IsolateLeader, &nodes, Some(2), &mut StdRng::seed_from_u64(1));
        assert_eq!(vec![2], partition.cut_off);
        assert_eq!(BTreeSet::from([2]), heard_by(&partition, 2, &nodes));
        assert_eq!(BTreeSet::from([1, 3]), heard_by(&partition, 1, &nodes));
    }

    #[test]
    fn the_bridge_hears_everyone_and_the_sides_do_not_hear_each_other() {
        let nodes = [1, 2, 3, 4, 5];
        let partition = draw(PartitionShape::Bridge, &nodes, None, &mut StdRng::seed_from_u64(3));
        let bridge = nodes
            .iter()
            .copied()
            .find(|node| heard_by(&partition, *node, &nodes).len() == 5)
            .expect("one node hears all");
        for node in nodes.iter().filter(|node| **node != bridge) {
            assert_eq!(3, heard_by(&partition, *node, &nodes).len(), "its side and the bridge");
        }
    }

    #[test]
    fn in_the_ring_everyone_hears_a_majority_and_no_two_the_same() {
        for nodes in [vec![1, 2, 3], vec![1, 2, 3, 4, 5]] {
            let partition = draw(PartitionShape::MajoritiesRing, &nodes, None, &mut StdRng::seed_from_u64(9));
            let heard: Vec<BTreeSet<u64>> = nodes.iter().map(|node| heard_by(&partition, *node, &nodes)).collect();
            for set in &heard {
                assert_eq!(nodes.len() / 2 + 1, set.len(), "{partition:?}");
            }
            let distinct: BTreeSet<&BTreeSet<u64>> = heard.iter().collect();
            assert_eq!(nodes.len(), distinct.len(), "{partition:?}");
        }
    }

    #[test]
    fn slow_links_cut_nothing_and_delay_every_link() {
        let nodes = [1, 2, 3];
        let partition = draw(PartitionShape::SlowLinks, &nodes, None, &mut StdRng::seed_from_u64(1));
        assert!(partition.links.cut.is_empty());
        assert_eq!(6, partition.links.delay_ms.len());
        assert!(partition
            .links
            .delay_ms
            .values()
            .all(|ms| (SLOW_LINK_DELAY_MS.0..=SLOW_LINK_DELAY_MS.1).contains(ms)));
    }
}
