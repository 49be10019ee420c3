//! The benchmark (`cargo run --release -p testenv --bin bench`) at a small scale, as a smoke
//! check that it runs end to end and reports sane numbers. No timing assertions: the numbers
//! that matter come from the release build at 5,000 nodes (BENCHMARKS.md). The invariants of the
//! rollout phase are asserted: never more nodes without GPUs than maxUnavailable, no write for a
//! pool not rolled, a broken plugin halts. The new-pool and DRA phases run alone (`--pools 0`, as
//! they are measured) with their invariants: the plugin on every node, a floor, requests counted;
//! the DRA pool Ready with every slice counted, no write when quiet.

use std::time::Duration;

use testenv::bench::{BenchOptions, run};

/// One benchmark (one control plane) at a time: the machine has few cores.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_benchmark_runs_and_reports_sane_numbers() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let mut opts = BenchOptions::new(500, 10, env!("CARGO_BIN_EXE_gpupool-operator").into());
    opts.quiet = Duration::from_secs(10);
    opts.samples = 10;
    opts.timeout = Duration::from_secs(120);
    opts.spaced_pools = 3;
    // The rollout phase scaled down: 2 of the 10 pools (100 nodes) two batches each, and the
    // broken plugin's halt (30 s, the shortest deadline the API accepts).
    opts.rollout_pools = Some(2);
    opts.rollout_max_unavailable = 25;
    opts.rollout_idle = Duration::from_secs(1);
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
    let rollout = report.rollout.as_ref().expect("the rollout phase ran");
    assert_eq!((rollout.pools, rollout.nodes), (2, 100), "{rollout:?}");
    assert!(
        (1..=25).contains(&rollout.max_nodes_without_gpus),
        "never more nodes without GPUs than maxUnavailable: {rollout:?}"
    );
    assert_eq!(rollout.nodes_replaced, 100, "{rollout:?}");
    assert_eq!(rollout.quiet_nodes_lost_gpus, 0, "{rollout:?}");
    assert_eq!(rollout.quiet_pool_writes, 0, "{rollout:?}");
    assert_eq!(rollout.two_plugins, 0, "{rollout:?}");
    assert!(rollout.requests_per_node() >= 2.0, "{rollout:?}");
    let halt = rollout.halt.expect("the broken plugin halted");
    assert!(halt >= Duration::from_secs(30), "{rollout:?}");
    assert_eq!(rollout.halted_nodes.len(), 1, "{rollout:?}");
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
    assert_eq!(summary["rollout"]["nodes"], 100, "{summary}");
    assert!(
        summary["rollout"]["complete_s"].as_f64() > Some(0.0),
        "{summary}"
    );
    assert!(
        summary["rollout"]["halt_s"].as_f64() >= Some(30.0),
        "{summary}"
    );
    let text = report.to_string();
    for line in [
        "1. pool created",
        "2. node nvidia.com/gpu",
        "3. cold start",
        "4. operator",
        "5. operator API requests",
        "6. GPU-verified rollout",
    ] {
        assert!(text.contains(line), "{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_new_pool_phase_runs_alone() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let mut opts = BenchOptions::new(0, 0, env!("CARGO_BIN_EXE_gpupool-operator").into());
    opts.new_pool_nodes = 200;
    opts.new_pool_samples = 3;
    opts.new_pool_grow = 20;
    opts.timeout = Duration::from_secs(120);
    let json = tempfile::tempdir().unwrap();
    opts.json = Some(json.path().join("summary.json"));
    let report = run(opts).await.unwrap_or_else(|e| panic!("{e}"));
    println!("{report}");

    let r = report.new_pool.as_ref().expect("the new-pool phase ran");
    assert_eq!(r.nodes, 200);
    assert!(!r.floor.is_zero(), "{r:?}");
    assert!(
        !r.plugin_everywhere.is_zero() && !r.pool_ready.is_zero(),
        "{r:?}"
    );
    // How the operator gets its plugin onto the nodes is its own business (#26 changes it): only
    // that its requests were counted, writes among them.
    let writes: u64 = r
        .requests
        .iter()
        .filter(|((verb, _), _)| !matches!(verb.as_str(), "get" | "list" | "watch"))
        .map(|(_, n)| n)
        .sum();
    assert!(writes >= 1, "{:?}", r.requests);
    assert!(r.operator_cpu_s > 0.0, "{r:?}");
    assert_eq!(r.gpu_change_to_status.samples.len(), 6, "down and up");
    let grow = r.grow.as_ref().expect("nodes joined the pool");
    assert_eq!(grow.node_to_plugin.samples.len(), 20, "{grow:?}");
    assert!(
        !report.requests.contains_key("1 pools"),
        "no pool phase ran"
    );

    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(json.path().join("summary.json")).unwrap()).unwrap();
    let new_pool = &summary["new_pool"];
    assert_eq!(new_pool["nodes"], 200, "{summary}");
    for key in ["floor_s", "plugin_everywhere_s", "operator_cpu_s"] {
        assert!(new_pool[key].as_f64() > Some(0.0), "{key}: {summary}");
    }
    assert!(
        new_pool["requests_per_node"]["total"].as_f64() > Some(0.0),
        "{summary}"
    );
    let alloc = &new_pool["alloc_to_status_ms"];
    assert!(alloc["p50"].as_f64() <= alloc["p99"].as_f64(), "{summary}");
    assert_eq!(new_pool["grow"]["nodes"], 20, "{summary}");
    assert_eq!(summary["pools"], 0, "{summary}");
    assert!(summary["rollout"].is_null(), "{summary}");
    let text = report.to_string();
    assert!(text.contains("7. new pool over 200 nodes"), "{text}");
    assert!(!text.contains("1. pool created"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dra_phase_runs_alone() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let mut opts = BenchOptions::new(0, 0, env!("CARGO_BIN_EXE_gpupool-operator").into());
    opts.dra_nodes = 40;
    opts.dra_quiet = Duration::from_secs(5);
    opts.timeout = Duration::from_secs(120);
    let json = tempfile::tempdir().unwrap();
    opts.json = Some(json.path().join("summary.json"));
    let report = run(opts).await.unwrap_or_else(|e| panic!("{e}"));
    println!("{report}");

    let r = report.dra.as_ref().expect("the DRA phase ran");
    // 40 nodes of 1, 2, 4 and 8 GPUs, one slice each.
    assert_eq!((r.nodes, r.slices, r.devices), (40, 40, 150), "{r:?}");
    assert!(!r.driver_everywhere.is_zero(), "{r:?}");
    assert!(!r.slices_to_ready.is_zero(), "{r:?}");
    assert!(r.rss_before_kib > 1024 && r.rss_after_kib > 1024, "{r:?}");
    assert!(
        r.slice_requests.values().sum::<u64>() > 0,
        "the pool's status written as the slices arrive: {r:?}"
    );
    assert_eq!(
        r.quiet_writes(),
        0,
        "the operator wrote while nothing changed: {:?}",
        r.quiet_requests
    );
    assert!(report.new_pool.is_none());

    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(json.path().join("summary.json")).unwrap()).unwrap();
    let dra = &summary["dra"];
    assert_eq!(dra["slices"], 40, "{summary}");
    for key in ["driver_everywhere_s", "slices_to_ready_s", "rss_after_mib"] {
        assert!(dra[key].as_f64() > Some(0.0), "{key}: {summary}");
    }
    assert!(dra["kib_per_slice"].as_f64().is_some(), "{summary}");
    assert_eq!(dra["quiet_writes"], 0, "{summary}");
    assert!(summary["new_pool"].is_null(), "{summary}");
    let text = report.to_string();
    assert!(text.contains("8. DRA pool over 40 nodes"), "{text}");
}
