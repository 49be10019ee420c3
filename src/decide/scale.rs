//! What one reconcile of a large pool costs in the pure core (issue #26): printed, not asserted
//! (`cargo test --release --lib decide::scale -- --ignored --nocapture`).

use std::sync::Arc;
use std::time::Instant;

use crate::api::{GpuPool, GpuPoolSpec};
use crate::decide::applied::Applied;
use crate::decide::names::DEVICE_PLUGIN_LABEL;
use crate::decide::testing::{gpu_node, observed, plugin_pod, selector, settings};
use crate::decide::{plan, status::report};

#[test]
#[ignore = "a measurement: run with --ignored --nocapture"]
fn one_reconcile_of_a_large_pool() {
    for n in [50, 1000, 5000] {
        let mut pool = GpuPool::new(
            "gpu",
            GpuPoolSpec {
                node_selector: selector(&[("agentpool", "gpu")]),
                ..Default::default()
            },
        );
        pool.metadata.uid = Some("uid-gpu".into());
        pool.metadata.generation = Some(1);
        let mut o = observed(Arc::new(pool));
        for i in 0..n {
            let mut node = gpu_node(&format!("node-{i}"), 8, 8);
            node.labels.insert(DEVICE_PLUGIN_LABEL.into(), "gpu".into());
            for k in 0..30 {
                node.labels.insert(
                    format!("kubernetes.azure.com/label-{k}"),
                    format!("value-{k}"),
                );
            }
            o.nodes.push(Arc::new(node));
            o.pods.push(Arc::new(plugin_pod(
                "gpu-resources",
                &format!("plugin-{i}"),
                Some(&format!("node-{i}")),
                "gpu",
            )));
        }
        let s = settings();
        let rounds = 20;
        let start = Instant::now();
        let mut plan_time = std::time::Duration::ZERO;
        for _ in 0..rounds {
            let t = Instant::now();
            let p = plan::plan(&o, &s);
            plan_time += t.elapsed();
            let applied = Applied::kept(crate::decide::applied::PluginState::NotDeployed, None);
            std::hint::black_box(report(&o, &p, &applied, &s));
        }
        let total = start.elapsed() / rounds;
        println!(
            "{n} nodes: one reconcile {:.2} ms (plan {:.2} ms), {:.1} µs a node",
            total.as_secs_f64() * 1e3,
            (plan_time / rounds).as_secs_f64() * 1e3,
            total.as_secs_f64() * 1e6 / n as f64
        );
    }
}
