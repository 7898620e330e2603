//! What replicas tell each other on every Raft RPC: which cluster they belong
//! to and which formats their build writes, and what a replica decides on
//! hearing it.
//!
//! ```text
//!  sender (network::client)                          receiver (network::server)
//!  x-qm-replica-id, x-qm-cluster-id, x-qm-formats ──▶ judge(own cluster id, own formats, announcement)
//!                                                      ├─ Accept            ─▶ openraft
//!                                                      ├─ Adopt(cluster id) ─▶ stored (sled), then openraft
//!                                                      └─ Refuse(reason)    ─▶ FAILED_PRECONDITION + x-qm-refused
//!  PeerBook (the sender's) ◀── the reply's own announcement, or the refusal ──┘
//!  PeerBook (the receiver's) ◀── the announcement it judged
//! ```
//!
//! **Cluster id.** Fixed when a cluster is first initialised, by the
//! replica that initialises it ([`cluster_id_at_initialization`]), and
//! kept in each replica's sled metadata, outside the replicated table (whose
//! encoding other features version). A replica without one (a blank replica
//! being added, or one a bootstrap just reached) adopts the id a leader
//! sends with its AppendEntries or InstallSnapshot; from then on it refuses
//! Raft traffic from a replica of another cluster, and a leader refuses to
//! add a replica that belongs to another (`api::cluster::add_replica`).
//! `qm-node restore` gives the new cluster a new id, derived from the backup
//! and the new members ([`cluster_id_for_restore`]), as `etcdutl snapshot
//! restore` does; `qm-node recover` keeps the survivor's id, as etcd's
//! `--force-new-cluster` does. A peer that announces no id (a build from
//! before ids) is accepted: refusing it would stop a rolling upgrade.
//!
//! **Format versions.** [`FormatVersions`]: the log entries' encoding
//! ([`LOG_FORMAT_VERSION`]) and the table's snapshot encoding
//! ([`SNAPSHOT_FORMAT_VERSION`]). Builds at most
//! [`FORMAT_VERSIONS_APART_MAX`] apart in each may run in one cluster (one
//! step of a rolling upgrade); a replica refuses Raft traffic from a peer
//! further apart and both record the refusal, which `ClusterStatus` shows.
//! A peer that announces no versions is a build from before announcements,
//! one step behind the first one that announces.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Mutex;

use qm_state_machine::table::SNAPSHOT_FORMAT_VERSION;
use sha2::{Digest, Sha256};

use crate::types::NodeId;

/// The encoding of log entries (`CommandBatch` of `Command`s, in bincode).
/// Bumped whenever a `Command` variant is appended or a command's fields
/// change: an older build cannot decode such an entry. The test
/// `log_format_version_counts_the_command_variants` pins the variant count
/// of each version so that a new variant cannot go unnoticed.
pub const LOG_FORMAT_VERSION: u32 = 2;
/// How many `Command` variants [`LOG_FORMAT_VERSION`] decodes. Version 1
/// is the log of the first build that announces versions (through
/// `AllocateWithOptions`); builds before it announce nothing. Version 2
/// added `BindPolicy` and `UnbindPolicy`.
pub const LOG_FORMAT_COMMAND_VARIANTS: usize = 27;
/// How far apart (in each format version) two builds may be and still run
/// in one cluster: one upgrade step.
pub const FORMAT_VERSIONS_APART_MAX: u32 = 1;
/// A cluster id: this many hex digits of a SHA-256.
pub const CLUSTER_ID_HEX_DIGITS: usize = 16;
/// The longest announcement value read from a peer's metadata; anything
/// longer is not one of ours.
pub const ANNOUNCEMENT_VALUE_BYTES_MAX: usize = 128;

/// Metadata keys of the announcement (request and reply alike).
pub const HEADER_REPLICA_ID: &str = "x-qm-replica-id";
pub const HEADER_CLUSTER_ID: &str = "x-qm-cluster-id";
pub const HEADER_FORMATS: &str = "x-qm-formats";
/// On a refused Raft RPC: `cluster_id` or `formats`.
pub const HEADER_REFUSED: &str = "x-qm-refused";

/// The format versions a build writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FormatVersions {
    pub log: u32,
    pub table: u32,
}

impl FormatVersions {
    /// This build's.
    pub const CURRENT: FormatVersions = FormatVersions {
        log: LOG_FORMAT_VERSION,
        table: SNAPSHOT_FORMAT_VERSION,
    };

    /// This build's, shifted by `offset` in each: how a test makes one
    /// replica claim to be another build (`--test-format-version-offset`).
    pub fn claimed(offset: i32) -> FormatVersions {
        let shift = |version: u32| version.saturating_add_signed(offset);
        FormatVersions {
            log: shift(LOG_FORMAT_VERSION),
            table: shift(SNAPSHOT_FORMAT_VERSION),
        }
    }

