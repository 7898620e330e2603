//! `qm-jepsen`: parse the command line, run (or re-check) a test, print its
//! summary and, last, the verdict line (or sum up a matrix of runs). Exit status: 0 valid, 1 invalid,
//! 2 unknown, 3 the harness itself failed.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use qm_jepsen::checker::Validity;
use qm_jepsen::config::{Cli, CliCommand};
use qm_jepsen::events::EventLog;
use qm_jepsen::history::read_history;
use qm_jepsen::report::{self, Results};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("QM_JEPSEN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("qm_jepsen=info,warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    let command = match cli.command {
        CliCommand::Matrix(args) => return sum_up_matrix(&args.dir),
        command => command,
    };
    match execute(command) {
        Ok(results) => {
            print!("{}", report::summary(&results));
            match results.valid {
                Validity::Known(true) => ExitCode::SUCCESS,
                Validity::Known(false) => ExitCode::from(1),
                Validity::Unknown => ExitCode::from(2),
            }
        }
        Err(error) => {
            eprintln!("qm-jepsen: {error:#}");
            ExitCode::from(3)
        }
    }
}

fn execute(command: CliCommand) -> anyhow::Result<Results> {
    match command {
        CliCommand::Run(args) => {
            let config = args.into_config(rand::random::<u64>() >> 16)?;
            // Printed first, so that even a run that dies can be repeated.
            println!("qm-jepsen: seed {}; reproduce: {}", config.seed, config.reproduce_command());
            let runtime = tokio::runtime::Runtime::new().context("tokio runtime")?;
            let outcome = runtime.block_on(qm_jepsen::run(config))?;
            println!("report: {}", outcome.out.display());
            Ok(outcome.results)
        }
        CliCommand::Check(args) => {
            let test = report::read_test(&args.dir)?;
            let history = read_history(&args.dir.join("history.jsonl"))?;
            let events = EventLog::read(&args.dir)?;
            let notes = vec!["checked again from the recorded history".to_owned()];
            let mut checked = report::check(&test, &history, events.as_ref(), notes);
            report::write(&args.dir, &history, &mut checked)?;
            Ok(checked.results)
        }
        CliCommand::Matrix(args) => anyhow::bail!("qm-jepsen matrix {} runs nothing", args.dir.display()),
    }
}

/// `qm-jepsen matrix DIR`: prints the matrix's tables; exit status 0 unless
/// the directory cannot be read (the verdicts are in the tables).
fn sum_up_matrix(dir: &std::path::Path) -> ExitCode {
    match report::matrix::read_runs(dir) {
        Ok(runs) => {
            print!("{}", report::matrix::summary(&runs));
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("qm-jepsen: {error:#}");
            ExitCode::from(3)
        }
    }
}
