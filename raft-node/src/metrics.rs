//! Prometheus metrics: the protocol's (`allocation_latency`,
//! `resource_utilization`, `allocation_success_rate`) and Raft's (term,
//! leader, commit and applied indexes), in the text exposition format on
//! `--metrics-listen` at `/metrics`.
//!
//! Counters and histograms are kept here as the API serves calls; gauges are
//! read from the table and from openraft when scraped, so nothing is stale.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;

/// Upper bounds of the latency histogram's buckets, in seconds.
const LATENCY_BUCKETS_S: [f64; 12] = [0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 5.0];
/// Label sets kept per metric; past this, new label sets are counted under
/// `other` so a flood of distinct requester ids cannot exhaust memory.
pub const LABEL_SETS_MAX: usize = 10_000;
/// `resource_utilization` series rendered per scrape.
pub const UTILIZATION_SERIES_MAX: usize = 10_000;

#[derive(Default)]
struct Histogram {
    buckets: [u64; LATENCY_BUCKETS_S.len()],
    count: u64,
    sum_s: f64,
}

/// What the API records as it serves calls.
#[derive(Default)]
pub struct Metrics {
    /// (resource_type, priority) → latency of allocate calls answered by this replica.
    allocation_latency: Mutex<BTreeMap<(String, String), Histogram>>,
    /// (resource_type, requester_id, status) → allocate outcomes.
    allocation_outcomes: Mutex<BTreeMap<(String, String, String), u64>>,
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
}

impl Metrics {
    pub fn observe_allocation(&self, resource_types: &[String], priority: i64, requester_id: &str, status: &str, seconds: f64) {
        let priority = priority.to_string();
        {
            let mut latency = self.allocation_latency.lock().expect("metrics lock");
            for kind in resource_types {
                let key = bounded_key(&latency, (kind.clone(), priority.clone()), || ("other".into(), "other".into()));
                let histogram = latency.entry(key).or_default();
                histogram.count += 1;
                histogram.sum_s += seconds;
                for (bucket, bound) in histogram.buckets.iter_mut().zip(LATENCY_BUCKETS_S) {
                    if seconds <= bound {
                        *bucket += 1;
                    }
                }
            }
        }
        let mut outcomes = self.allocation_outcomes.lock().expect("metrics lock");
        for kind in resource_types {
            let key = bounded_key(&outcomes, (kind.clone(), requester_id.to_owned(), status.to_owned()), || {
                ("other".into(), "other".into(), status.to_owned())
            });
            *outcomes.entry(key).or_default() += 1;
        }
    }

    /// The whole exposition.
    pub fn render(&self, raft: &RaftSample, utilization: &[UtilizationSample]) -> String {
        let mut out = String::new();
        out.push_str("# HELP allocation_latency Time from receiving an allocate call to answering it, in seconds.\n");
        out.push_str("# TYPE allocation_latency histogram\n");
        for ((kind, priority), histogram) in self.allocation_latency.lock().expect("metrics lock").iter() {
            let labels = format!("resource_type=\"{}\",priority=\"{}\"", escape(kind), escape(priority));
            for (bucket, bound) in histogram.buckets.iter().zip(LATENCY_BUCKETS_S) {
                let _ = writeln!(out, "allocation_latency_bucket{{{labels},le=\"{bound}\"}} {bucket}");
            }
            let _ = writeln!(out, "allocation_latency_bucket{{{labels},le=\"+Inf\"}} {}", histogram.count);
            let _ = writeln!(out, "allocation_latency_sum{{{labels}}} {}", histogram.sum_s);
            let _ = writeln!(out, "allocation_latency_count{{{labels}}} {}", histogram.count);
        }
        out.push_str("# HELP allocation_success_rate Allocate outcomes by status (allocated, queued, rejected); the success rate is allocated over all.\n");
        out.push_str("# TYPE allocation_success_rate counter\n");
        for ((kind, requester, status), count) in self.allocation_outcomes.lock().expect("metrics lock").iter() {
            let _ = writeln!(
                out,
                "allocation_success_rate_total{{resource_type=\"{}\",requester_id=\"{}\",status=\"{}\"}} {count}",
                escape(kind),
                escape(requester),
                escape(status)
            );
        }
        out.push_str("# HELP resource_utilization Share of a unit's capacity held by a consumer (0..1).\n");
        out.push_str("# TYPE resource_utilization gauge\n");
        for sample in utilization.iter().take(UTILIZATION_SERIES_MAX) {
            let _ = writeln!(
                out,
                "resource_utilization{{provider_id=\"{}\",resource_id=\"{}\",consumer_id=\"{}\"}} {}",
                escape(&sample.provider_id),
                escape(&sample.resource_id),
                escape(&sample.consumer_id),
                sample.utilization
            );
        }
        let node = raft.node_id;
        let gauges: [(&str, &str, u64); 7] = [
            ("raft_term", "The current Raft term.", raft.term),
            (
                "raft_leader_id",
                "The leader's replica id (0: none known).",
                raft.leader_id.unwrap_or(0),
            ),
            ("raft_is_leader", "1 on the leader.", u64::from(raft.is_leader)),
            ("raft_commit_index", "Highest log index known committed.", raft.commit_index),
            ("raft_applied_index", "Highest log index applied to the table.", raft.applied_index),
            ("raft_last_log_index", "Highest log index stored.", raft.last_log_index),
            ("raft_snapshot_index", "Log index of the latest snapshot.", raft.snapshot_index),
        ];
        for (name, help, value) in gauges {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name}{{node_id=\"{node}\"}} {value}"
            );
        }
        out
    }
}

