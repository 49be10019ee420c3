//! What gpupool knows of the cluster, kept from watches: plain data, updated by watch events and
//! read by reconciles. Each index says what an event really changed, which is what decides the
//! pools to look at again; nothing here talks to the API server.

pub mod convert;
mod dra;
mod nodes;
mod pods;
pub mod slim;
mod tracked;

pub use dra::{DraIndex, GpuSlice};
pub use nodes::{NodeIndex, WriteHint};
pub use pods::PodIndex;
pub use tracked::{Change, Keyed, Tracked, map_event};

use crate::decide::facts::{ConfigMapFacts, DaemonSetFacts};

impl Keyed for DaemonSetFacts {
    fn key(&self) -> std::borrow::Cow<'_, str> {
        std::borrow::Cow::Owned(self.id.to_string())
    }
}

/// The DaemonSets gpupool cares about: its own and other device plugins.
pub type DaemonSetIndex = Tracked<DaemonSetFacts>;

impl Keyed for ConfigMapFacts {
    fn key(&self) -> std::borrow::Cow<'_, str> {
        std::borrow::Cow::Owned(self.id.to_string())
    }
}

/// gpupool's plugin ConfigMaps, in the plugin namespace.
pub type ConfigMapIndex = Tracked<ConfigMapFacts>;
