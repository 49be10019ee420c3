//! [`PodsReady`]: the pods of one label selector on a set of nodes, as one watch delivers them —
//! per node, when a pod there was first seen Ready; how many such pods exist now. Pods are decoded
//! slim (name, node, deletion, Ready condition), so 5,000 of them cost this process little.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::Api;
use kube::runtime::watcher;
use serde::Deserialize;

/// See the module docs.
pub(super) struct PodsReady {
    inner: Arc<Mutex<PodBook>>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Default)]
struct PodBook {
    listed: bool,
    /// Pod name -> its node, for the pods on counted nodes that exist now.
    pods: HashMap<String, String>,
    /// Node -> when a Ready pod (not terminating) was first seen there.
    ready_at: HashMap<String, Instant>,
}

impl PodBook {
    fn saw(&mut self, pod: SlimPod, now: Instant) {
        let Some(name) = pod.metadata.name else {
            return;
        };
        self.pods.insert(name, pod.node.clone());
        if pod.ready && pod.metadata.deletion_timestamp.is_none() {
            self.ready_at.entry(pod.node).or_insert(now);
        }
    }
}

impl PodsReady {
    /// Watches the pods of `namespace` with `labels` whose node's name starts with `node_prefix`.
    pub fn start(
        client: &kube::Client,
        namespace: &str,
        labels: &str,
        node_prefix: &str,
    ) -> PodsReady {
        let inner = Arc::new(Mutex::new(PodBook::default()));
        let book = inner.clone();
        let api: Api<SlimPod> = Api::namespaced(client.clone(), namespace);
        let config = watcher::Config::default().labels(labels);
        let prefix = node_prefix.to_owned();
        let task = tokio::spawn(async move {
            let mut events = watcher(api, config).boxed();
            while let Some(event) = events.next().await {
                let now = Instant::now();
                let mut book = book.lock().unwrap_or_else(|e| e.into_inner());
                let ours = |p: &SlimPod| p.node.starts_with(&prefix);
                match event {
                    Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) if ours(&p) => {
                        book.saw(p, now);
                    }
                    Ok(watcher::Event::Delete(p)) => {
                        if let Some(name) = p.metadata.name {
                            book.pods.remove(&name);
                        }
                    }
                    Ok(watcher::Event::Init) => book.pods.clear(),
                    Ok(watcher::Event::InitDone) => book.listed = true,
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "bench pod watch failed; retrying"),
                }
            }
        });
        PodsReady { inner, task }
    }

    fn book(&self) -> std::sync::MutexGuard<'_, PodBook> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the first list is complete.
    pub fn listed(&self) -> bool {
        self.book().listed
    }

    /// The pods on counted nodes that exist now (terminating ones included).
    pub fn pods(&self) -> usize {
        self.book().pods.len()
    }

    /// How many of `nodes` have had a Ready pod.
    pub fn ready_among(&self, nodes: &[String]) -> usize {
        let book = self.book();
        nodes
            .iter()
            .filter(|n| book.ready_at.contains_key(*n))
            .count()
    }

    /// When a Ready pod was first seen on each of `nodes`, if it was on every one.
    pub fn ready_at(&self, nodes: &[String]) -> Option<Vec<Instant>> {
        let book = self.book();
        nodes
            .iter()
            .map(|n| book.ready_at.get(n).copied())
            .collect()
    }
}

impl Drop for PodsReady {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A Pod decoded down to its name, node, deletion and whether its Ready condition is True.
#[derive(Clone, Debug, Default)]
struct SlimPod {
    metadata: ObjectMeta,
    node: String,
    ready: bool,
}

slim_core_v1!(SlimPod, "Pod", "pods", kube::core::NamespaceResourceScope, field metadata);

impl<'de> Deserialize<'de> for SlimPod {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
        #[derive(Deserialize)]
        struct Raw {
            #[serde(default)]
            metadata: RawMeta,
            spec: Option<RawSpec>,
            status: Option<RawStatus>,
        }
        #[derive(Deserialize, Default)]
        #[serde(rename_all = "camelCase")]
        struct RawMeta {
            name: Option<String>,
            namespace: Option<String>,
            resource_version: Option<String>,
            deletion_timestamp: Option<Time>,
        }
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct RawSpec {
            node_name: Option<String>,
        }
        #[derive(Deserialize)]
        struct RawStatus {
            #[serde(default)]
            conditions: Vec<RawCondition>,
        }
        #[derive(Deserialize)]
        struct RawCondition {
            #[serde(rename = "type")]
            type_: String,
            status: String,
        }
        let raw = Raw::deserialize(d)?;
        let ready = raw.status.is_some_and(|s| {
            s.conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
        });
        Ok(SlimPod {
            metadata: ObjectMeta {
                name: raw.metadata.name,
                namespace: raw.metadata.namespace,
                resource_version: raw.metadata.resource_version,
                deletion_timestamp: raw.metadata.deletion_timestamp,
                ..ObjectMeta::default()
            },
            node: raw.spec.and_then(|s| s.node_name).unwrap_or_default(),
            ready,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, node: &str, ready: bool, deleting: bool) -> SlimPod {
        serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": name, "namespace": "ns", "managedFields": [{}],
                "deletionTimestamp": deleting.then_some("2026-01-01T00:00:00Z"),
            },
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": "i"}]},
            "status": {"conditions": [
                {"type": "PodScheduled", "status": "True"},
                {"type": "Ready", "status": if ready { "True" } else { "False" }},
            ]},
        }))
        .unwrap()
    }

    #[test]
    fn a_node_counts_from_its_first_ready_pod_not_terminating() {
        let p = pod("a", "n-1", true, false);
        assert_eq!((p.node.as_str(), p.ready), ("n-1", true));
        let unscheduled: SlimPod =
            serde_json::from_value(serde_json::json!({"metadata": {"name": "x"}})).unwrap();
        assert_eq!((unscheduled.node.as_str(), unscheduled.ready), ("", false));

        let mut book = PodBook::default();
        let t0 = Instant::now();
        book.saw(pod("a", "n-1", false, false), t0);
        book.saw(pod("b", "n-2", true, true), t0);
        assert_eq!((book.pods.len(), book.ready_at.len()), (2, 0));
        let t1 = t0 + std::time::Duration::from_millis(5);
        book.saw(pod("a", "n-1", true, false), t1);
        book.saw(
            pod("a", "n-1", true, false),
            t1 + std::time::Duration::from_secs(1),
        );
        assert_eq!(book.ready_at.get("n-1"), Some(&t1));
    }
}
