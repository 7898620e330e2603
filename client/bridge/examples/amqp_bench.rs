//! Load through the broker, for BENCHMARKS.md: alloc+release pairs as the
//! protocol's JSON on `resource_management`, each waiting for its reply,
//! at a fixed concurrency for a fixed time; prints one JSON line with
//! pairs/s and the allocate round trip's p50/p99 (publish to reply),
//! comparable with `qm --output json bench --workload alloc-release`.
//!
//!     cargo run --release -p qm-bridge --example amqp_bench -- AMQP_URL SECONDS CONCURRENCY
//!
//! Needs a running `qm bridge amqp` on the same broker and a provider with
//! free `cpu_cores` (scripts/bench-bridge.sh sets all of it up).

use std::time::{Duration, Instant};

use futures::StreamExt;
use hdrhistogram::Histogram;
use lapin::options::{BasicConsumeOptions, BasicPublishOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use serde_json::{json, Value};

/// One pair: allocate one core, then release it; the allocate's round trip.
async fn pairs(url: String, until: Instant) -> (Histogram<u64>, Histogram<u64>, u64) {
    let connection = Connection::connect(&url, ConnectionProperties::default()).await.expect("connect");
    let channel = connection.create_channel().await.expect("channel");
    let queue = channel
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("reply queue");
    let mut replies = channel
        .basic_consume(
            queue.name().clone(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("consume");
    let mut allocate = Histogram::<u64>::new(3).unwrap();
    let mut release = Histogram::<u64>::new(3).unwrap();
    let mut failures = 0;
    let mut call = async |key: &str, body: Value| -> (Value, Duration) {
        let started = Instant::now();
        channel
            .basic_publish(
                "resource_management".into(),
                key.into(),
                BasicPublishOptions::default(),
                body.to_string().as_bytes(),
                BasicProperties::default().with_reply_to(queue.name().clone()),
            )
            .await
            .expect("publish");
        let delivery = replies.next().await.expect("reply queue open").expect("delivery");
        (serde_json::from_slice(&delivery.data).expect("JSON reply"), started.elapsed())
    };
    while Instant::now() < until {
        let request_id = uuid::Uuid::new_v4().to_string();
        let request = json!({"request_id": request_id, "requester_id": "bench", "resource_requirements": {"cpu_cores": 1}, "priority": 1});
        let (reply, took) = call("resource_request", request).await;
        allocate.record(took.as_micros() as u64).unwrap();
        if reply["status"] != "allocated" {
            failures += 1;
        }
        let (_, took) = call("resource_release", json!({"request_id": request_id})).await;
        release.record(took.as_micros() as u64).unwrap();
    }
    (allocate, release, failures)
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, url, seconds, concurrency] = args.as_slice() else {
        eprintln!("usage: amqp_bench AMQP_URL SECONDS CONCURRENCY");
        std::process::exit(2);
    };
    let seconds: u64 = seconds.parse().expect("SECONDS");
    let concurrency: usize = concurrency.parse().expect("CONCURRENCY");
    let started = Instant::now();
    let until = started + Duration::from_secs(seconds);
    let tasks: Vec<_> = (0..concurrency).map(|_| tokio::spawn(pairs(url.clone(), until))).collect();
    let mut allocate = Histogram::<u64>::new(3).unwrap();
    let mut release = Histogram::<u64>::new(3).unwrap();
    let mut failures = 0;
    for task in tasks {
        let (a, r, f) = task.await.expect("task");
        allocate.add(a).unwrap();
        release.add(r).unwrap();
        failures += f;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let ms = |histogram: &Histogram<u64>, q: f64| histogram.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "{}",
        json!({
            "via": "amqp",
            "concurrency": concurrency,
            "pairs_per_s": allocate.len() as f64 / elapsed,
            "allocate_p50_ms": ms(&allocate, 0.5),
            "allocate_p99_ms": ms(&allocate, 0.99),
            "release_p50_ms": ms(&release, 0.5),
            "not_allocated": failures,
        })
    );
}
