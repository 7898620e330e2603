//! Linearizability of the register workload as a whole table: what the
//! unit-by-unit search cannot decide.
//!
//! A read returns the holders of every unit at one instant. Split per unit
//! (the fast path in [`super::linearizability`]) each unit's part may fit
//! its own history while the read as a whole fits none: one unit as it was
//! before a write, another as it was after a later write (issue 24, found by
//! an independent checker). So when every unit passes on its own and some
//! read spans several units, the units' calls are searched together, each
//! read one call against the whole table's state, with [`TableLock`]: the
//! units' [`UnitLock`]s side by side. The search is bounded
//! ([`WHOLE_TABLE_STEPS_MAX`], [`WHOLE_TABLE_STATES_MAX`]: a table's states
//! are larger than a unit's) and answers "unknown" past the bound.
//!
//! ```text
//!  unit histories (per-unit numbering r0, r1, ...) ──▶ every call of every unit, tagged with its unit
//!        reads: the per-unit parts of one read (same history ops) ──▶ one call, all units at once
//!  wgl::check(TableLock) ──▶ linearizable | not (the read, or the write, that fits nowhere) | unknown
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;

use super::linearizability::{CallOrigin, LockInput, LockOutput, LockState, UnitHistory, UnitLock};
use super::wgl::{self, Call, Linearization, Model, SearchLimits};

/// Search steps at most for the whole table.
pub const WHOLE_TABLE_STEPS_MAX: u64 = 10_000_000;
/// Configurations cached at most for the whole table. Each holds every
/// unit's state (shared between configurations where unchanged), so this
/// is lower than a unit's bound: about 100 MB at 20 units of 200 requests.
pub const WHOLE_TABLE_STATES_MAX: usize = 250_000;

/// A call of the table model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TableInput {
    /// A call on one unit (by its position among the unit histories).
    Unit(usize, LockInput),
    /// A read of every unit it names at one instant.
    Read,
}

/// What a table call answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TableOutput {
    Unit(LockOutput),
    /// Per unit (position): the holders read.
    Holders(Vec<(usize, Vec<u32>)>),
}

/// The units' locks side by side; a unit's state is shared between search
/// configurations until a call changes it.
pub struct TableLock {
    pub units: Vec<UnitLock>,
}

impl Model for TableLock {
    type State = Vec<Arc<LockState>>;
    type Input = TableInput;
    type Output = TableOutput;

    fn init(&self) -> Self::State {
        self.units.iter().map(|unit| Arc::new(unit.init())).collect()
    }

    fn step(&self, state: &Self::State, input: &TableInput, output: Option<&TableOutput>) -> Option<Self::State> {
        match input {
            TableInput::Unit(unit, input) => {
                let output = match output {
                    Some(TableOutput::Unit(output)) => Some(output),
                    Some(TableOutput::Holders(_)) => return None,
                    None => None,
                };
                let next = self.units[*unit].step(&state[*unit], input, output)?;
                let mut table = state.clone();
                table[*unit] = Arc::new(next);
                Some(table)
            }
            TableInput::Read => match output {
                Some(TableOutput::Holders(read)) => read
                    .iter()
                    .all(|(unit, holders)| *holders == state[*unit].holder.into_iter().collect::<Vec<_>>())
                    .then(|| state.clone()),
                _ => None,
            },
        }
    }
}

/// Every unit's calls as one history, each read one call.
pub struct TableHistory {
    pub calls: Vec<Call<TableInput, TableOutput>>,
    pub origins: Vec<CallOrigin>,
    /// Reads that named more than one unit: without any, the units are
    /// independent and the per-unit verdicts are the table's.
    pub multi_unit_reads: usize,
}

