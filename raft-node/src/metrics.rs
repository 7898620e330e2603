//! Prometheus metrics: the protocol's (`allocation_latency`,
//! `resource_utilization`, `allocation_success_rate`) and Raft's (term,
//! leader, commit and applied indexes), encoded by the `prometheus-client`
//! library in the OpenMetrics text format and served at `/metrics` on the
//! replica's HTTP port (`--http-listen`, see `crate::http`) and on
//! `--metrics-listen`.
//!
//! Counters and histograms are kept here as the API serves calls; gauges are
//! read from the table and from openraft when scraped, so nothing is stale.
//!
//! ```text
//!  api::requests::allocate ─▶ Metrics::observe_allocation ─▶ Family<labels, Histogram | Counter> (shared)
//!  scrape ─▶ server::render_metrics (RaftSample, UtilizationSample) ─▶ Metrics::render ─▶ one Registry per scrape
//! ```

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Upper bounds of the latency histogram's buckets, in seconds.
const LATENCY_BUCKETS_S: [f64; 12] = [0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 5.0];
/// Upper bounds of the apply-duration histogram's buckets, in seconds: one
/// command's apply is microseconds, a mass failure's used to be seconds.
const APPLY_BUCKETS_S: [f64; 14] = [
    0.000_01, 0.000_05, 0.000_1, 0.000_5, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5, 1.0, 5.0,
];

/// Upper bounds of the leader-contact histogram's buckets, in seconds: the
/// leader sends every 100 ms (`heartbeat_interval_ms`), and a follower
/// stands for election past 250-500 ms (`election_timeout_*_ms`).
const LEADER_CONTACT_BUCKETS_S: [f64; 9] = [0.05, 0.1, 0.15, 0.2, 0.25, 0.5, 1.0, 2.0, 5.0];

/// The intervals between two contacts from the leader of one term on this
/// replica (`consensus::LeaderContact` observes them): a histogram and the
/// longest so far. Clones share their state.
#[derive(Clone, Debug)]
pub struct LeaderContactIntervals {
    histogram: Histogram,
    max_us: std::sync::Arc<AtomicU64>,
    observed: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Default for LeaderContactIntervals {
    fn default() -> Self {
        LeaderContactIntervals {
            histogram: Histogram::new(LEADER_CONTACT_BUCKETS_S),
            max_us: std::sync::Arc::default(),
            observed: std::sync::Arc::default(),
        }
    }
}

impl LeaderContactIntervals {
    pub fn observe(&self, interval: std::time::Duration) {
        self.histogram.observe(interval.as_secs_f64());
        self.max_us
            .fetch_max(u64::try_from(interval.as_micros()).unwrap_or(u64::MAX), Ordering::Relaxed);
        self.observed.store(true, Ordering::Relaxed);
    }

