//! A linearizability search in the style of Wing & Gong as improved by Lowe
//! (the algorithm of Knossos's `linear` and of Porcupine): walk the history's
//! call and return events in time order; linearize a call whose model step
//! accepts its output, remove it (and its return) from the list, start again
//! from the head; meeting a return whose call is not linearized yet means
//! backtracking. A cache of (set of linearized calls, model state) prunes
//! configurations already explored, which is what makes the search usable.
//!
//! Operations of unknown outcome (`info`) return at the end of time: they may
//! be linearized anywhere after their call, or not at all. The search
//! succeeds once every completed call is linearized.
//!
//! The search is bounded ([`SearchLimits`]): past the bound it answers
//! [`Linearization::Unknown`] rather than running on.

use std::collections::HashSet;
use std::fmt::Debug;
use std::hash::Hash;

/// Search steps at most, per checked history (one per model step tried).
pub const SEARCH_STEPS_MAX: u64 = 20_000_000;
/// Distinct (linearized set, state) configurations cached at most.
pub const SEARCH_STATES_MAX: usize = 2_000_000;

/// A sequential specification.
pub trait Model {
    type State: Clone + Eq + Hash + Debug;
    type Input: Debug;
    type Output: Debug;

    fn init(&self) -> Self::State;

    /// The state after `input` answered `output` in `state`, if that can
    /// happen. `output` is `None` for a call of unknown outcome.
    fn step(&self, state: &Self::State, input: &Self::Input, output: Option<&Self::Output>) -> Option<Self::State>;
}

/// One call of the history to linearize.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Call<I, O> {
    /// The caller's id for it (reported back in the verdict).
    pub id: usize,
    pub invoke_ns: u64,
    /// `None`: outcome unknown; it may take effect at any time after its
    /// invocation, or never.
    pub complete_ns: Option<u64>,
    pub input: I,
    /// `None` exactly when `complete_ns` is `None`.
    pub output: Option<O>,
}

/// How far the search may go.
#[derive(Clone, Copy, Debug)]
pub struct SearchLimits {
    pub steps_max: u64,
    pub states_max: usize,
}

impl Default for SearchLimits {
    fn default() -> Self {
        SearchLimits {
            steps_max: SEARCH_STEPS_MAX,
            states_max: SEARCH_STATES_MAX,
        }
    }
}

/// The search's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Linearization<S> {
    /// Every completed call fits one order; `order` lists the calls (their
    /// positions in the input) linearized, in that order.
    Linearizable { order: Vec<usize> },
    /// No order fits. `longest` is the longest linearizable prefix found
    /// (call positions, each with the state after it); `blocking` the
    /// completed call that could never be fitted after any such prefix.
    NotLinearizable { longest: Vec<(usize, S)>, blocking: usize },
    /// The search hit its limits first.
    Unknown { steps: u64, states: usize },
}

const NIL: usize = usize::MAX;

/// A doubly linked list of call/return events that calls can be lifted out
/// of and put back in (Knuth's dancing links).
struct Events {
    /// Event `e` (1-based; 0 is the head): a call or a return of call `call[e]`.
    call: Vec<usize>,
    is_return: Vec<bool>,
    next: Vec<usize>,
    prev: Vec<usize>,
    /// The event index of each call's call and return events.
    call_event: Vec<usize>,
    return_event: Vec<usize>,
}

impl Events {
    fn new<I, O>(calls: &[Call<I, O>]) -> Events {
        let mut order: Vec<(u64, bool, usize)> = Vec::with_capacity(calls.len() * 2);
        for (position, call) in calls.iter().enumerate() {
            order.push((call.invoke_ns, false, position));
            order.push((call.complete_ns.unwrap_or(u64::MAX), true, position));
        }
        // Calls before returns at equal times: such calls overlap, the permissive reading.
        order.sort();
        let events = order.len() + 1;
        let mut list = Events {
            call: vec![NIL; events],
            is_return: vec![false; events],
            next: vec![NIL; events],
            prev: vec![NIL; events],
            call_event: vec![NIL; calls.len()],
            return_event: vec![NIL; calls.len()],
        };
        for (slot, (_, is_return, position)) in order.into_iter().enumerate() {
            let event = slot + 1;
            list.call[event] = position;
            list.is_return[event] = is_return;
            list.prev[event] = slot;
            list.next[slot] = event;
            match is_return {
                true => list.return_event[position] = event,
                false => list.call_event[position] = event,
            }
        }
        list
    }

