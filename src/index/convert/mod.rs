//! Kubernetes objects → gpupool's facts (`crate::decide::facts`), at watch time: only what gpupool
//! decides on is kept.

mod config_maps;
mod daemonsets;
mod nodes;
mod pods;

pub use daemonsets::is_device_plugin;
pub use nodes::parse_count;
