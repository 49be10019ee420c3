//! gpupool: a Kubernetes operator that makes GPU node pools ready to run GPU work.

pub mod api;
pub mod client;
pub mod controller;
pub mod crd;
pub mod decide;
pub mod index;
pub mod leader;
pub mod server;
pub mod telemetry;
