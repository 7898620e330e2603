//! The plan's decisions, step by step, with a seeded RNG and no network.

use std::cell::{Cell, RefCell};

use qm_api::wire::ConflictKind;
use rand::rngs::StdRng;
use rand::SeedableRng;

use super::*;
use crate::client::Consistency;
use crate::replicas::next_avoiding;

/// Three replicas by address, with a believed leader; hinted addresses join.
struct Replicas {
    addrs: RefCell<Vec<String>>,
    leader: Cell<Option<usize>>,
    /// What the plan told the set about the membership, in order.
    events: RefCell<Vec<String>>,
}

impl Replicas {
    fn three() -> Replicas {
        Replicas {
            addrs: RefCell::new(vec!["r0:1".into(), "r1:1".into(), "r2:1".into()]),
            leader: Cell::new(None),
            events: RefCell::new(Vec::new()),
        }
    }
}

impl ReplicaView for Replicas {
    fn addr(&self, index: usize) -> String {
        self.addrs.borrow()[index].clone()
    }

    fn index_of_or_add(&self, addr: &str) -> Option<usize> {
        let mut addrs = self.addrs.borrow_mut();
        Some(addrs.iter().position(|known| known == addr).unwrap_or_else(|| {
            addrs.push(addr.to_owned());
            addrs.len() - 1
        }))
    }

    fn next_avoiding(&self, index: usize, avoid: &[usize]) -> usize {
        next_avoiding(self.addrs.borrow().len(), index, avoid)
    }

    fn set_leader(&self, index: usize) {
        self.leader.set(Some(index));
    }

    fn forget_leader(&self, index: usize) {
        if self.leader.get() == Some(index) {
            self.leader.set(None);
        }
    }

    fn unreachable(&self, index: usize) {
        self.events.borrow_mut().push(format!("unreachable {index}"));
    }

    fn answered(&self, _: usize) {}

    fn redirected(&self) {
        self.events.borrow_mut().push("refresh".to_owned());
    }
}

fn config() -> ClientConfig {
    ClientConfig {
        request_timeout_ms: 5_000,
        attempt_timeout_ms: 1_000,
        retries_max: 3,
        backoff_base_ms: 50,
        backoff_max_ms: 1_000,
        ..ClientConfig::with_endpoints(["r0:1", "r1:1", "r2:1"])
    }
}

fn plan(kind: CallKind, now: Instant) -> CallPlan {
    CallPlan::new("test", kind, &config(), 0, now)
}

fn not_leader(addr: Option<&str>) -> Failure {
    Failure::NotLeader {
        leader_addr: addr.map(str::to_owned),
        leader_id: addr.map(|_| "2".to_owned()),
        maybe_applied: false,
    }
}

fn lost_leadership(addr: Option<&str>) -> Failure {
    Failure::NotLeader {
        leader_addr: addr.map(str::to_owned),
        leader_id: None,
        maybe_applied: true,
    }
}

fn refused() -> Failure {
    Failure::Retryable {
        maybe_applied: false,
        unreachable: true,
        cause: "connection refused".into(),
    }
}

fn timed_out() -> Failure {
    Failure::Retryable {
        maybe_applied: true,
        unreachable: true,
        cause: "no answer within 1000 ms".into(),
    }
}

/// The step's shape, for exact comparisons (`Error` has no `PartialEq`).
fn shape(step: &Step) -> String {
    match step {
        Step::Send(target) => format!("send {target}"),
        Step::Wait(delay, target) => format!("wait {} ms then {target}", delay.as_millis()),
        Step::Done(Error::Unknown { .. }) => "done: unknown".into(),
        Step::Done(Error::Unavailable { attempts, .. }) => format!("done: unavailable after {attempts}"),
        Step::Done(error) => format!("done: {error}"),
    }
}

#[test]
fn the_first_step_sends_to_the_first_target() {
    let now = Instant::now();

    assert_eq!("send 0", shape(&plan(CallKind::Write, now).start(now)));
}

#[test]
fn a_hint_is_followed_at_once() {
    let (now, replicas, mut rng) = (Instant::now(), Replicas::three(), StdRng::seed_from_u64(1));
    let mut plan = plan(CallKind::Write, now);
    plan.start(now);

    let step = plan.next(not_leader(Some("r2:1")), now, &mut rng, &replicas);

    assert_eq!("send 2", shape(&step));
    assert_eq!(Some(2), replicas.leader.get(), "the hinted replica is believed to lead");
}