    fn unlink(&mut self, event: usize) {
        let (prev, next) = (self.prev[event], self.next[event]);
        self.next[prev] = next;
        if next != NIL {
            self.prev[next] = prev;
        }
    }

    fn relink(&mut self, event: usize) {
        let (prev, next) = (self.prev[event], self.next[event]);
        self.next[prev] = event;
        if next != NIL {
            self.prev[next] = event;
        }
    }

    fn lift(&mut self, call: usize) {
        self.unlink(self.call_event[call]);
        self.unlink(self.return_event[call]);
    }

    fn unlift(&mut self, call: usize) {
        self.relink(self.return_event[call]);
        self.relink(self.call_event[call]);
    }
}

/// A set of call positions as bits.
#[derive(Clone, PartialEq, Eq, Hash)]
struct Bits(Vec<u64>);

impl Bits {
    fn new(len: usize) -> Bits {
        Bits(vec![0; len.div_ceil(64)])
    }

    fn set(&mut self, bit: usize) {
        self.0[bit / 64] |= 1 << (bit % 64);
    }

    fn clear(&mut self, bit: usize) {
        self.0[bit / 64] &= !(1 << (bit % 64));
    }
}

/// Searches for a linearization of `calls` under `model`.
pub fn check<M: Model>(model: &M, calls: &[Call<M::Input, M::Output>], limits: SearchLimits) -> Linearization<M::State> {
    for call in calls {
        assert_eq!(call.complete_ns.is_none(), call.output.is_none(), "unknown outcome means no output");
    }
    let required = calls.iter().filter(|call| call.complete_ns.is_some()).count();
    let mut events = Events::new(calls);
    let mut linearized = Bits::new(calls.len());
    let mut linearized_required = 0usize;
    let mut cache: HashSet<(Bits, M::State)> = HashSet::new();
    // The calls linearized so far, each with the state before it.
    let mut stack: Vec<(usize, M::State)> = Vec::new();
    let mut longest: Vec<(usize, M::State)> = Vec::new();
    let mut state = model.init();
    let mut event = events.next[0];
    let mut steps = 0u64;
    loop {
        if linearized_required == required {
            return Linearization::Linearizable {
                order: stack.iter().map(|(call, _)| *call).collect(),
            };
        }
        steps += 1;
        if steps > limits.steps_max || cache.len() > limits.states_max {
            return Linearization::Unknown {
                steps,
                states: cache.len(),
            };
        }
        assert_ne!(event, NIL, "a completed call is left, so its return event is ahead");
        let position = events.call[event];
        let call = &calls[position];
        if !events.is_return[event] {
            if let Some(next_state) = model.step(&state, &call.input, call.output.as_ref()) {
                linearized.set(position);
                if cache.insert((linearized.clone(), next_state.clone())) {
                    stack.push((position, std::mem::replace(&mut state, next_state)));
                    linearized_required += usize::from(call.complete_ns.is_some());
                    events.lift(position);
                    if stack.len() > longest.len() {
                        longest = prefix_with_states(&stack, &state);
                    }
                    event = events.next[0];
                    continue;
                }
                linearized.clear(position);
            }
            event = events.next[event];
            continue;
        }
        // The return of a call not linearized yet: nothing before it fits here.
        assert!(call.complete_ns.is_some(), "unknown outcomes return after every completed call");
        let Some((undone, previous)) = stack.pop() else {
            let blocking = first_return_outside(calls, &longest);
            return Linearization::NotLinearizable { longest, blocking };
        };
        state = previous;
        linearized.clear(undone);
        linearized_required -= usize::from(calls[undone].complete_ns.is_some());
        events.unlift(undone);
        event = events.next[events.call_event[undone]];
    }
}