/// `key` if it is known or there is room for it, else the overflow key.
fn bounded_key<K: Ord, V>(map: &BTreeMap<K, V>, key: K, overflow: impl FnOnce() -> K) -> K {
    if map.contains_key(&key) || map.len() < LABEL_SETS_MAX {
        key
    } else {
        overflow()
    }
}

fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// Serves `GET /metrics` on `listener` with whatever `render` returns, until
/// the task is dropped. A minimal HTTP/1.0-style responder: Prometheus needs
/// nothing more, and it keeps a web framework out of the replica.
pub async fn serve<Render, Rendered>(listener: tokio::net::TcpListener, render: Render)
where
    Render: Fn() -> Rendered + Send + Sync + 'static,
    Rendered: std::future::Future<Output = String> + Send,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let render = std::sync::Arc::new(render);
    loop {
        let Ok((mut socket, _)) = listener.accept().await else { continue };
        let render = render.clone();
        tokio::spawn(async move {
            let mut request = [0u8; 2048];
            let read = match tokio::time::timeout(std::time::Duration::from_secs(5), socket.read(&mut request)).await {
                Ok(Ok(read)) => read,
                _ => return,
            };
            let line = String::from_utf8_lossy(&request[..read]);
            let (status, body) = if line.starts_with("GET /metrics") {
                ("200 OK", render().await)
            } else {
                ("404 Not Found", "only /metrics is served here\n".to_owned())
            };
            let response = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = socket.write_all(response.as_bytes()).await;
        });
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
        };
        let utilization = [UtilizationSample {
            provider_id: "node_1".into(),
            resource_id: "cpu_1".into(),
            consumer_id: "agent_123".into(),
            utilization: 1.0,
        }];
        let text = metrics.render(&raft, &utilization);
        assert!(
            text.contains("allocation_latency_bucket{resource_type=\"cpu_cores\",priority=\"1\",le=\"0.005\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("allocation_latency_bucket{resource_type=\"cpu_cores\",priority=\"1\",le=\"0.002\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("allocation_success_rate_total{resource_type=\"cpu_cores\",requester_id=\"agent_123\",status=\"allocated\"} 1")
        );
        assert!(text.contains("resource_utilization{provider_id=\"node_1\",resource_id=\"cpu_1\",consumer_id=\"agent_123\"} 1"));
        assert!(text.contains("raft_commit_index{node_id=\"1\"} 9"));
    }

    #[test]
    fn label_sets_are_bounded() {
        let metrics = Metrics::default();
        for requester in 0..LABEL_SETS_MAX + 10 {
            metrics.observe_allocation(&["gpu".into()], 0, &requester.to_string(), "allocated", 0.001);
        }
        let outcomes = metrics.allocation_outcomes.lock().expect("lock");
        assert_eq!(outcomes.len(), LABEL_SETS_MAX + 1);
        assert_eq!(outcomes[&("other".to_owned(), "other".to_owned(), "allocated".to_owned())], 10);
    }
}
