//! What each node should have, and whether it is healthy: the expected GPU count (VM sizes,
//! provisioner labels, the spec), multiplied by sharing or MIG, judged against what the node
//! advertises; and GPU faults from node conditions.

mod expected;
pub mod health;
pub mod sizes;

pub use expected::{Expected, Judgement, Source, expected, instances_per_gpu, judge, profile_name};
