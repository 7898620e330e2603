//! `qm bench`: throughput and latency of a running cluster (see [`crate::bench`]).

use std::io::{IsTerminal, Write};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;

use super::error::CliError;
use super::output::OutputFormat;
use super::table::Table;
use crate::load::{self, BenchConfig, BenchReport, Progress, Workload};
use qm_client::Client;

/// Load the cluster and report ops/s and latency percentiles.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Measured seconds.
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
    /// Seconds of load before measuring.
    #[arg(long, default_value_t = 1)]
    pub warmup: u64,
    /// Closed loop: concurrent workers. Open loop: operations in flight at most.
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// Open loop: start this many workload operations per second (an alloc-release pair is one),
    /// latency measured from the intended send time.
    #[arg(long)]
    pub rate: Option<u64>,
    /// Units the bench registers (kind `bench_slot`) and removes afterwards.
    #[arg(long, default_value_t = 100_000)]
    pub units: u64,
    #[arg(long, value_enum, default_value_t = Workload::AllocRelease)]
    pub workload: Workload,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
    /// Also append one JSON line per interval (its ops, errors and latency
    /// percentiles alone) to this file, e.g. for a soak's p99 per minute.
    #[arg(long, value_name = "PATH")]
    pub intervals_to: Option<std::path::PathBuf>,
    /// Seconds per interval of --intervals-to.
    #[arg(long, default_value_t = 60, requires = "intervals_to")]
    pub interval_s: u64,
}

pub async fn run(client: &Client, args: BenchArgs, format: OutputFormat, out: &mut dyn Write) -> Result<(), CliError> {
    let config = BenchConfig {
        duration: Duration::from_secs(args.duration),
        warmup: Duration::from_secs(args.warmup),
        concurrency: args.concurrency,
        rate: args.rate,
        units: args.units,
        workload: args.workload,
        intervals: args.intervals_to.map(|path| load::IntervalReports {
            path,
            every: Duration::from_secs(args.interval_s),
        }),
    };
    let progress = Arc::new(Progress::default());
    let bar = (!args.quiet && std::io::stderr().is_terminal()).then(|| {
        let bar = indicatif::ProgressBar::new(args.warmup + args.duration);
        bar.set_style(indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} s  {msg}").expect("valid template"));
        bar
    });
    let ticker = bar.clone().map(|bar| {
        let progress = progress.clone();
        tokio::spawn(async move {
            let mut last = 0;
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let ops = progress.ops.load(Ordering::Relaxed);
                bar.inc(1);
                bar.set_message(format!("{} ops/s", ops - last));
                last = ops;
            }
        })
    });
    let report = load::run(client.clone(), config, progress).await;
    if let Some(ticker) = ticker {
        ticker.abort();
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let report = report?;
    match format {
        OutputFormat::Json => {
            writeln!(out, "{}", serde_json::to_string(&report).expect("reports serialize"))?;
            Ok(())
        }
        OutputFormat::Table => print_table(&report, out),
    }
}

fn print_table(report: &BenchReport, out: &mut dyn Write) -> Result<(), CliError> {
    let rate = report.rate.map_or("-".to_owned(), |rate| rate.to_string());
    writeln!(
        out,
        "{:?} {} loop, concurrency {}, rate {rate}, {:.1} s: {} ops, {:.0} ops/s, {:.0} allocations/s",
        report.workload, report.mode, report.concurrency, report.duration_s, report.ops, report.ops_per_s, report.allocations_per_s
    )?;
    let mut latency = Table::new(["OPERATION", "COUNT", "P50_MS", "P90_MS", "P99_MS", "P999_MS", "MAX_MS"]);
    for (operation, summary) in &report.latency {
        latency.row([
            operation,
            &summary.count.to_string(),
            &format!("{:.2}", summary.p50_ms),
            &format!("{:.2}", summary.p90_ms),
            &format!("{:.2}", summary.p99_ms),
            &format!("{:.2}", summary.p999_ms),
            &format!("{:.2}", summary.max_ms),
        ]);
    }
    latency.write(out)?;
    if !report.errors.is_empty() {
        let errors: Vec<String> = report.errors.iter().map(|(kind, count)| format!("{kind} {count}")).collect();
        writeln!(out, "errors: {}", errors.join(", "))?;
    }
    Ok(())
}