/// Puts the units' histories together; a read's per-unit calls (the same
/// history operations) become one call.
pub fn table_history(units: &[UnitHistory]) -> TableHistory {
    let mut calls = Vec::new();
    let mut origins = Vec::new();
    // A read's history ops → its position in `calls`.
    let mut reads: BTreeMap<Vec<u64>, usize> = BTreeMap::new();
    for (unit_position, unit) in units.iter().enumerate() {
        for (call, origin) in unit.calls.iter().zip(&unit.origins) {
            let LockInput::Read = call.input else {
                calls.push(Call {
                    id: calls.len(),
                    invoke_ns: call.invoke_ns,
                    complete_ns: call.complete_ns,
                    input: TableInput::Unit(unit_position, call.input.clone()),
                    output: call.output.clone().map(TableOutput::Unit),
                });
                origins.push(CallOrigin {
                    label: format!("{}: {}", unit.unit, origin.label),
                    ..origin.clone()
                });
                continue;
            };
            let Some(LockOutput::Holders(holders)) = &call.output else {
                continue;
            };
            let position = *reads.entry(origin.ops.clone()).or_insert_with(|| {
                calls.push(Call {
                    id: calls.len(),
                    invoke_ns: call.invoke_ns,
                    complete_ns: call.complete_ns,
                    input: TableInput::Read,
                    output: Some(TableOutput::Holders(Vec::new())),
                });
                let verb = origin.label.split(" -> ").next().unwrap_or("read");
                origins.push(CallOrigin {
                    label: format!("{verb} ->"),
                    ..origin.clone()
                });
                calls.len() - 1
            });
            if let Some(TableOutput::Holders(read)) = &mut calls[position].output {
                read.push((unit_position, holders.clone()));
            }
            let names: Vec<String> = holders.iter().map(|holder| UnitHistory::request_name(*holder)).collect();
            origins[position].label.push_str(&format!(" {}: [{}]", unit.unit, names.join(" ")));
        }
    }
    let multi_unit_reads = calls
        .iter()
        .filter(|call| matches!(&call.output, Some(TableOutput::Holders(read)) if read.len() > 1))
        .count();
    TableHistory {
        calls,
        origins,
        multi_unit_reads,
    }
}

/// The table's bounds, or `limits` if they are tighter (tests).
pub fn table_limits(limits: SearchLimits) -> SearchLimits {
    SearchLimits {
        steps_max: limits.steps_max.min(WHOLE_TABLE_STEPS_MAX),
        states_max: limits.states_max.min(WHOLE_TABLE_STATES_MAX),
    }
}

/// Searches the table history.
pub fn check(units: &[UnitHistory], table: &TableHistory, limits: SearchLimits) -> Linearization<Vec<Arc<LockState>>> {
    let model = TableLock {
        units: units
            .iter()
            .map(|unit| UnitLock {
                requests: unit.request_ids.len(),
            })
            .collect(),
    };
    wgl::check(&model, &table.calls, table_limits(limits))
}

/// The table's state as a person reads it: each unit that is not free.
pub fn describe(units: &[UnitHistory], state: &[Arc<LockState>]) -> String {
    let busy: Vec<String> = units
        .iter()
        .zip(state)
        .filter(|(_, unit)| unit.holder.is_some() || !unit.queue.is_empty())
        .map(|(history, unit)| format!("{} {}", history.unit, UnitHistory::describe(unit)))
        .collect();
    match busy.is_empty() {
        true => "every unit free".to_owned(),
        false => busy.join("; "),
    }
}

/// The fast path: the units' own linearizations (`orders`: each unit's call
/// positions in order), put together on one time line. Every call gets a
/// point within its interval, increasing along its unit's order, and every
/// read of several units the same point in each (the latest of its
/// earliest points in each unit). If that works, sorting all calls by
/// their points is a linearization of the whole table, so it is valid;
/// if not, nothing is decided (the search decides).
pub fn merge_linearizations(units: &[UnitHistory], orders: &[Vec<usize>]) -> bool {
    assert_eq!(units.len(), orders.len(), "one linearization per unit");
    // A read's point: the latest of its earliest points over its units.
    let mut read_points: BTreeMap<&[u64], u64> = BTreeMap::new();
    for (unit, order) in units.iter().zip(orders) {
        let mut previous: Option<u64> = None;
        for position in order {
            let call = &unit.calls[*position];
            let point = earliest_after(previous, call.invoke_ns);
            if let LockInput::Read = call.input {
                let slot = read_points.entry(&unit.origins[*position].ops).or_insert(0);
                *slot = (*slot).max(point);
            }
            previous = Some(point);
        }
    }
    // Every unit's order with the reads pinned there.
    units.iter().zip(orders).all(|(unit, order)| {
        let mut previous: Option<u64> = None;
        order.iter().all(|position| {
            let call = &unit.calls[*position];
            let latest = call.complete_ns.unwrap_or(u64::MAX);
            let point = match call.input {
                LockInput::Read => read_points[unit.origins[*position].ops.as_slice()],
                _ => earliest_after(previous, call.invoke_ns),
            };
            let fits = point >= call.invoke_ns && point <= latest && previous.is_none_or(|previous| point > previous);
            previous = Some(point);
            fits
        })
    })
}

/// The earliest point after `previous` at or after `invoke_ns`.
fn earliest_after(previous: Option<u64>, invoke_ns: u64) -> u64 {
    previous.map_or(invoke_ns, |previous| invoke_ns.max(previous + 1))
}
