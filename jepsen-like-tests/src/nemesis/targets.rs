//! Which replicas a kill or a pause hits: the leader alone half the time
//! (leader failover is where consensus bugs live), otherwise one random
//! replica or a random minority; or, with `--targets leader`, the leader
//! every time. Never a majority: the cluster is meant to stay available
//! through every fault the nemesis injects.

use rand::seq::SliceRandom;
use rand::Rng;

use crate::config::ProcessTargets;

/// Picks the replicas to kill or pause among `healthy` (running, unpaused
/// members). With [`ProcessTargets::Leader`], the leader alone, or nobody
/// when no healthy replica leads (a fault skipped is a failover not measured).
pub fn pick(targets: ProcessTargets, healthy: &[u64], members: usize, leader: Option<u64>, rng: &mut impl Rng) -> Vec<u64> {
    let minority = members.saturating_sub(1) / 2;
    // Replicas already down count against the minority.
    let down = members.saturating_sub(healthy.len());
    let budget = minority.saturating_sub(down);
    if budget == 0 || healthy.is_empty() {
        return Vec::new();
    }
    let leader = leader.filter(|leader| healthy.contains(leader));
    if targets == ProcessTargets::Leader {
        return leader.into_iter().collect();
    }
    let mut shuffled = healthy.to_vec();
    shuffled.shuffle(rng);
    let mut picked = match (rng.gen_range(0..4), leader) {
        (0 | 1, Some(leader)) => vec![leader],
        (3, _) => {
            let size = rng.gen_range(1..=budget);
            shuffled[..size].to_vec()
        }
        _ => vec![shuffled[0]],
    };
    picked.sort_unstable();
    picked
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    use super::*;

    #[test]
    fn never_more_than_a_minority_and_often_the_leader() {
        let mut rng = StdRng::seed_from_u64(5);
        let mut leader_hits = 0;
        for _ in 0..400 {
            let picked = pick(ProcessTargets::Mixed, &[1, 2, 3, 4, 5], 5, Some(4), &mut rng);
            assert!((1..=2).contains(&picked.len()), "{picked:?}");
            leader_hits += usize::from(picked.contains(&4));
        }
        assert!(leader_hits > 200, "{leader_hits}");
        assert_eq!(1, pick(ProcessTargets::Mixed, &[1, 2, 3], 3, None, &mut rng).len());
    }

    #[test]
    fn replicas_already_down_use_up_the_minority() {
        let mut rng = StdRng::seed_from_u64(5);
        assert_eq!(Vec::<u64>::new(), pick(ProcessTargets::Mixed, &[1, 2], 3, Some(1), &mut rng));
        for _ in 0..50 {
            assert_eq!(1, pick(ProcessTargets::Mixed, &[1, 2, 3, 4], 5, Some(1), &mut rng).len());
        }
    }

    #[test]
    fn leader_targets_hit_the_healthy_leader_or_nobody() {
        let mut rng = StdRng::seed_from_u64(5);
        for _ in 0..50 {
            assert_eq!(vec![4], pick(ProcessTargets::Leader, &[1, 2, 3, 4, 5], 5, Some(4), &mut rng));
        }
        assert_eq!(Vec::<u64>::new(), pick(ProcessTargets::Leader, &[1, 2, 3], 3, None, &mut rng));
        // A leader already down (or paused) is not healthy: nothing to hit.
        assert_eq!(Vec::<u64>::new(), pick(ProcessTargets::Leader, &[1, 2, 3, 4], 5, Some(5), &mut rng));
    }
}
