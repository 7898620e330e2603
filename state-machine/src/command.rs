//! Commands: the log entries the table applies, and what they answer.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::CommandError;
use crate::event::Event;
use crate::provider::{ProviderRegistration, ProviderStatus};
use crate::record::RequestRecord;
use crate::request::AllocationRequest;
use crate::table::Cursor;

/// A command with the leader's clock reading. Time enters the table only
/// here; the table never goes backwards (it keeps the largest `now_ms` seen),
/// so a new leader with a slower clock cannot un-expire anything.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StampedCommand {
    pub now_ms: u64,
    pub command: Command,
}

impl StampedCommand {
    pub fn new(now_ms: u64, command: Command) -> Self {
        StampedCommand { now_ms, command }
    }
}

/// Everything that can change the table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Register a new provider, or update one already registered (labels
    /// replaced, units added or removed if free). A failed provider that
    /// registers again is back.
    RegisterProvider(ProviderRegistration),
    /// Move its allocations elsewhere (or queue them), then forget it.
    DeregisterProvider {
        provider_id: String,
    },
    Allocate(AllocationRequest),
    /// Release by allocation id or request id; cancels a queued request.
    /// Releasing again answers the same record.
    Release {
        id: Uuid,
    },
    /// Extend a lease by its TTL from now; takes either id.
    RenewLease {
        id: Uuid,
    },
    /// Expire leases and reject queued requests whose deadlines passed.
    Tick,
    /// Proposed by the leader when a provider misses heartbeats.
    ProviderFailed {
        provider_id: String,
    },
    /// Proposed by the leader when a failed provider heartbeats again.
    ProviderRecovered {
        provider_id: String,
    },
    /// Proposed once by a new leader: every lease gets a fresh full TTL, so
    /// renewals lost during the election do not expire anything.
    RefreshLeases,
    /// The provider's agent confirms an allocation placed on it.
    ConfirmAllocation {
        allocation_id: Uuid,
        provider_id: String,
    },
    /// The provider's agent confirms it let go of a released allocation.
    ConfirmDeallocation {
        allocation_id: Uuid,
        provider_id: String,
    },
    /// A consumer of the event history (the broker bridge) takes or keeps
    /// the named cursor and moves it up to `revision`; see
    /// [`crate::table::Cursor`]. Appended last: entries already in a log
    /// keep their encoding.
    AdvanceCursor {
        name: String,
        holder: String,
        revision: u64,
        hold_ms: u64,
    },
}

impl Command {
    /// The operation's name for logs and metrics.
    pub fn operation_type(&self) -> &'static str {
        match self {
            Command::RegisterProvider(_) => "register_provider",
            Command::DeregisterProvider { .. } => "deregister_provider",
            Command::Allocate(_) => "allocate",
            Command::Release { .. } => "release",
            Command::RenewLease { .. } => "renew_lease",
            Command::Tick => "tick",
            Command::ProviderFailed { .. } => "provider_failed",
            Command::ProviderRecovered { .. } => "provider_recovered",
            Command::RefreshLeases => "refresh_leases",
            Command::ConfirmAllocation { .. } => "confirm_allocation",
            Command::ConfirmDeallocation { .. } => "confirm_deallocation",
            Command::AdvanceCursor { .. } => "advance_cursor",
        }
    }
}

/// A successful command's answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandResponse {
    /// Allocate, release, renew and confirmations answer with the request's record.
    Request(Arc<RequestRecord>),
    Provider {
        provider_id: String,
        status: ProviderStatus,
        resources: u64,
    },
    ProviderRemoved {
        provider_id: String,
    },
    Ticked {
        expired: u64,
        rejected: u64,
    },
    LeasesRefreshed {
        leases: u64,
    },
    /// The cursor after an advance; held by someone else when its holder
    /// is not the caller.
    Cursor(Cursor),
}

impl CommandResponse {
    pub fn request(&self) -> Option<&RequestRecord> {
        match self {
            CommandResponse::Request(record) => Some(record),
            _ => None,
        }
    }
}

/// The answer a replica gives for one applied entry.
pub type ApplyResult = Result<CommandResponse, CommandError>;

/// One applied command: its answer and the events it emitted, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    pub result: ApplyResult,
    pub events: Vec<Event>,
}
