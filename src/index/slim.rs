//! Nodes decoded slim: only what `NodeFacts` reads is kept from the JSON of a Node (labels,
//! gpupool's annotations, taints, cordon, conditions, the `nvidia.com/*` resources, the boot id);
//! `managedFields`, images, addresses, volumes and the rest are skipped while parsing, never
//! allocated. A 5,000-node list and every heartbeat after it cost that much less memory and CPU.

use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStatus, Node, NodeCondition, NodeSpec, NodeStatus, NodeSystemInfo,
    Pod, PodCondition, PodSpec, PodStatus, Taint,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::core::{ClusterResourceScope, NamespaceResourceScope};
use serde::Deserialize;
use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};

/// A Node holding only what gpupool reads.
#[derive(Clone, Debug, Default)]
pub struct SlimNode(pub Node);

/// A core/v1 kind decoded slim: the API's kind, plural and scope, the wrapped object's metadata.
macro_rules! core_v1_resource {
    ($slim:ty, $kind:literal, $plural:literal, $scope:ty) => {
        impl kube::Resource for $slim {
            type DynamicType = ();
            type Scope = $scope;

            fn kind(_: &()) -> std::borrow::Cow<'_, str> {
                $kind.into()
            }
            fn group(_: &()) -> std::borrow::Cow<'_, str> {
                "".into()
            }
            fn version(_: &()) -> std::borrow::Cow<'_, str> {
                "v1".into()
            }
            fn plural(_: &()) -> std::borrow::Cow<'_, str> {
                $plural.into()
            }
            fn meta(&self) -> &ObjectMeta {
                &self.0.metadata
            }
            fn meta_mut(&mut self) -> &mut ObjectMeta {
                &mut self.0.metadata
            }
        }
    };
}

core_v1_resource!(SlimNode, "Node", "nodes", ClusterResourceScope);

#[derive(Deserialize, Default)]
struct Raw {
    #[serde(default)]
    metadata: RawMeta,
    #[serde(default)]
    spec: Option<RawSpec>,
    #[serde(default)]
    status: Option<RawStatus>,
}

/// Metadata of either kind: identity, labels, gpupool's annotations (the validation record on a
/// node, what a validation or plugin pod is for) and the two timestamps.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct RawMeta {
    name: Option<String>,
    namespace: Option<String>,
    uid: Option<String>,
    resource_version: Option<String>,
    labels: Option<BTreeMap<String, String>>,
    #[serde(default, deserialize_with = "gpupool_annotations")]
    annotations: Option<BTreeMap<String, String>>,
    creation_timestamp: Option<Time>,
    deletion_timestamp: Option<Time>,
}

impl From<RawMeta> for ObjectMeta {
    fn from(m: RawMeta) -> ObjectMeta {
        ObjectMeta {
            name: m.name,
            namespace: m.namespace,
            uid: m.uid,
            resource_version: m.resource_version,
            labels: m.labels,
            annotations: m.annotations,
            creation_timestamp: m.creation_timestamp,
            deletion_timestamp: m.deletion_timestamp,
            ..ObjectMeta::default()
        }
    }
}

#[derive(Deserialize, Default)]
struct RawSpec {
    taints: Option<Vec<Taint>>,
    unschedulable: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct RawStatus {
    #[serde(default, deserialize_with = "nvidia_resources")]
    capacity: Option<BTreeMap<String, Quantity>>,
    #[serde(default, deserialize_with = "nvidia_resources")]
    allocatable: Option<BTreeMap<String, Quantity>>,
    conditions: Option<Vec<NodeCondition>>,
    node_info: Option<RawNodeInfo>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct RawNodeInfo {
    #[serde(rename = "bootID", default)]
    boot_id: String,
}

impl<'de> Deserialize<'de> for SlimNode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = Raw::deserialize(d)?;
        Ok(SlimNode(Node {
            metadata: raw.metadata.into(),
            spec: raw.spec.map(|s| NodeSpec {
                taints: s.taints,
                unschedulable: s.unschedulable,
                ..NodeSpec::default()
            }),
            status: raw.status.map(|s| NodeStatus {
                capacity: s.capacity,
                allocatable: s.allocatable,
                conditions: s.conditions,
                node_info: s.node_info.map(|i| NodeSystemInfo {
                    boot_id: i.boot_id,
                    ..NodeSystemInfo::default()
                }),
                ..NodeStatus::default()
            }),
        }))
    }
}

/// A Pod holding only what `PodFacts` reads: its identity, labels and annotations, node, and
/// status. Its spec (containers, volumes, tolerations) and `managedFields`, most of a plugin
/// pod's JSON, are skipped while parsing: a 5,000-pod list is decoded in a fraction of the memory.
#[derive(Clone, Debug, Default)]
pub struct SlimPod(pub Pod);

core_v1_resource!(SlimPod, "Pod", "pods", NamespaceResourceScope);

