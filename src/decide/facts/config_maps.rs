//! gpupool's plugin ConfigMaps, as the watch keeps them.

use super::ObjectId;

/// A plugin ConfigMap gpupool wrote, as the watch keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigMapFacts {
    pub id: ObjectId,
    pub pool_key: Option<String>,
    /// The hash gpupool put on it, and the hash of what it holds now (someone may have edited
    /// it): both must match the desired one.
    pub desired_hash: Option<String>,
    pub content_hash: Option<String>,
}
