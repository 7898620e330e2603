//! Where a table's heap bytes go, structure by structure (issue 23).
//!
//! [`AllocationTable::heap_bytes_by_structure`] takes the table apart one
//! structure at a time and asks the caller's allocator how many bytes each
//! step gave back; `examples/memory_breakdown.rs` wraps the system
//! allocator in a counter and prints the result. Exact (the bytes asked of
//! the allocator, before its size classes round them up), repeatable and
//! without a profiler; measuring only, never part of applying a command.
//! A [`Name`] shared by several structures is booked to the one dropped
//! last: a unit's id and kind to the grants on it, as the providers go first.

use std::mem;
use std::sync::Arc;

use super::AllocationTable;
use crate::name::Name;

/// Reads the allocator's live bytes before and after each step.
struct Meter<'a> {
    live_bytes: &'a dyn Fn() -> usize,
    last: usize,
    parts: Vec<(&'static str, usize)>,
}

impl Meter<'_> {
    /// Books what was freed since the last reading under `name`.
    fn freed(&mut self, name: &'static str) {
        let now = (self.live_bytes)();
        self.parts.push((name, self.last.saturating_sub(now)));
        self.last = now;
    }
}

impl AllocationTable {
    /// Consumes the table, freeing it one structure at a time, and returns
    /// the heap bytes each structure held, as `live_bytes` (the caller's
    /// allocator's count of bytes allocated and not yet freed) saw them go.
    /// Records shared with a copy or an answer are copied first (so drop
    /// those before). For measurements only: `examples/memory_breakdown.rs`.
    #[doc(hidden)]
    pub fn heap_bytes_by_structure(mut self, live_bytes: &dyn Fn() -> usize) -> Vec<(&'static str, usize)> {
        // Unshare everything first, so the copies are not booked as frees.
        for provider in self.providers.values_mut() {
            Arc::make_mut(provider);
        }
        self.requests.records_mut().for_each(drop);
        let mut meter = Meter {
            live_bytes,
            last: live_bytes(),
            parts: Vec::new(),
        };

        drop(mem::take(&mut self.index.allocation_to_request));
        meter.freed("index: allocation id -> request id");
        drop(mem::take(&mut self.index.by_owner));
        meter.freed("index: by owner (namespace, requester)");
        drop(mem::take(&mut self.index.by_provider));
        meter.freed("index: by provider");
        drop(mem::take(&mut self.index.leases));
        meter.freed("index: leases");
        drop(mem::take(&mut self.index.free_by_kind));
        drop(mem::take(&mut self.index.capacity_by_kind));
        meter.freed("index: free and capacity by kind");
        drop(mem::take(&mut self.index));
        meter.freed("index: queue, deadlines, finished, held, the rest");

        drop(mem::take(&mut self.history));
        meter.freed("event history");

        for provider in self.providers.values_mut().map(Arc::make_mut) {
            drop(mem::take(&mut provider.kinds));
        }
        meter.freed("providers: kind totals and free units (derived)");
        for provider in self.providers.values_mut().map(Arc::make_mut) {
            for resource in provider.resources.values_mut() {
                drop(mem::take(&mut resource.holders));
            }
        }
        meter.freed("providers: unit holders");
        drop(mem::take(&mut self.providers));
        meter.freed("providers: units, labels, the rest");

        for record in self.requests.records_mut() {
            drop(record.rare.take());
        }
        meter.freed("records: rare fields (reason, finish time, move)");
        for record in self.requests.records_mut() {
            if let Some(placement) = &mut record.placement {
                drop(mem::take(&mut placement.grants));
            }
        }
        meter.freed("records: grants (vector, resource id, kind)");
        for record in self.requests.records_mut() {
            drop(record.placement.take());
        }
        meter.freed("records: placement's provider id");
        // The empty name allocates nothing, so each record's is swapped for
        // it and only the names themselves are booked as freed.
        let empty = Name::default();
        for record in self.requests.records_mut() {
            drop(mem::replace(&mut record.request.requester_id, empty.clone()));
            drop(mem::replace(&mut record.request.namespace, empty.clone()));
        }
        meter.freed("records: requester and namespace");
        for record in self.requests.records_mut() {
            drop(mem::take(&mut record.request.requirements));
        }
        meter.freed("records: requirements (vector, kind)");
        for record in self.requests.records_mut() {
            drop(mem::take(&mut record.request.constraints));
        }
        meter.freed("records: constraints");
        drop(mem::take(&mut self.requests));
        meter.freed("records: inline (Arc'd) and the request map's nodes");

        let Meter { mut parts, .. } = meter;
        let before_rest = live_bytes();
        drop(self);
        parts.push(("the rest of the table", before_rest.saturating_sub(live_bytes())));
        parts
    }
}