#[derive(Deserialize, Default)]
struct RawPod {
    #[serde(default)]
    metadata: RawMeta,
    #[serde(default)]
    spec: Option<RawPodSpec>,
    #[serde(default)]
    status: Option<RawPodStatus>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct RawPodSpec {
    node_name: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct RawPodStatus {
    phase: Option<String>,
    conditions: Option<Vec<PodCondition>>,
    start_time: Option<Time>,
    container_statuses: Option<Vec<RawContainerStatus>>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct RawContainerStatus {
    #[serde(default)]
    name: String,
    state: Option<ContainerState>,
    last_state: Option<ContainerState>,
    #[serde(default)]
    restart_count: i32,
}

impl<'de> Deserialize<'de> for SlimPod {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = RawPod::deserialize(d)?;
        Ok(SlimPod(Pod {
            metadata: raw.metadata.into(),
            spec: raw.spec.map(|s| PodSpec {
                node_name: s.node_name,
                ..PodSpec::default()
            }),
            status: raw.status.map(|s| PodStatus {
                phase: s.phase,
                conditions: s.conditions,
                start_time: s.start_time,
                container_statuses: s.container_statuses.map(|cs| {
                    cs.into_iter()
                        .map(|c| ContainerStatus {
                            name: c.name,
                            state: c.state,
                            last_state: c.last_state,
                            restart_count: c.restart_count,
                            ..ContainerStatus::default()
                        })
                        .collect()
                }),
                ..PodStatus::default()
            }),
        }))
    }
}

/// A map keeping only the keys `keep` wants; the others' values are skipped unparsed.
struct Filtered<V> {
    keep: fn(&str) -> bool,
    values: std::marker::PhantomData<V>,
}

impl<'de, V: Deserialize<'de>> Visitor<'de> for Filtered<V> {
    type Value = Option<BTreeMap<String, V>>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a map or null")
    }

    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_none<E>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut out = BTreeMap::new();
        while let Some(key) = map.next_key::<String>()? {
            if (self.keep)(&key) {
                out.insert(key, map.next_value::<V>()?);
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(Some(out))
    }
}

fn filtered<'de, D: Deserializer<'de>, V: Deserialize<'de>>(
    d: D,
    keep: fn(&str) -> bool,
) -> Result<Option<BTreeMap<String, V>>, D::Error> {
    d.deserialize_option(Filtered {
        keep,
        values: std::marker::PhantomData,
    })
}

/// Capacity and allocatable: the `nvidia.com/*` resources only.
fn nvidia_resources<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<BTreeMap<String, Quantity>>, D::Error> {
    filtered(d, |k| k.starts_with("nvidia.com/"))
}