/// The stack as (call, state after it).
fn prefix_with_states<S: Clone>(stack: &[(usize, S)], current: &S) -> Vec<(usize, S)> {
    let mut prefix: Vec<(usize, S)> = Vec::with_capacity(stack.len());
    for (index, (call, _)) in stack.iter().enumerate() {
        let after = stack
            .get(index + 1)
            .map(|(_, before)| before.clone())
            .unwrap_or_else(|| current.clone());
        prefix.push((*call, after));
    }
    prefix
}

/// The completed call, outside the longest prefix, that returns first: the
/// one no extension of that prefix could fit before its return.
fn first_return_outside<I, O, S>(calls: &[Call<I, O>], longest: &[(usize, S)]) -> usize {
    let inside: HashSet<usize> = longest.iter().map(|(call, _)| *call).collect();
    (0..calls.len())
        .filter(|position| calls[*position].complete_ns.is_some() && !inside.contains(position))
        .min_by_key(|position| (calls[*position].complete_ns, *position))
        .expect("a failing search left a completed call out")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A register of one integer: write(v) and read() → v.
    struct Register;

    #[derive(Debug)]
    enum Op {
        Write(i64),
        Read,
    }

    impl Model for Register {
        type State = i64;
        type Input = Op;
        type Output = i64;

        fn init(&self) -> i64 {
            0
        }

        fn step(&self, state: &i64, input: &Op, output: Option<&i64>) -> Option<i64> {
            match input {
                Op::Write(value) => Some(*value),
                Op::Read => match output {
                    None => Some(*state),
                    Some(read) => (read == state).then_some(*state),
                },
            }
        }
    }

    fn call(id: usize, invoke_ns: u64, complete_ns: Option<u64>, input: Op, output: Option<i64>) -> Call<Op, i64> {
        Call {
            id,
            invoke_ns,
            complete_ns,
            input,
            output,
        }
    }

    #[test]
    fn concurrent_calls_may_take_either_order() {
        let calls = vec![
            call(0, 0, Some(10), Op::Write(1), Some(0)),
            call(1, 1, Some(9), Op::Read, Some(0)),
            call(2, 2, Some(8), Op::Read, Some(1)),
        ];
        assert!(matches!(
            check(&Register, &calls, SearchLimits::default()),
            Linearization::Linearizable { .. }
        ));
    }

    #[test]
    fn a_read_after_a_completed_write_must_see_it() {
        let calls = vec![
            call(0, 0, Some(10), Op::Write(1), Some(0)),
            call(1, 20, Some(30), Op::Read, Some(0)),
        ];
        match check(&Register, &calls, SearchLimits::default()) {
            Linearization::NotLinearizable { longest, blocking } => {
                assert_eq!(vec![(0, 1)], longest);
                assert_eq!(1, blocking);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_unknown_write_may_take_effect_later_or_never() {
        let later = vec![
            call(0, 0, None, Op::Write(1), None),
            call(1, 20, Some(30), Op::Read, Some(0)),
            call(2, 40, Some(50), Op::Read, Some(1)),
        ];
        assert!(matches!(
            check(&Register, &later, SearchLimits::default()),
            Linearization::Linearizable { .. }
        ));
        let never = vec![call(0, 0, None, Op::Write(1), None), call(1, 20, Some(30), Op::Read, Some(0))];
        assert!(matches!(
            check(&Register, &never, SearchLimits::default()),
            Linearization::Linearizable { .. }
        ));
        // But not before it was invoked.
        let before = vec![call(0, 100, None, Op::Write(1), None), call(1, 20, Some(30), Op::Read, Some(1))];
        assert!(matches!(
            check(&Register, &before, SearchLimits::default()),
            Linearization::NotLinearizable { .. }
        ));
    }

    #[test]
    fn the_search_gives_up_at_its_limits() {
        let calls: Vec<Call<Op, i64>> = (0..30)
            .map(|i| call(i, i as u64, None, Op::Write(i as i64), None))
            .chain([call(30, 0, Some(1_000), Op::Read, Some(-1))])
            .collect();
        let limits = SearchLimits {
            steps_max: 1_000,
            states_max: 1_000_000,
        };
        assert!(matches!(check(&Register, &calls, limits), Linearization::Unknown { .. }));
    }
}
