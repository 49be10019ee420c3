//! The device plugin of a pool: which plugin mode it gets (its nodes' images), which of its nodes
//! it serves (claims against other pools and plugins, the node labels that place it), the
//! DaemonSet and config it runs with, and what to write to get there.

pub mod action;
pub mod claims;
pub mod config;
pub mod daemonset;
pub mod mode;
pub mod placement;
mod plan;
pub mod rollout;

pub use plan::{PluginPlan, gpu_use_wanted, plan_plugin};