#[test]
fn a_hint_naming_an_unknown_replica_adds_it() {
    let (now, replicas, mut rng) = (Instant::now(), Replicas::three(), StdRng::seed_from_u64(1));
    let mut plan = plan(CallKind::Write, now);
    plan.start(now);

    let step = plan.next(not_leader(Some("r3:1")), now, &mut rng, &replicas);

    assert_eq!("send 3", shape(&step));
    assert_eq!("r3:1", replicas.addr(3));
    assert_eq!(
        vec!["refresh"],
        *replicas.events.borrow(),
        "a redirect has the membership read again"
    );
}

#[test]
fn a_hint_naming_a_replica_that_failed_waits_then_retries_it() {
    let (now, replicas, mut rng) = (Instant::now(), Replicas::three(), StdRng::seed_from_u64(7));
    let mut plan = plan(CallKind::Write, now);
    plan.start(now);
    // r0 cannot be reached; the plan moves on to r1 after a backoff.
    let moved = plan.next(refused(), now, &mut rng, &replicas);
    assert!(shape(&moved).ends_with("then 1"), "{}", shape(&moved));
    assert_eq!("send 1", shape(&plan.resume(now)));

    // r1 still names r0, which failed: wait for the election, then r0 once more.
    let step = plan.next(not_leader(Some("r0:1")), now, &mut rng, &replicas);

    let Step::Wait(delay, 0) = step else {
        panic!("expected a wait before retrying r0: {}", shape(&step))
    };
    assert!(
        delay <= Duration::from_millis(50),
        "the first leader wait is at most the base: {delay:?}"
    );
    assert_eq!("send 0", shape(&plan.resume(now + delay)));
}

#[test]
fn no_hint_waits_and_asks_the_next_replica_at_most_leader_waits_max_times() {
    let (now, replicas, mut rng) = (Instant::now(), Replicas::three(), StdRng::seed_from_u64(3));
    let config = ClientConfig {
        request_timeout_ms: 3_600_000,
        ..config()
    };
    let mut plan = CallPlan::new("test", CallKind::Write, &config, 0, now);
    let mut step = plan.start(now);
    let mut targets = Vec::new();

    for _ in 0..=LEADER_WAITS_MAX {
        assert!(matches!(step, Step::Send(_)), "{}", shape(&step));
        step = plan.next(not_leader(None), now, &mut rng, &replicas);
        if let Step::Wait(_, target) = step {
            targets.push(target);
            step = plan.resume(now);
        }
    }

    assert_eq!(LEADER_WAITS_MAX as usize, targets.len());
    assert_eq!(vec![1, 2, 0, 1], targets[..4].to_vec(), "round the replicas");
    assert_eq!(
        format!("done: unavailable after {}", LEADER_WAITS_MAX + 1),
        shape(&step),
        "nothing happened: no replica took the write"
    );
}

#[test]
fn a_timed_out_write_is_unknown() {
    let (now, replicas, mut rng) = (Instant::now(), Replicas::three(), StdRng::seed_from_u64(5));
    let mut plan = plan(CallKind::Write, now);
    let mut step = plan.start(now);

    while let Step::Send(_) = step {
        step = match plan.next(timed_out(), now, &mut rng, &replicas) {
            Step::Wait(..) => plan.resume(now),
            done => done,
        };
    }

    assert_eq!("done: unknown", shape(&step));
}

#[test]
fn a_timed_out_read_is_unavailable() {
    let (now, replicas, mut rng) = (Instant::now(), Replicas::three(), StdRng::seed_from_u64(5));
    let mut plan = plan(CallKind::Read(Consistency::Linearizable), now);
    let mut step = plan.start(now);

    while let Step::Send(_) = step {
        step = match plan.next(timed_out(), now, &mut rng, &replicas) {
            Step::Wait(..) => plan.resume(now),
            done => done,
        };
    }

    assert_eq!("done: unavailable after 4", shape(&step), "retries_max 3: four attempts");
}

#[test]
fn refused_connections_everywhere_are_unavailable_after_retries_max() {
    let (now, replicas, mut rng) = (Instant::now(), Replicas::three(), StdRng::seed_from_u64(9));
    let mut plan = plan(CallKind::Write, now);
    let mut step = plan.start(now);
    let mut sent = Vec::new();

    while let Step::Send(target) = step {
        sent.push(target);
        step = match plan.next(refused(), now, &mut rng, &replicas) {
            Step::Wait(..) => plan.resume(now),
            done => done,
        };
    }

    assert_eq!(vec![0, 1, 2, 0], sent, "each replica once, then round again");
    assert_eq!("done: unavailable after 4", shape(&step), "a refused connection applied nothing");
    assert_eq!(
        vec!["unreachable 0", "unreachable 1", "unreachable 2", "unreachable 0"],
        *replicas.events.borrow(),
        "every replica found gone is reported to the set"
    );
}

