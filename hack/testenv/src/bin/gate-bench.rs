//! `gate-bench`: gpupool's readiness gate under a scale-up of GPU nodes on a private control
//! plane (see `testenv::bench::gate` for what it measures; `--help` for the flags).
//!
//! ```text
//! cargo build --release --bin gpupool-operator
//! cargo run --release -p testenv --bin gate-bench -- --nodes 1000 [--register-over-seconds 20] [--validation]
//! ```

use std::process::ExitCode;

use clap::Parser;
use testenv::bench::gate::{GateBenchOptions, run};

#[tokio::main]
async fn main() -> ExitCode {
    match run(GateBenchOptions::parse()).await {
        Ok(report) => {
            print!("{report}");
            ExitCode::SUCCESS
        }
        Err(msg) => {
            eprintln!("gate-bench: {msg}");
            ExitCode::FAILURE
        }
    }
}
