//! The benchmark (`cargo run --release -p testenv --bin bench`) at a small scale, as a smoke
//! check that it runs end to end and reports sane numbers. No timing assertions: the numbers
//! that matter come from the release build at 5,000 nodes (BENCHMARKS.md).

use std::time::Duration;

use testenv::bench::{BenchOptions, run};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_benchmark_runs_and_reports_sane_numbers() {
    let mut opts = BenchOptions::new(500, 10, env!("CARGO_BIN_EXE_gpupool-operator").into());
    opts.quiet = Duration::from_secs(10);
    opts.samples = 10;
    opts.timeout = Duration::from_secs(120);
    opts.spaced_pools = 3;
    let json = tempfile::tempdir().unwrap();
    opts.json = Some(json.path().join("summary.json"));
    let report = run(opts).await.unwrap_or_else(|e| panic!("{e}"));
    println!("{report}");

    assert_eq!(report.pool_to_daemonset.samples.len(), 10);
    assert_eq!(report.pool_to_daemonset_spaced.samples.len(), 3);
    assert_eq!(report.gpu_change_to_status.samples.len(), 20, "down and up");
    for l in [
        &report.pool_to_daemonset,
        &report.pool_to_daemonset_spaced,
        &report.gpu_change_to_status,
    ] {
        assert!(l.p50() <= l.p99() && l.p99() <= l.max());
        assert!(l.max() < Duration::from_secs(120));
    }
    assert!(report.cold_start_current >= report.cold_start_synced);
    assert!(report.operator.peak_rss_kib > 1024 && report.operator.cpu_seconds > 0.0);
    assert!(report.operator_cold.peak_rss_kib > 1024);
    let pools = report.requests.get("1 pools").expect("requests counted");
    assert!(
        pools.get(&("patch".into(), "daemonsets".into())) >= Some(&10),
        "the audit log shows the operator applying DaemonSets: {pools:?}"
    );
    assert_eq!(
        report.quiet_writes(),
        0,
        "the operator wrote while nothing changed: {:?}",
        report.requests.get("quiet")
    );
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(json.path().join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["quiet_writes"], 0, "{summary}");
    assert!(summary["reconciles"].as_u64() > Some(0), "{summary}");
    assert!(
        summary["pool_to_daemonset_spaced_ms"]["p50"].as_f64() > Some(0.0),
        "{summary}"
    );
    assert!(
        !summary["versions"]["gpupool"].as_str().unwrap().is_empty(),
        "{summary}"
    );
    let text = report.to_string();
    for line in [
        "1. pool created",
        "2. node nvidia.com/gpu",
        "3. cold start",
        "4. operator",
        "5. operator API requests",
    ] {
        assert!(text.contains(line), "{text}");
    }
}