/// Annotations: gpupool's only (all that `NodeFacts` and `PodFacts` read).
fn gpupool_annotations<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<BTreeMap<String, String>>, D::Error> {
    filtered(d, |k| k.starts_with("gpupool.io/"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::facts::NodeFacts;

    /// A Node as an AKS kubelet reports it (abridged), with the fields gpupool never reads.
    const AKS_NODE: &str = r#"{
      "apiVersion": "v1", "kind": "Node",
      "metadata": {
        "name": "aks-gpu-27182818-vmss000000", "uid": "u1", "resourceVersion": "42",
        "creationTimestamp": "2026-11-20T10:00:00Z",
        "labels": {"kubernetes.azure.com/agentpool": "gpu", "node.kubernetes.io/instance-type": "Standard_NC24ads_A100_v4"},
        "annotations": {"node.alpha.kubernetes.io/ttl": "0", "volumes.kubernetes.io/controller-managed-attach-detach": "true",
                        "gpupool.io/validation": "{\"pool\":\"gpu\",\"bootId\":\"b\",\"plugin\":\"p\",\"result\":\"Passed\",\"attempts\":1,\"at\":\"2026-11-20T10:05:00Z\"}"},
        "managedFields": [{"manager": "kubelet", "operation": "Update", "apiVersion": "v1", "fieldsType": "FieldsV1", "fieldsV1": {"f:status": {"f:images": {}}}}]
      },
      "spec": {"providerID": "azure:///subscriptions/x", "podCIDR": "10.244.0.0/24",
               "taints": [{"key": "sku", "value": "gpu", "effect": "NoSchedule"}], "unschedulable": true},
      "status": {
        "capacity": {"cpu": "24", "memory": "220Gi", "pods": "110", "nvidia.com/gpu": "1", "nvidia.com/mig-1g.10gb": "7"},
        "allocatable": {"cpu": "23", "nvidia.com/gpu": "1", "nvidia.com/mig-1g.10gb": "6"},
        "conditions": [
          {"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "ok",
           "lastHeartbeatTime": "2026-11-20T10:09:00Z", "lastTransitionTime": "2026-11-20T10:01:00Z"},
          {"type": "XIDErrors", "status": "True", "reason": "XIDErrors", "message": "XID 79",
           "lastHeartbeatTime": "2026-11-20T10:09:00Z", "lastTransitionTime": "2026-11-20T10:08:00Z"}],
        "addresses": [{"type": "InternalIP", "address": "10.224.0.4"}],
        "images": [{"names": ["mcr.microsoft.com/oss/kubernetes/pause:3.6"], "sizeBytes": 253243}],
        "nodeInfo": {"bootID": "b-1", "machineID": "m", "kernelVersion": "5.15", "osImage": "Ubuntu",
                     "containerRuntimeVersion": "containerd://1.7", "kubeletVersion": "v1.33.5",
                     "kubeProxyVersion": "", "operatingSystem": "linux", "architecture": "amd64", "systemUUID": "s"},
        "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}}
      }
    }"#;

    #[test]
    fn the_facts_are_the_same_as_from_the_whole_node() {
        let whole: Node = serde_json::from_str(AKS_NODE).unwrap();
        let slim: SlimNode = serde_json::from_str(AKS_NODE).unwrap();
        assert_eq!(
            NodeFacts::from_owned(slim.0.clone()),
            NodeFacts::from_node(&whole)
        );
        let facts = NodeFacts::from_node(&slim.0);
        assert_eq!(facts.boot_id, "b-1");
        assert!(facts.validation.is_some());
        assert_eq!(facts.other_gpu_resources["nvidia.com/mig-1g.10gb"], (7, 6));
    }

    #[test]
    fn what_gpupool_does_not_read_is_not_kept() {
        let slim: SlimNode = serde_json::from_str(AKS_NODE).unwrap();
        let node = slim.0;
        assert!(node.metadata.managed_fields.is_none());
        assert_eq!(
            node.metadata
                .annotations
                .unwrap()
                .keys()
                .collect::<Vec<_>>(),
            vec!["gpupool.io/validation"]
        );
        let status = node.status.unwrap();
        assert!(status.images.is_none() && status.addresses.is_none());
        assert_eq!(
            status.capacity.unwrap().keys().collect::<Vec<_>>(),
            vec!["nvidia.com/gpu", "nvidia.com/mig-1g.10gb"]
        );
        assert!(node.spec.unwrap().provider_id.is_none());
    }

    /// A plugin pod as the API server returns it (abridged), terminating, one container done.
    const PLUGIN_POD: &str = r#"{
      "apiVersion": "v1", "kind": "Pod",
      "metadata": {
        "name": "nvidia-device-plugin-gpu-x7k2p", "namespace": "gpu-resources", "uid": "u2",
        "resourceVersion": "7", "creationTimestamp": "2026-11-20T10:00:00Z",
        "deletionTimestamp": "2026-11-20T10:09:00Z",
        "labels": {"app.kubernetes.io/managed-by": "gpupool", "name": "nvidia-device-plugin-ds",
                   "gpupool.io/pool": "gpu"},
        "annotations": {"gpupool.io/plugin": "abc"},
        "ownerReferences": [{"apiVersion": "apps/v1", "kind": "DaemonSet", "name": "nvidia-device-plugin-gpu", "uid": "d", "controller": true}],
        "managedFields": [{"manager": "kube-controller-manager", "operation": "Update", "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {}}}]
      },
      "spec": {"nodeName": "aks-gpu-0", "containers": [{"name": "plugin", "image": "nvcr.io/nvidia/k8s-device-plugin:v0.18.0",
               "volumeMounts": [{"name": "dp", "mountPath": "/var/lib/kubelet/device-plugins"}]}],
               "tolerations": [{"key": "sku", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}],
               "volumes": [{"name": "dp", "hostPath": {"path": "/var/lib/kubelet/device-plugins"}}]},
      "status": {
        "phase": "Running", "startTime": "2026-11-20T10:00:05Z", "hostIP": "10.224.0.4",
        "conditions": [{"type": "Ready", "status": "True"},
                       {"type": "PodScheduled", "status": "True"}],
        "containerStatuses": [{"name": "plugin", "ready": false, "restartCount": 2, "image": "i", "imageID": "d",
                               "state": {"terminated": {"exitCode": 0, "reason": "Completed", "finishedAt": "2026-11-20T10:09:01Z"}},
                               "lastState": {"terminated": {"exitCode": 1, "reason": "Error", "message": "E1120 main.go:177] no NVML"}}}]
      }
    }"#;

    #[test]
    fn pod_facts_are_the_same_as_from_the_whole_pod() {
        use crate::decide::facts::PodFacts;
        let whole: Pod = serde_json::from_str(PLUGIN_POD).unwrap();
        let slim: SlimPod = serde_json::from_str(PLUGIN_POD).unwrap();
        let facts = PodFacts::from_pod(&slim.0);
        assert_eq!(facts, PodFacts::from_pod(&whole));
        let facts = facts.expect("a plugin pod");
        assert!(facts.deleting && facts.ready && facts.finished.is_some());
        assert_eq!(facts.container.restarts, 2, "restarts are kept");
        assert_eq!(facts.node.as_deref(), Some("aks-gpu-0"));
        let pod = slim.0;
        assert!(pod.metadata.managed_fields.is_none());
        assert!(pod.spec.unwrap().containers.is_empty());
    }

    #[test]
    fn a_node_without_status_or_maps_decodes() {
        let slim: SlimNode =
            serde_json::from_str(r#"{"metadata": {"name": "n", "annotations": null}}"#).unwrap();
        assert_eq!(slim.0.metadata.name.as_deref(), Some("n"));
        assert!(slim.0.status.is_none());
    }
}
