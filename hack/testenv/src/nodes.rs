//! Simulated AKS nodes, run by kwok.
//!
//! A node made here looks like what AKS registers: the agent-pool and image labels the operator
//! keys on, taints, and capacity/allocatable including `nvidia.com/gpu` once "the device plugin"
//! has registered. kwok (which manages nodes annotated `kwok.x-k8s.io/node=fake`) plays the
//! kubelet: it marks the node Ready, renews its Lease, heartbeats its status and runs the pods
//! bound to it, while keeping whatever capacity we set. Tests set `nvidia.com/gpu` themselves
//! ([`set_gpus`]), or let it follow the device-plugin pod on the node as a real kubelet's device
//! manager does ([`GpuNode::gpus_follow_plugin`] with [`crate::simulate::PluginGpus`]).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Node, NodeSpec, NodeStatus, NodeSystemInfo, Taint};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};

use crate::Error;

/// The annotation kwok selects the nodes it simulates by.
pub const KWOK_ANNOTATION: (&str, &str) = ("kwok.x-k8s.io/node", "fake");
/// The extended resource the NVIDIA device plugin registers.
pub const GPU_RESOURCE: &str = "nvidia.com/gpu";
/// AKS node image of a standard Ubuntu node pool (GPU driver installed by the GPU Operator or by
/// gpupool's DaemonSet).
pub const STANDARD_IMAGE: &str = "AKSUbuntu-2204gen2containerd-202405.03.0";
/// AKS node image of the (deprecated) "GPU dedicated" image, which bakes in the driver.
pub const SPECIALIZED_IMAGE: &str = "AKSUbuntu-1804gpucontainerd-202307.27.0";

/// Description of one fake AKS node; build with [`GpuNode::aks`] and the setters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuNode {
    pub name: String,
    pub agentpool: String,
    /// GPUs in the machine (drives the `accelerator` labels and the registered capacity).
    pub gpus: u32,
    /// Whether the GPUs are already advertised as `nvidia.com/gpu` in status. `false` models a
    /// GPU node whose device plugin has not registered yet (see [`GpuNode::no_gpus_yet`]).
    pub gpus_registered: bool,
    /// Runs the GPU-dedicated node image ([`SPECIALIZED_IMAGE`]) instead of [`STANDARD_IMAGE`].
    pub specialized_image: bool,
    /// `nvidia.com/gpu` follows the device-plugin pod running on the node, as
    /// [`crate::simulate::PluginGpus`] plays it (see [`GpuNode::gpus_follow_plugin`]).
    pub gpus_follow_plugin: bool,
    /// `(key, value, effect)`.
    pub taints: Vec<(String, String, String)>,
    pub extra_labels: BTreeMap<String, String>,
    pub instance_type: String,
}

impl GpuNode {
    /// A node of AKS agent pool `agentpool`: 1 GPU (registered), `Standard_NC6`, standard image,
    /// no taints.
    pub fn aks(name: &str, agentpool: &str) -> Self {
        GpuNode {
            name: name.to_owned(),
            agentpool: agentpool.to_owned(),
            gpus: 1,
            gpus_registered: true,
            specialized_image: false,
            gpus_follow_plugin: false,
            taints: Vec::new(),
            extra_labels: BTreeMap::new(),
            instance_type: "Standard_NC6".to_owned(),
        }
    }

    pub fn gpus(mut self, n: u32) -> Self {
        self.gpus = n;
        self
    }

    /// Use the GPU-dedicated AKS image.
    pub fn specialized(mut self) -> Self {
        self.specialized_image = true;
        self
    }

