//! `bench`: gpupool at scale on a private control plane (see `testenv::bench` for what it
//! measures and how; `--help` for the flags).
//!
//! ```text
//! cargo build --release --bin gpupool-operator
//! cargo run --release -p testenv --bin bench -- --nodes 5000 --pools 100 [--quiet-seconds 300]
//! ```

use std::process::ExitCode;

use clap::Parser;
use testenv::bench::{self, BenchOptions};

#[tokio::main]
async fn main() -> ExitCode {
    match bench::run(BenchOptions::parse()).await {
        Ok(report) => {
            print!("{report}");
            ExitCode::SUCCESS
        }
        Err(msg) => {
            eprintln!("bench: {msg}");
            ExitCode::FAILURE
        }
    }
}