    /// The longest interval since the replica started; `None` before the first.
    pub fn max(&self) -> Option<std::time::Duration> {
        self.observed
            .load(Ordering::Relaxed)
            .then(|| std::time::Duration::from_micros(self.max_us.load(Ordering::Relaxed)))
    }
}

/// How long applying each command to the table took on this replica (every
/// replica applies every command): a histogram and the longest so far.
/// Clones share their state; the store observes, the scrape renders.
#[derive(Clone, Debug)]
pub struct ApplyDurations {
    histogram: Histogram,
    max_us: std::sync::Arc<AtomicU64>,
}

impl Default for ApplyDurations {
    fn default() -> Self {
        ApplyDurations {
            histogram: Histogram::new(APPLY_BUCKETS_S),
            max_us: std::sync::Arc::default(),
        }
    }
}

impl ApplyDurations {
    pub fn observe(&self, took: std::time::Duration) {
        self.histogram.observe(took.as_secs_f64());
        self.max_us
            .fetch_max(u64::try_from(took.as_micros()).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// The longest apply of one command since the replica started, in µs.
    pub fn max_us(&self) -> u64 {
        self.max_us.load(Ordering::Relaxed)
    }
}

/// Label sets kept per metric; past this, new label sets are counted under
/// `other` so a flood of distinct requester ids cannot exhaust memory.
pub const LABEL_SETS_MAX: usize = 10_000;
/// `resource_utilization` series rendered per scrape.
pub const UTILIZATION_SERIES_MAX: usize = 10_000;
/// Namespace and kind pairs `namespace_quota_held` and
/// `namespace_quota_limit` report at most, each: a tenant per team is the
/// use, and a scrape stays bounded whatever the namespaces.
pub const QUOTA_SERIES_MAX: usize = 4096;
/// The content type of [`Metrics::render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The label value that stands for every label set past [`LABEL_SETS_MAX`].
const OVERFLOW_LABEL: &str = "other";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LatencyLabels {
    resource_type: String,
    priority: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    resource_type: String,
    requester_id: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UtilizationLabels {
    provider_id: String,
    resource_id: String,
    consumer_id: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QuotaLabels {
    namespace: String,
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MoveLabels {
    outcome: String,
}

/// The optimization measures of the applied table, for `fragmentation`
/// and `moves`.
#[derive(Clone, Debug, Default)]
pub struct OptimizationSample {
    /// Kind → fragmentation in thousandths.
    pub fragmentation_permille: std::collections::BTreeMap<String, u64>,
    pub moves_started: u64,
    pub moves_completed: u64,
    pub moves_rolled_back: u64,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NodeLabels {
    node_id: String,
}

type LatencyFamily = Family<LatencyLabels, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS_S)
}

/// What the API records as it serves calls. The families share their
/// state with every registry they are registered in (they are `Arc`s inside).
/// What this replica knows beside Raft and the table, sampled at scrape time.
#[derive(Clone, Debug, Default)]
pub struct ReplicaSample {
    /// On the leader: the longest silence of an active provider.
    pub heartbeat_age_max_ms: Option<u64>,
    /// With an audit trail: the records dropped so far.
    pub audit_records_dropped: Option<u64>,
    /// The intervals between two contacts from the leader of one term
    /// (`consensus::LeaderContact::intervals`).
    pub leader_contact: LeaderContactIntervals,
}

pub struct Metrics {
    /// (resource_type, priority) → latency of allocate calls answered by this replica.
    allocation_latency: LatencyFamily,
    /// (resource_type, requester_id, status) → allocate outcomes.
    allocation_outcomes: Family<OutcomeLabels, Counter>,
    /// Label sets created in each family so far, for [`LABEL_SETS_MAX`].
    latency_label_sets: AtomicUsize,
    outcome_label_sets: AtomicUsize,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            allocation_latency: LatencyFamily::new_with_constructor(latency_histogram),
            allocation_outcomes: Family::default(),
            latency_label_sets: AtomicUsize::new(0),
            outcome_label_sets: AtomicUsize::new(0),
        }
    }
}

/// A sample of one unit's use, for `resource_utilization`.
pub struct UtilizationSample {
    pub provider_id: String,
    pub resource_id: String,
    pub consumer_id: String,
    pub utilization: f64,
}

/// Raft's state at scrape time.
pub struct RaftSample {
    pub node_id: u64,
    pub term: u64,
    pub leader_id: Option<u64>,
    pub is_leader: bool,
    pub commit_index: u64,
    pub applied_index: u64,
    pub last_log_index: u64,
    pub snapshot_index: u64,
    /// The Raft core stopped on a storage error (a full or failing disk):
    /// the replica acknowledges nothing until the disk takes writes again
    /// (`crate::storage::fault`).
    pub storage_failed: bool,
}

impl Metrics {
    pub fn observe_allocation(&self, resource_types: &[String], priority: i64, requester_id: &str, status: &str, seconds: f64) {
        let priority = priority.to_string();
        for kind in resource_types {
            let labels = LatencyLabels {
                resource_type: kind.clone(),
                priority: priority.clone(),
            };
            let labels = bounded(&self.allocation_latency, labels, &self.latency_label_sets, || LatencyLabels {
                resource_type: OVERFLOW_LABEL.into(),
                priority: OVERFLOW_LABEL.into(),
            });
            self.allocation_latency.get_or_create(&labels).observe(seconds);
            let labels = OutcomeLabels {
                resource_type: kind.clone(),
                requester_id: requester_id.to_owned(),
                status: status.to_owned(),
            };
            let labels = bounded(&self.allocation_outcomes, labels, &self.outcome_label_sets, || OutcomeLabels {
                resource_type: OVERFLOW_LABEL.into(),
                requester_id: OVERFLOW_LABEL.into(),
                status: status.to_owned(),
            });
            self.allocation_outcomes.get_or_create(&labels).inc();
        }
    }

    /// The whole exposition (OpenMetrics text, [`CONTENT_TYPE`]).
    pub fn render(
        &self,
        raft: &RaftSample,
        utilization: &[UtilizationSample],
        quotas: &[qm_state_machine::NamespaceUsage],
        apply: &ApplyDurations,
        optimization: &OptimizationSample,
        replica: &ReplicaSample,
    ) -> String {
        let mut registry = Registry::default();
        // Only with an audit trail: elsewhere absent rather than zero.
        if let Some(dropped) = replica.audit_records_dropped {
            let counter = Counter::<u64, AtomicU64>::default();
            counter.inc_by(dropped);
            registry.register(
                "audit_records_dropped",
                "Audit records this replica dropped because its audit writer was behind or had stopped (the calls were still answered)",
                counter,
            );
        }
        // Only the leader hears heartbeats: elsewhere the gauge is absent
        // rather than a misleading zero.
        if let Some(age_ms) = replica.heartbeat_age_max_ms {
            let age = Gauge::<f64, AtomicU64>::default();
            age.set(age_ms as f64 / 1e3);
            registry.register(
                "provider_heartbeat_age_max_seconds",
                "On the leader: the longest time since an active provider's last heartbeat (or since this leadership began)",
                age,
            );
        }
        registry.register(
            "leader_contact_interval_seconds",
            "Time between two accepted AppendEntries or InstallSnapshot from the leader of one term on this replica",
            replica.leader_contact.histogram.clone(),
        );
        // Absent until a leader was heard from twice in one term.
        if let Some(longest) = replica.leader_contact.max() {
            let age = Gauge::<f64, AtomicU64>::default();
            age.set(longest.as_secs_f64());
            registry.register(
                "leader_contact_age_max_seconds",
                "The longest this replica went without hearing from the leader of its term (between two accepted AppendEntries or InstallSnapshot of one term) since it started",
                age,
            );
        }
        registry.register(
            "apply_duration_seconds",
            "Time to apply one command to the table on this replica",
            apply.histogram.clone(),
        );
        let longest = Gauge::<f64, AtomicU64>::default();
        longest.set(apply.max_us() as f64 / 1e6);
        registry.register(
            "apply_duration_max_seconds",
            "The longest apply of one command since this replica started",
            longest,
        );
        registry.register(
            "allocation_latency",
            "Time from receiving an allocate call to answering it, in seconds",
            self.allocation_latency.clone(),
        );
        registry.register(
            "allocation_success_rate",
            "Allocate outcomes by status (allocated, queued, rejected); the success rate is allocated over all",
            self.allocation_outcomes.clone(),
        );
        let utilization_family = Family::<UtilizationLabels, Gauge<f64, AtomicU64>>::default();
        for sample in utilization.iter().take(UTILIZATION_SERIES_MAX) {
            utilization_family
                .get_or_create(&UtilizationLabels {
                    provider_id: sample.provider_id.clone(),
                    resource_id: sample.resource_id.clone(),
                    consumer_id: sample.consumer_id.clone(),
                })
                .set(sample.utilization);
        }
        registry.register(
            "resource_utilization",
            "Share of a unit's capacity held by a consumer (0..1)",
            utilization_family,
        );
        register_quotas(&mut registry, quotas);
        let fragmentation = Family::<KindLabels, Gauge<f64, AtomicU64>>::default();
        for (kind, permille) in &optimization.fragmentation_permille {
            fragmentation
                .get_or_create(&KindLabels { kind: kind.clone() })
                .set(*permille as f64 / 1000.0);
        }
        registry.register(
            "fragmentation",
            "Per kind: 1 - the largest free amount on one provider / the total free amount (0..1)",
            fragmentation,
        );
        let moves = Family::<MoveLabels, Gauge>::default();
        for (outcome, count) in [
            ("started", optimization.moves_started),
            ("completed", optimization.moves_completed),
            ("rolled_back", optimization.moves_rolled_back),
        ] {
            moves
                .get_or_create(&MoveLabels { outcome: outcome.into() })
                .set(i64::try_from(count).unwrap_or(i64::MAX));
        }
        registry.register("moves", "Live moves since the table began, by outcome", moves);
        let node = NodeLabels {
            node_id: raft.node_id.to_string(),
        };
        let gauges: [(&str, &str, u64); 8] = [
            ("raft_term", "The current Raft term", raft.term),
            (
                "raft_leader_id",
                "The leader's replica id (0: none known)",
                raft.leader_id.unwrap_or(0),
            ),
            ("raft_is_leader", "1 on the leader", u64::from(raft.is_leader)),
            ("raft_commit_index", "Highest log index known committed", raft.commit_index),
            ("raft_applied_index", "Highest log index applied to the table", raft.applied_index),
            ("raft_last_log_index", "Highest log index stored", raft.last_log_index),
            ("raft_snapshot_index", "Log index of the latest snapshot", raft.snapshot_index),
            (
                "raft_storage_failed",
                "1 while this replica's disk is full or failing writes: it acknowledges nothing until the disk takes writes again",
                u64::from(raft.storage_failed),
            ),
        ];
        for (name, help, value) in gauges {
            let family = Family::<NodeLabels, Gauge>::default();
            family.get_or_create(&node).set(i64::try_from(value).unwrap_or(i64::MAX));
            registry.register(name, help, family);
        }
        let mut text = String::new();
        encode(&mut text, &registry).expect("encoding into a String cannot fail");
        text
    }
}

/// Each namespace's use against its quota, per kind: what it holds (every
/// kind it holds or limits) and its limit (limited kinds only), at most
/// [`QUOTA_SERIES_MAX`] series each.
fn register_quotas(registry: &mut Registry, quotas: &[qm_state_machine::NamespaceUsage]) {
    let held = Family::<QuotaLabels, Gauge>::default();
    let limit = Family::<QuotaLabels, Gauge>::default();
    let labels = |namespace: &str, kind: &str| QuotaLabels {
        namespace: namespace.to_owned(),
        kind: kind.to_owned(),
    };
    let pairs = quotas.iter().flat_map(|usage| {
        let mut kinds: Vec<&String> = usage.held.keys().chain(usage.quota.keys()).collect();
        kinds.sort_unstable();
        kinds.dedup();
        kinds.into_iter().map(move |kind| (usage, kind))
    });
    for (usage, kind) in pairs.take(QUOTA_SERIES_MAX) {
        let amount = usage.held.get(kind).copied().unwrap_or(0);
        held.get_or_create(&labels(&usage.namespace, kind))
            .set(i64::try_from(amount).unwrap_or(i64::MAX));
        if let Some(quota) = usage.quota.get(kind) {
            limit
                .get_or_create(&labels(&usage.namespace, kind))
                .set(i64::try_from(*quota).unwrap_or(i64::MAX));
        }
    }
    registry.register(
        "namespace_quota_held",
        "What a namespace's active allocations ask for of a kind (what its quota bounds)",
        held,
    );
    registry.register("namespace_quota_limit", "A namespace's quota of a kind", limit);
}

/// `labels` if the family has them or room for them, else the overflow set.
/// (Two calls racing on one new set may both count it: the bound is
/// approximate by that much, never exceeded by more.)
fn bounded<S, M, C>(family: &Family<S, M, C>, labels: S, created: &AtomicUsize, overflow: impl FnOnce() -> S) -> S
where
    S: Clone + std::hash::Hash + Eq,
    C: prometheus_client::metrics::family::MetricConstructor<M>,
{
    if family.get(&labels).is_some() {
        return labels;
    }
    if created.fetch_add(1, Ordering::Relaxed) < LABEL_SETS_MAX {
        labels
    } else {
        created.fetch_sub(1, Ordering::Relaxed);
        overflow()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_protocol_metrics() {
        let metrics = Metrics::default();
        metrics.observe_allocation(&["cpu_cores".into()], 1, "agent_123", "allocated", 0.003);
        let raft = RaftSample {
            node_id: 1,
            term: 2,
            leader_id: Some(1),
            is_leader: true,
            commit_index: 9,
            applied_index: 9,
            last_log_index: 9,
            snapshot_index: 0,
            storage_failed: false,
        };
        let utilization = [UtilizationSample {
            provider_id: "node_1".into(),
            resource_id: "cpu_1".into(),
            consumer_id: "agent_123".into(),
            utilization: 1.0,
        }];
        let apply = ApplyDurations::default();
        apply.observe(std::time::Duration::from_micros(300));
        let quotas = [qm_state_machine::NamespaceUsage {
            namespace: "team_a".into(),
            held: [("gpu".to_owned(), 2)].into(),
            quota: [("gpu".to_owned(), 4)].into(),
            ..Default::default()
        }];
        let optimization = OptimizationSample {
            fragmentation_permille: [("cpu_cores".to_owned(), 500)].into(),
            moves_completed: 3,
            ..OptimizationSample::default()
        };
        let replica = ReplicaSample {
            heartbeat_age_max_ms: Some(4_250),
            audit_records_dropped: Some(3),
            leader_contact: LeaderContactIntervals::default(),
        };
        replica.leader_contact.observe(std::time::Duration::from_millis(100));
        replica.leader_contact.observe(std::time::Duration::from_millis(1_500));
        let text = metrics.render(&raft, &utilization, &quotas, &apply, &optimization, &replica);
        for expected in [
            "# TYPE provider_heartbeat_age_max_seconds gauge",
            "provider_heartbeat_age_max_seconds 4.25",
            "# TYPE audit_records_dropped counter",
            "audit_records_dropped_total 3",
            "# TYPE leader_contact_age_max_seconds gauge",
            "leader_contact_age_max_seconds 1.5",
            "leader_contact_interval_seconds_bucket{le=\"0.1\"} 1",
            "leader_contact_interval_seconds_bucket{le=\"1.0\"} 1",
            "leader_contact_interval_seconds_bucket{le=\"2.0\"} 2",
            "leader_contact_interval_seconds_count 2",
            "# TYPE allocation_latency histogram",
            "apply_duration_seconds_bucket{le=\"0.0005\"} 1",
            "apply_duration_seconds_bucket{le=\"0.0001\"} 0",
            "apply_duration_max_seconds 0.0003",
            "fragmentation{kind=\"cpu_cores\"} 0.5",
            "moves{outcome=\"completed\"} 3",
            "allocation_latency_bucket{le=\"0.005\",resource_type=\"cpu_cores\",priority=\"1\"} 1",
            "allocation_latency_bucket{le=\"0.002\",resource_type=\"cpu_cores\",priority=\"1\"} 0",
            "allocation_success_rate_total{resource_type=\"cpu_cores\",requester_id=\"agent_123\",status=\"allocated\"} 1",
            "resource_utilization{provider_id=\"node_1\",resource_id=\"cpu_1\",consumer_id=\"agent_123\"} 1.0",
            "raft_commit_index{node_id=\"1\"} 9",
            "namespace_quota_held{namespace=\"team_a\",kind=\"gpu\"} 2",
            "namespace_quota_limit{namespace=\"team_a\",kind=\"gpu\"} 4",
            "raft_leader_id{node_id=\"1\"} 1",
            "# EOF",
        ] {
            assert!(text.contains(expected), "{expected} is missing from\n{text}");
        }

        // --- a follower hears no heartbeat: no age at all
        let text = metrics.render(&raft, &utilization, &quotas, &apply, &optimization, &ReplicaSample::default());
        assert!(!text.contains("provider_heartbeat_age"), "{text}");
        assert!(!text.contains("audit_records_dropped"), "{text}");
        assert!(!text.contains("leader_contact_age"), "{text}");
    }

    #[test]
    fn label_sets_are_bounded() {
        let metrics = Metrics::default();
        for requester in 0..LABEL_SETS_MAX + 10 {
            metrics.observe_allocation(&["gpu".into()], 0, &requester.to_string(), "allocated", 0.001);
        }
        assert_eq!(LABEL_SETS_MAX, metrics.outcome_label_sets.load(Ordering::Relaxed));
        let overflow = OutcomeLabels {
            resource_type: OVERFLOW_LABEL.into(),
            requester_id: OVERFLOW_LABEL.into(),
            status: "allocated".into(),
        };
        assert_eq!(metrics.allocation_outcomes.get(&overflow).map(|counter| counter.get()), Some(10));
    }
}