    pub fn taint(mut self, key: &str, value: &str, effect: &str) -> Self {
        self.taints
            .push((key.to_owned(), value.to_owned(), effect.to_owned()));
        self
    }

    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.extra_labels.insert(key.to_owned(), value.to_owned());
        self
    }

    pub fn instance_type(mut self, instance_type: &str) -> Self {
        self.instance_type = instance_type.to_owned();
        self
    }

    /// The machine has GPUs but no device plugin has registered them yet: status has no
    /// `nvidia.com/gpu` until [`set_gpus`] is called.
    pub fn no_gpus_yet(mut self) -> Self {
        self.gpus_registered = false;
        self
    }

    /// The node's GPUs show only while a device-plugin pod runs on it, as on a real node: it
    /// registers without `nvidia.com/gpu` (as a real node whose plugin never ran) and is annotated
    /// [`crate::simulate::GPUS_FOLLOW_PLUGIN_ANNOTATION`]`=<gpus>`, so that a running
    /// [`crate::simulate::PluginGpus`] writes capacity and allocatable as the plugin registers
    /// and stops. Without one, the node never gets GPUs.
    pub fn gpus_follow_plugin(mut self) -> Self {
        self.gpus_follow_plugin = true;
        self.gpus_registered = false;
        self
    }

    fn labels(&self) -> BTreeMap<String, String> {
        let mut labels = BTreeMap::new();
        let mut put = |k: &str, v: &str| {
            labels.insert(k.to_owned(), v.to_owned());
        };
        put("kubernetes.azure.com/agentpool", &self.agentpool);
        put("agentpool", &self.agentpool);
        put("kubernetes.azure.com/mode", "user");
        put("kubernetes.azure.com/os-sku", "Ubuntu");
        put(
            "kubernetes.azure.com/node-image-version",
            if self.specialized_image {
                SPECIALIZED_IMAGE
            } else {
                STANDARD_IMAGE
            },
        );
        put("node.kubernetes.io/instance-type", &self.instance_type);
        put("kubernetes.io/os", "linux");
        put("kubernetes.io/arch", "amd64");
        put("kubernetes.io/hostname", &self.name);
        put("type", "kwok");
        if self.gpus > 0 || self.specialized_image {
            put("accelerator", "nvidia");
            put("kubernetes.azure.com/accelerator", "nvidia");
        }
        labels.extend(self.extra_labels.clone());
        labels
    }

    fn annotations(&self) -> BTreeMap<String, String> {
        let mut annotations =
            BTreeMap::from([(KWOK_ANNOTATION.0.to_owned(), KWOK_ANNOTATION.1.to_owned())]);
        if self.gpus_follow_plugin {
            annotations.insert(
                crate::simulate::GPUS_FOLLOW_PLUGIN_ANNOTATION.to_owned(),
                self.gpus.to_string(),
            );
        }
        annotations
    }

    fn object(&self, cpu: &str, memory: &str) -> Node {
        let mut resources = BTreeMap::from([
            ("cpu".to_owned(), Quantity(cpu.to_owned())),
            ("memory".to_owned(), Quantity(memory.to_owned())),
            ("pods".to_owned(), Quantity("110".to_owned())),
        ]);
        if self.gpus_registered && !self.gpus_follow_plugin && self.gpus > 0 {
            resources.insert(GPU_RESOURCE.to_owned(), Quantity(self.gpus.to_string()));
        }
        Node {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                labels: Some(self.labels()),
                annotations: Some(self.annotations()),
                ..Default::default()
            },
            spec: Some(NodeSpec {
                provider_id: Some(format!(
                    "azure:///subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/mc_testenv/providers/Microsoft.Compute/virtualMachineScaleSets/aks-{}-vmss/virtualMachines/{}",
                    self.agentpool, self.name
                )),
                taints: (!self.taints.is_empty()).then(|| {
                    self.taints
                        .iter()
                        .map(|(key, value, effect)| Taint {
                            key: key.clone(),
                            value: Some(value.clone()),
                            effect: effect.clone(),
                            time_added: None,
                        })
                        .collect()
                }),
                ..Default::default()
            }),
            status: Some(NodeStatus {
                capacity: Some(resources.clone()),
                allocatable: Some(resources),
                node_info: Some(NodeSystemInfo {
                    architecture: "amd64".into(),
                    boot_id: new_boot_id(),
                    container_runtime_version: "containerd://1.7.27-1".into(),
                    kernel_version: "5.15.0-1089-azure".into(),
                    kube_proxy_version: String::new(),
                    kubelet_version: "v1.33.5".into(),
                    machine_id: format!("{:032x}", fnv(&self.name)),
                    operating_system: "linux".into(),
                    os_image: "Ubuntu 22.04.5 LTS".into(),
                    system_uuid: format!("{:032x}", fnv(&format!("uuid/{}", self.name))),
                    ..Default::default()
                }),
                ..Default::default()
            }),
        }
    }
}

/// Creates the node. Node creation keeps `status` (the kubelet registers nodes the same way), so
/// capacity is there from the first moment anyone sees the node, and kwok's initialize stage
/// keeps it. Should the API server ever drop it, it is written through the status subresource.
pub async fn create_node(client: &kube::Client, node: &GpuNode) -> Result<Node, Error> {
    create(client, node.object("6", "56Gi")).await
}

/// A plain CPU node (`Standard_D4s_v3`, 4 CPUs, 16 GiB) of agent pool `agentpool`, untainted.
pub async fn create_cpu_node(
    client: &kube::Client,
    name: &str,
    agentpool: &str,
) -> Result<Node, Error> {
    let node = GpuNode::aks(name, agentpool)
        .gpus(0)
        .instance_type("Standard_D4s_v3");
    let mut object = node.object("4", "16Gi");
    if let Some(labels) = object.metadata.labels.as_mut() {
        // AKS marks the first pool "system"; gpupool must never touch it.
        if agentpool == "system" {
            labels.insert("kubernetes.azure.com/mode".into(), "system".into());
        }
    }
    create(client, object).await
}

