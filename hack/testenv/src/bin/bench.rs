//! `bench`: gpupool at scale on a private control plane (see `testenv::bench` for what it
//! measures and how).
//!
//! ```text
//! cargo build --release --bin gpupool-operator
//! cargo run --release -p testenv --bin bench -- --nodes 5000 --pools 100 [--quiet-seconds 300]
//! ```

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use testenv::bench::{self, BenchOptions};

const USAGE: &str = "usage: bench [--nodes N] [--pools P] [--quiet-seconds S] [--samples K]
             [--pool-interval-ms MS] [--heartbeat-seconds S] [--lease-seconds S]
             [--create-concurrency C] [--operator PATH] [--timeout-seconds S]

  --nodes N               simulated GPU nodes (default 5000)
  --pools P               GpuPools; node j belongs to pool j mod P (default 100)
  --quiet-seconds S       quiet period in which the operator's API requests are counted (default 300)
  --samples K             nodes whose nvidia.com/gpu allocatable is changed, one at a time (default 50)
  --pool-interval-ms MS   pause between pool creations (default 0: back to back)
  --heartbeat-seconds S   kwok node status heartbeat period (default 60)
  --lease-seconds S       kwok node lease duration, renewed every quarter (default 240;
                          the node lifecycle controller's grace period is raised to match)
  --create-concurrency C  node creations in flight (default 32)
  --operator PATH         operator binary (default target/release/gpupool-operator)
  --timeout-seconds S     bound on every wait (default 900)";

fn parse_args() -> Result<BenchOptions, String> {
    let mut opts = BenchOptions::new(5000, 100, bench::default_operator_binary());
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) => (f.to_owned(), Some(v.to_owned())),
            None => (arg.clone(), None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| it.next())
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        let mut number = || -> Result<u64, String> {
            let v = value()?;
            v.parse::<u64>()
                .map_err(|_| format!("{flag}: not a non-negative integer: {v}"))
        };
        match flag.as_str() {
            "--nodes" => opts.nodes = number()? as usize,
            "--pools" => opts.pools = number()? as usize,
            "--quiet-seconds" => opts.quiet = Duration::from_secs(number()?),
            "--samples" => opts.samples = number()? as usize,
            "--pool-interval-ms" => opts.pool_interval = Duration::from_millis(number()?),
            "--heartbeat-seconds" => opts.heartbeat = Duration::from_secs(number()?.max(1)),
            "--lease-seconds" => {
                opts.lease_seconds = u32::try_from(number()?.max(4)).unwrap_or(u32::MAX)
            }
            "--create-concurrency" => opts.create_concurrency = number()? as usize,
            "--timeout-seconds" => opts.timeout = Duration::from_secs(number()?),
            "--operator" => opts.operator = PathBuf::from(value()?),
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(opts)
}

#[tokio::main]
async fn main() -> ExitCode {
    let opts = match parse_args() {
        Ok(o) => o,
        Err(msg) if msg.is_empty() => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(msg) => {
            eprintln!("bench: {msg}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match bench::run(opts).await {
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
