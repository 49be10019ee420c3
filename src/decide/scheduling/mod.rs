//! Where pods may run: pool selectors against node labels, and taints against tolerations.

pub mod selector;
mod tolerations;

pub use selector::{affinity_requirements, describe};
pub use tolerations::{
    base_tolerations, daemon_pod_would_run_on, is_lifecycle_taint, pool_taint_keys,
    required_node_terms, tolerates, tolerates_node_taints, tolerations_for,
};
