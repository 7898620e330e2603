//! `qm`: parses the command line and runs it (see the `qm_cli` library).

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use qm_cli::{run, Cli};

/// mimalloc instead of glibc malloc: a client with hundreds of calls in
/// flight (`qm bench`, `qm agent`) allocates and frees per call, and glibc's
/// bin consolidation was ~20% of the load generator's CPU (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Failovers and retries are logged at debug: `QM_LOG=debug qm ...`.
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("QM_LOG").unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("qm: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli, &mut std::io::stdout().lock())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) if error.is_broken_pipe() => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("qm: {error}");
            ExitCode::from(error.exit_code())
        }
    }
}
