//! `qm-node`: parse the configuration, set up logging, bind, and run.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use qm_raft_node::config::{LogFormat, NodeArgs};
use qm_raft_node::recover::RecoverArgs;
use qm_raft_node::restore::RestoreArgs;

/// mimalloc instead of glibc malloc: the table's churn (records, events,
/// grants created and dropped per command, across threads) fragmented glibc's
/// arenas, so resident memory crept up under steady load, and malloc/free were
/// a quarter of a replica's CPU in the profile (BENCHMARKS.md).
///
/// `--features system-allocator` builds with the system's malloc instead, for
/// heap profilers that interpose malloc (heaptrack, `scripts/heap-profile.sh`);
/// mimalloc's own entry points are invisible to them.
#[cfg(not(feature = "system-allocator"))]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// How often [`return_freed_memory`] hands freed memory back to the OS.
#[cfg(not(feature = "system-allocator"))]
const FREED_MEMORY_RETURN_INTERVAL: Duration = Duration::from_secs(2);

/// Hands the memory mimalloc holds freed back to the OS, every
/// [`FREED_MEMORY_RETURN_INTERVAL`], on a thread of its own. mimalloc
/// returns freed memory to the OS (purges it) only at its next arena
/// operation after a 10 ms delay, and a replica in steady state reuses
/// what it has and may make none for hours: a snapshot's buffer (262 MB at
/// a million allocations, encoded, saved and dropped; or read and decoded
/// at a restart) stayed resident, VmRSS equal to the peak (BENCHMARKS.md,
/// "Where a million allocations' bytes go"). `mi_collect(false)` purges
/// what has waited its delay, program-wide, and forces nothing else. With
/// the system allocator there is nothing to do: glibc unmaps a buffer
/// that large as soon as it is freed.
fn return_freed_memory() {
    #[cfg(not(feature = "system-allocator"))]
    {
        let spawned = std::thread::Builder::new().name("qm-free-memory".into()).spawn(|| loop {
            std::thread::sleep(FREED_MEMORY_RETURN_INTERVAL);
            // SAFETY: takes no pointer and may be called from any thread.
            unsafe { libmimalloc_sys::mi_collect(false) };
        });
        // Only memory is at stake: the replica runs without it.
        if let Err(error) = spawned {
            eprintln!("qm-node: cannot start the thread that returns freed memory: {error}");
        }
    }
}

/// Backs the replica's memory with 4 KiB pages only, never the kernel's
/// transparent huge pages (2 MiB), unless `--transparent-huge-pages`.
/// mimalloc asks for huge pages for its arenas (`madvise`), and a huge page
/// is resident whole as soon as one byte of it is used and stays so until
/// all of it is free: after a million allocations, the replicas held 55-70
/// MB more with them (VmRSS 592-609 MB restarted or new, 721-728 MB loaded,
/// against 541 and 658-663 MB without). Huge pages are faster under heavy
/// load (fewer TLB misses over a large table): p99 at 5,000 pairs/s 7-8 ms
/// with them against 10-13 ms without, the same build interleaved; at
/// 1,000 pairs/s no difference shows (BENCHMARKS.md, "Session 15"). The
/// memory is the default's side. mimalloc's own switch
/// (`MIMALLOC_ALLOW_THP=0`) is read before `main`; the kernel's
/// per-process one, set here, covers every mapping from now on, and also a
/// machine whose THP setting is `always` rather than `madvise`. Only
/// memory is at stake: if the call fails, the replica runs as before.
fn keep_memory_in_small_pages() {
    #[cfg(target_os = "linux")]
    // SAFETY: takes integer arguments only, and changes only how the
    // kernel backs this process's memory with pages.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}

fn main() -> ExitCode {
    // `qm-node restore ...`: seed a data dir from a backup, then exit. The
    // replica's own flags take no subcommand, so the word is looked at first.
    if std::env::args().nth(1).as_deref() == Some("restore") {
        return restore(RestoreArgs::parse_from(std::env::args().skip(1)));
    }
    if std::env::args().nth(1).as_deref() == Some("recover") {
        return recover(RecoverArgs::parse_from(std::env::args().skip(1)));
    }
    let config = match NodeArgs::parse().with_file().and_then(NodeArgs::into_config) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("qm-node: {error}");
            return ExitCode::from(2);
        }
    };
    if !config.transparent_huge_pages {
        keep_memory_in_small_pages();
    }
    return_freed_memory();
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = config.worker_threads {
        runtime.worker_threads(threads);
    }
    match runtime.enable_all().build() {
        Ok(runtime) => runtime.block_on(serve(config)),
        Err(error) => {
            eprintln!("qm-node: cannot start the runtime: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: qm_raft_node::config::NodeConfig) -> ExitCode {
    init_logging(config.log_format);
    let listener = match tokio::net::TcpListener::bind(config.listen).await {
        Ok(listener) => listener,
        Err(error) => {
            eprintln!("qm-node: cannot listen on {}: {error}", config.listen);
            return ExitCode::FAILURE;
        }
    };
    match qm_raft_node::run(config, listener, shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("qm-node: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("QM_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn,sled=warn"));
    // Colours only on a terminal: a log file (cluster.sh, systemd) gets plain
    // lines that grep and log shippers read as they are.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
}

/// `qm-node restore`: one line on success (what was restored), one on refusal.
fn restore(args: RestoreArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("qm-node restore: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(qm_raft_node::restore::restore(&args)) {
        Ok(restored) => {
            let members: Vec<String> = restored.members.iter().map(|(id, addr)| format!("{id}={addr}")).collect();
            println!(
                "restored revision {} (applied index {}) into {} as replica {} of {}, new cluster id {} (the backup's: {})",
                restored.header.revision,
                restored.header.applied_index,
                args.data_dir.display(),
                args.id,
                members.join(","),
                restored.cluster_id,
                if restored.header.cluster_id.is_empty() {
                    "-"
                } else {
                    &restored.header.cluster_id
                }
            );
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("qm-node restore: {error}");
            ExitCode::FAILURE
        }
    }
}

/// `qm-node recover`: one line on success (what was kept), one on refusal.
fn recover(args: RecoverArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("qm-node recover: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(qm_raft_node::recover::recover(&args)) {
        Ok(recovered) => {
            let last = recovered.last_log_id.map_or("none".to_owned(), |log_id| log_id.to_string());
            println!(
                "recovered revision {} (last log entry {last}) in {} as a one-replica cluster: {}={}, cluster id {}; the old data dir is {}",
                recovered.revision,
                args.data_dir.display(),
                args.id,
                recovered.addr,
                recovered.cluster_id,
                recovered.kept.display()
            );
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("qm-node recover: {error}");
            ExitCode::FAILURE
        }
    }
}