#[test]
fn a_lost_leadership_then_failures_is_unknown_not_unavailable() {
    let (now, replicas, mut rng) = (Instant::now(), Replicas::three(), StdRng::seed_from_u64(2));
    let mut plan = plan(CallKind::Write, now);
    plan.start(now);
    // The leader had the write in its log when it lost its leadership; the
    // replica it names cannot be reached, nor can any other.
    let mut step = plan.next(lost_leadership(Some("r1:1")), now, &mut rng, &replicas);

    while let Step::Send(_) = step {
        step = match plan.next(refused(), now, &mut rng, &replicas) {
            Step::Wait(..) => plan.resume(now),
            done => done,
        };
    }

    assert_eq!("done: unknown", shape(&step));
}

#[test]
fn not_found_after_an_attempt_that_may_have_applied_is_unknown() {
    let (now, replicas, mut rng) = (Instant::now(), Replicas::three(), StdRng::seed_from_u64(4));
    let mut plan = plan(CallKind::Write, now);
    plan.start(now);
    plan.next(timed_out(), now, &mut rng, &replicas);
    plan.resume(now);

    let step = plan.next(
        Failure::Final(Error::NotFound {
            message: "unknown provider node_1".into(),
        }),
        now,
        &mut rng,
        &replicas,
    );

    assert_eq!("done: unknown", shape(&step), "the first attempt may have deregistered it");
}

#[test]
fn a_final_answer_on_the_first_attempt_is_given_as_it_is() {
    let (now, replicas, mut rng) = (Instant::now(), Replicas::three(), StdRng::seed_from_u64(4));
    let mut plan = plan(CallKind::Write, now);
    plan.start(now);
    replicas.set_leader(0);

    let step = plan.next(
        Failure::Final(Error::Conflict {
            kind: ConflictKind::AlreadyExists,
            message: "request_id x was already used".into(),
        }),
        now,
        &mut rng,
        &replicas,
    );

    assert_eq!("done: request_id x was already used", shape(&step));
    assert_eq!(Some(0), replicas.leader.get(), "a final answer says nothing against the leader");
}

#[test]
fn a_passed_deadline_ends_the_call_and_waits_never_run_past_it() {
    let (now, replicas, mut rng) = (Instant::now(), Replicas::three(), StdRng::seed_from_u64(8));
    let mut plan = plan(CallKind::Write, now);
    plan.start(now);
    let almost = now + Duration::from_millis(4_990);

    let step = plan.next(timed_out(), almost, &mut rng, &replicas);

    let Step::Wait(delay, _) = step else {
        panic!("a wait: {}", shape(&step))
    };
    assert!(delay <= Duration::from_millis(10), "{delay:?} runs past the deadline");
    assert_eq!("done: unknown", shape(&plan.resume(now + Duration::from_secs(5))));
}

#[test]
fn redirects_stop_at_redirects_max() {
    let (now, replicas, mut rng) = (Instant::now(), Replicas::three(), StdRng::seed_from_u64(6));
    let mut plan = plan(CallKind::Write, now);
    plan.start(now);
    let mut redirects = 0;

    // Two replicas that name each other, as during an election.
    loop {
        let hint = if plan.target == 1 { "r2:1" } else { "r1:1" };
        match plan.next(not_leader(Some(hint)), now, &mut rng, &replicas) {
            Step::Send(_) => redirects += 1,
            other => {
                assert!(matches!(other, Step::Wait(..)), "{}", shape(&other));
                break;
            }
        }
    }

    assert_eq!(REDIRECTS_MAX, redirects);
}

#[test]
fn a_stale_read_answered_proves_no_leader() {
    let (now, replicas) = (Instant::now(), Replicas::three());
    let mut stale = plan(CallKind::Read(Consistency::Stale), now);
    stale.start(now);
    stale.succeeded(&replicas);
    assert_eq!(None, replicas.leader.get());

    let mut write = plan(CallKind::Write, now);
    write.start(now);
    write.succeeded(&replicas);
    assert_eq!(Some(0), replicas.leader.get());
}

#[test]
fn the_plaintext_hint_is_added_to_a_tls_symptom() {
    let (now, replicas, mut rng) = (Instant::now(), Replicas::three(), StdRng::seed_from_u64(1));
    let config = ClientConfig {
        retries_max: 0,
        ..config()
    };
    let mut plan = CallPlan::new("test", CallKind::Read(Consistency::Linearizable), &config, 0, now);
    plan.start(now);

    let step = plan.next(
        Failure::Retryable {
            maybe_applied: false,
            unreachable: true,
            cause: "connection reset".into(),
        },
        now,
        &mut rng,
        &replicas,
    );

    let Step::Done(Error::Unavailable { last_cause, .. }) = step else {
        panic!("unavailable: {}", shape(&step))
    };
    assert!(last_cause.ends_with(PLAINTEXT_AGAINST_TLS_HINT), "{last_cause}");
}