    /// The larger of the two distances.
    pub fn apart(&self, other: &FormatVersions) -> u32 {
        self.log.abs_diff(other.log).max(self.table.abs_diff(other.table))
    }

    /// `log=1,table=6`, as sent and shown.
    pub fn encode(&self) -> String {
        format!("log={},table={}", self.log, self.table)
    }

    pub fn parse(text: &str) -> Option<FormatVersions> {
        let mut log = None;
        let mut table = None;
        for part in text.split(',') {
            let (name, value) = part.split_once('=')?;
            let value: u32 = value.parse().ok()?;
            match name {
                "log" => log = Some(value),
                "table" => table = Some(value),
                // A later build may announce more formats; the ones both know are compared.
                _ => {}
            }
        }
        Some(FormatVersions { log: log?, table: table? })
    }
}

impl fmt::Display for FormatVersions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.encode())
    }
}

/// What a peer said about itself; every part is optional, as older builds
/// say nothing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Announcement {
    pub replica_id: Option<NodeId>,
    pub cluster_id: Option<String>,
    pub formats: Option<FormatVersions>,
}

impl Announcement {
    /// Reads it from gRPC metadata; unreadable parts count as unsaid.
    pub fn from_metadata(metadata: &tonic::metadata::MetadataMap) -> Announcement {
        let text = |key: &str| {
            metadata
                .get(key)
                .and_then(|value| value.to_str().ok())
                .filter(|value| !value.is_empty() && value.len() <= ANNOUNCEMENT_VALUE_BYTES_MAX)
        };
        Announcement {
            replica_id: text(HEADER_REPLICA_ID).and_then(|id| id.parse().ok()),
            cluster_id: text(HEADER_CLUSTER_ID).map(str::to_owned),
            formats: text(HEADER_FORMATS).and_then(FormatVersions::parse),
        }
    }

    /// Writes it into gRPC metadata.
    pub fn to_metadata(&self, metadata: &mut tonic::metadata::MetadataMap) {
        let mut put = |key: &'static str, value: String| {
            if let Ok(value) = value.parse() {
                metadata.insert(key, value);
            }
        };
        if let Some(id) = self.replica_id {
            put(HEADER_REPLICA_ID, id.to_string());
        }
        if let Some(cluster_id) = &self.cluster_id {
            put(HEADER_CLUSTER_ID, cluster_id.clone());
        }
        if let Some(formats) = &self.formats {
            put(HEADER_FORMATS, formats.encode());
        }
    }
}

/// Why a replica refuses a peer's Raft traffic. One line each.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PeerRefusal {
    #[error("cluster id mismatch: this replica belongs to cluster {own}, the peer to cluster {peer} (a replica of another cluster, or restored from another backup: wipe its data dir and add it again)")]
    ClusterId { own: String, peer: String },
    #[error("format versions too far apart: this build writes {own}, the peer {peer}; at most {FORMAT_VERSIONS_APART_MAX} apart may run together (upgrade one version at a time)")]
    Formats { own: FormatVersions, peer: FormatVersions },
}

impl PeerRefusal {
    /// The value of [`HEADER_REFUSED`].
    pub fn kind(&self) -> &'static str {
        match self {
            PeerRefusal::ClusterId { .. } => "cluster_id",
            PeerRefusal::Formats { .. } => "formats",
        }
    }
}

/// What to do with a peer's Raft RPC.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Accept,
    /// Accept, and take this cluster id as this replica's own (it had none).
    Adopt(String),
    Refuse(PeerRefusal),
}

/// Judges a peer's announcement. `from_leader`: the call is AppendEntries or
/// InstallSnapshot, the only ones a replica adopts a cluster id from (a
/// candidate's vote request may come from anywhere).
pub fn judge(own_cluster_id: Option<&str>, own_formats: &FormatVersions, peer: &Announcement, from_leader: bool) -> Verdict {
    if let Some(peer_formats) = &peer.formats {
        if own_formats.apart(peer_formats) > FORMAT_VERSIONS_APART_MAX {
            return Verdict::Refuse(PeerRefusal::Formats {
                own: *own_formats,
                peer: *peer_formats,
            });
        }
    }
    match (own_cluster_id, peer.cluster_id.as_deref()) {
        (Some(own), Some(theirs)) if own != theirs => Verdict::Refuse(PeerRefusal::ClusterId {
            own: own.to_owned(),
            peer: theirs.to_owned(),
        }),
        (None, Some(theirs)) if from_leader => Verdict::Adopt(theirs.to_owned()),
        _ => Verdict::Accept,
    }
}