async fn create(client: &kube::Client, object: Node) -> Result<Node, Error> {
    let api: Api<Node> = Api::all(client.clone());
    let created = api.create(&PostParams::default(), &object).await?;
    let wanted = object.status.as_ref().and_then(|s| s.capacity.clone());
    let got = created.status.as_ref().and_then(|s| s.capacity.clone());
    if wanted == got {
        return Ok(created);
    }
    let name = object.metadata.name.clone().unwrap_or_default();
    let patch = serde_json::json!({ "status": {
        "capacity": wanted,
        "allocatable": object.status.as_ref().and_then(|s| s.allocatable.clone()),
    }});
    Ok(api
        .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?)
}

/// Sets `nvidia.com/gpu` capacity and allocatable in the node's status — what the device plugin
/// registering does, or (allocatable dropping) GPUs falling off the bus. kwok keeps the values.
pub async fn set_gpus(
    client: &kube::Client,
    node: &str,
    capacity: u32,
    allocatable: u32,
) -> Result<(), Error> {
    let api: Api<Node> = Api::all(client.clone());
    let patch = serde_json::json!({ "status": {
        "capacity": { GPU_RESOURCE: capacity.to_string() },
        "allocatable": { GPU_RESOURCE: allocatable.to_string() },
    }});
    api.patch_status(node, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}

/// A fresh boot id, as the kernel makes one at every boot (`/proc/sys/kernel/random/boot_id`).
fn new_boot_id() -> String {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).expect("random bytes");
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

fn fnv(s: &str) -> u128 {
    s.bytes()
        .fold(0x6c62272e07bb014262b821756295c58d_u128, |h, b| {
            (h ^ u128::from(b)).wrapping_mul(0x0000000001000000000000000000013B)
        })
}

/// The node rebooted: a new `status.nodeInfo.bootID`, as the kubelet reports after a restart of
/// the machine (kwok keeps it). Returns the new boot id.
pub async fn reboot(client: &kube::Client, node: &str) -> Result<String, Error> {
    let boot_id = new_boot_id();
    let api: Api<Node> = Api::all(client.clone());
    let patch = serde_json::json!({ "status": { "nodeInfo": { "bootID": boot_id } } });
    api.patch_status(node, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(boot_id)
}

/// Sets extended resources in the node's status, `(name, capacity, allocatable)` each — what the
/// device plugin registers under MIG (`nvidia.com/mig-1g.10gb`) or renamed time-slicing
/// (`nvidia.com/gpu.shared`). kwok keeps them.
pub async fn set_resources(
    client: &kube::Client,
    node: &str,
    resources: &[(&str, u32, u32)],
) -> Result<(), Error> {
    let api: Api<Node> = Api::all(client.clone());
    let capacity: serde_json::Map<String, serde_json::Value> = resources
        .iter()
        .map(|(name, c, _)| ((*name).to_owned(), c.to_string().into()))
        .collect();
    let allocatable: serde_json::Map<String, serde_json::Value> = resources
        .iter()
        .map(|(name, _, a)| ((*name).to_owned(), a.to_string().into()))
        .collect();
    let patch =
        serde_json::json!({ "status": { "capacity": capacity, "allocatable": allocatable } });
    api.patch_status(node, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}

/// Sets one node condition as node-problem-detector does (e.g. `XIDErrors` True), merged by type
/// into the node's conditions; `status` "False" clears the problem.
pub async fn set_condition(
    client: &kube::Client,
    node: &str,
    type_: &str,
    status: &str,
    reason: &str,
    message: &str,
) -> Result<(), Error> {
    let api: Api<Node> = Api::all(client.clone());
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let patch = serde_json::json!({ "status": { "conditions": [{
        "type": type_, "status": status, "reason": reason, "message": message,
        "lastHeartbeatTime": now, "lastTransitionTime": now,
    }]}});
    api.patch_status(node, &PatchParams::default(), &Patch::Strategic(&patch))
        .await?;
    Ok(())
}

/// Deletes the node (as the cluster autoscaler or a scale-down would). A node that is already
/// gone counts as deleted.
pub async fn delete_node(client: &kube::Client, name: &str) -> Result<(), Error> {
    let api: Api<Node> = Api::all(client.clone());
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Whether kwok has marked the node Ready.
pub fn is_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// `(capacity, allocatable)` of `nvidia.com/gpu`, `None` where absent.
pub fn gpu_resources(node: &Node) -> (Option<u32>, Option<u32>) {
    let get = |m: Option<&BTreeMap<String, Quantity>>| {
        m.and_then(|m| m.get(GPU_RESOURCE))
            .and_then(|q| q.0.parse().ok())
    };
    let status = node.status.as_ref();
    (
        get(status.and_then(|s| s.capacity.as_ref())),
        get(status.and_then(|s| s.allocatable.as_ref())),
    )
}