/// The id of a cluster being initialised: from the replica that initialises
/// it, the initial members and the time, so that two clusters laid out
/// alike (the same ids and addresses, a test's or a rebuilt one's) still get
/// different ids.
pub fn cluster_id_at_initialization(initializer: NodeId, members: &BTreeMap<NodeId, String>, initialized_at_ms: u64) -> String {
    let mut hash = Sha256::new();
    hash.update(b"quartermaster cluster\0");
    hash.update(initializer.to_le_bytes());
    hash_members(&mut hash, members);
    hash.update(initialized_at_ms.to_le_bytes());
    hex_prefix(&hash.finalize())
}

/// The id of a cluster restored from a backup: every replica restored from
/// the same file with the same `--peers` derives the same id on its own
/// (they never talk before they start), and a cluster restored from
/// another file, or with other members, gets another.
pub fn cluster_id_for_restore(backup_checksum: &str, members: &BTreeMap<NodeId, String>) -> String {
    let mut hash = Sha256::new();
    hash.update(b"quartermaster restored cluster\0");
    hash.update(backup_checksum.as_bytes());
    hash.update([0]);
    hash_members(&mut hash, members);
    hex_prefix(&hash.finalize())
}

fn hash_members(hash: &mut Sha256, members: &BTreeMap<NodeId, String>) {
    for (id, addr) in members {
        hash.update(id.to_le_bytes());
        hash.update(addr.as_bytes());
        hash.update([0]);
    }
}

fn hex_prefix(digest: &[u8]) -> String {
    digest
        .iter()
        .take(CLUSTER_ID_HEX_DIGITS / 2)
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// What this replica last heard from one peer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerRecord {
    pub cluster_id: Option<String>,
    pub formats: Option<FormatVersions>,
    /// The last refusal either way ("refused by this replica: ..." or
    /// "refused this replica: ..."); cleared when traffic is accepted again.
    pub refused: Option<String>,
}

/// What every peer last announced, and refusals, for `ClusterStatus`.
/// Written by the Raft RPC client and server, read by the API.
#[derive(Debug, Default)]
pub struct PeerBook {
    peers: Mutex<BTreeMap<NodeId, PeerRecord>>,
}

impl PeerBook {
    /// Records an accepted exchange with `peer`.
    pub fn accepted(&self, peer: NodeId, announcement: &Announcement) {
        let mut peers = self.peers.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let record = peers.entry(peer).or_default();
        record.cluster_id = announcement.cluster_id.clone().or(record.cluster_id.take());
        record.formats = announcement.formats.or(record.formats);
        record.refused = None;
    }

    /// Records a refusal; returns true when it is new (to be logged once,
    /// not on every heartbeat).
    pub fn refused(&self, peer: NodeId, announcement: &Announcement, refusal: String) -> bool {
        let mut peers = self.peers.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let record = peers.entry(peer).or_default();
        record.cluster_id = announcement.cluster_id.clone().or(record.cluster_id.take());
        record.formats = announcement.formats.or(record.formats);
        let new = record.refused.as_deref() != Some(refusal.as_str());
        record.refused = Some(refusal);
        new
    }

    pub fn list(&self) -> BTreeMap<NodeId, PeerRecord> {
        self.peers.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OWN: FormatVersions = FormatVersions { log: 3, table: 7 };

    fn peer(cluster_id: Option<&str>, formats: Option<FormatVersions>) -> Announcement {
        Announcement {
            replica_id: Some(2),
            cluster_id: cluster_id.map(str::to_owned),
            formats,
        }
    }

    #[test]
    fn one_version_apart_is_accepted_two_are_refused() {
        let one_newer = FormatVersions { log: 4, table: 7 };
        let one_older_table = FormatVersions { log: 3, table: 6 };
        let two_newer = FormatVersions { log: 5, table: 7 };
        let two_older_table = FormatVersions { log: 3, table: 5 };
        assert_eq!(Verdict::Accept, judge(Some("a"), &OWN, &peer(Some("a"), Some(one_newer)), true));
        assert_eq!(
            Verdict::Accept,
            judge(Some("a"), &OWN, &peer(Some("a"), Some(one_older_table)), true)
        );
        assert_eq!(
            Verdict::Refuse(PeerRefusal::Formats { own: OWN, peer: two_newer }),
            judge(Some("a"), &OWN, &peer(Some("a"), Some(two_newer)), true)
        );
        assert_eq!(
            Verdict::Refuse(PeerRefusal::Formats {
                own: OWN,
                peer: two_older_table
            }),
            judge(None, &OWN, &peer(None, Some(two_older_table)), false)
        );
    }

    #[test]
    fn another_cluster_is_refused_a_blank_replica_adopts_only_from_a_leader() {
        assert_eq!(
            Verdict::Refuse(PeerRefusal::ClusterId {
                own: "a".into(),
                peer: "b".into()
            }),
            judge(Some("a"), &OWN, &peer(Some("b"), Some(OWN)), true)
        );
        assert_eq!(Verdict::Adopt("b".into()), judge(None, &OWN, &peer(Some("b"), Some(OWN)), true));
        assert_eq!(Verdict::Accept, judge(None, &OWN, &peer(Some("b"), Some(OWN)), false));
    }

    #[test]
    fn an_older_build_that_announces_nothing_is_accepted() {
        assert_eq!(Verdict::Accept, judge(Some("a"), &OWN, &Announcement::default(), true));
        assert_eq!(Verdict::Accept, judge(None, &OWN, &Announcement::default(), true));
    }

    #[test]
    fn refusals_are_one_line() {
        for refusal in [
            PeerRefusal::ClusterId {
                own: "a".into(),
                peer: "b".into(),
            },
            PeerRefusal::Formats { own: OWN, peer: OWN },
        ] {
            assert_eq!(1, refusal.to_string().lines().count());
        }
    }

    #[test]
    fn format_versions_round_trip_and_ignore_formats_they_do_not_know() {
        assert_eq!(Some(OWN), FormatVersions::parse(&OWN.encode()));
        assert_eq!("log=3,table=7", OWN.encode());
        assert_eq!(Some(OWN), FormatVersions::parse("log=3,table=7,wire=9"));
        assert_eq!(None, FormatVersions::parse("log=3"));
        assert_eq!(None, FormatVersions::parse("log=x,table=7"));
        assert_eq!(
            FormatVersions {
                log: LOG_FORMAT_VERSION + 2,
                table: SNAPSHOT_FORMAT_VERSION + 2
            },
            FormatVersions::claimed(2)
        );
    }

    #[test]
    fn announcements_round_trip_through_metadata() {
        let announcement = Announcement {
            replica_id: Some(3),
            cluster_id: Some("0123456789abcdef".into()),
            formats: Some(OWN),
        };
        let mut metadata = tonic::metadata::MetadataMap::new();
        announcement.to_metadata(&mut metadata);
        assert_eq!(announcement, Announcement::from_metadata(&metadata));
        assert_eq!(
            Announcement::default(),
            Announcement::from_metadata(&tonic::metadata::MetadataMap::new())
        );
    }

    #[test]
    fn cluster_ids_are_deterministic_and_differ_between_clusters() {
        let members = BTreeMap::from([(1, "127.0.0.1:1".to_owned()), (2, "127.0.0.1:2".to_owned())]);
        let other_members = BTreeMap::from([(1, "127.0.0.1:1".to_owned()), (2, "127.0.0.1:3".to_owned())]);
        let id = cluster_id_at_initialization(1, &members, 1_000);
        assert_eq!(CLUSTER_ID_HEX_DIGITS, id.len());
        assert!(id.chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(id, cluster_id_at_initialization(1, &members, 1_000));
        assert_ne!(id, cluster_id_at_initialization(1, &members, 1_001));
        assert_ne!(id, cluster_id_at_initialization(1, &other_members, 1_000));
        let restored = cluster_id_for_restore("abc", &members);
        assert_eq!(restored, cluster_id_for_restore("abc", &members));
        assert_ne!(restored, cluster_id_for_restore("abd", &members));
        assert_ne!(restored, cluster_id_for_restore("abc", &other_members));
    }

    #[test]
    fn a_refusal_is_logged_once_and_cleared_by_accepted_traffic() {
        let book = PeerBook::default();
        let said = peer(Some("b"), Some(OWN));
        assert!(book.refused(2, &said, "no".into()));
        assert!(!book.refused(2, &said, "no".into()));
        assert_eq!(Some("no".to_owned()), book.list()[&2].refused);
        book.accepted(2, &Announcement::default());
        assert_eq!(
            PeerRecord {
                cluster_id: Some("b".into()),
                formats: Some(OWN),
                refused: None
            },
            book.list()[&2]
        );
    }

    /// bincode (through serde) names the count of variants when it meets an
    /// index past them; a `Command` variant appended without a new
    /// [`LOG_FORMAT_VERSION`] fails here.
    #[test]
    fn log_format_version_counts_the_command_variants() {
        let past_every_variant = [200u8, 0, 0, 0, 0, 0, 0, 0];
        let error = crate::codec::decode::<qm_state_machine::Command>(&past_every_variant)
            .expect_err("no command has variant 200")
            .to_string();
        let expected = format!("0 <= i < {LOG_FORMAT_COMMAND_VARIANTS}");
        assert!(
            error.contains(&expected),
            "Command's variants changed ({error}): bump LOG_FORMAT_VERSION and LOG_FORMAT_COMMAND_VARIANTS"
        );
    }
}
