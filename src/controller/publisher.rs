//! Events are published off the reconcile path: a reconcile hands them to one task and moves
//! on, so a status change costs one API round trip, not two (a cold start's 100 pools and a
//! node's GPU change both show in status sooner). Events are best effort: if the API server
//! falls far behind, the oldest are kept and new ones are dropped with a warning.

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, Recorder};
use tokio::sync::mpsc;
use tracing::warn;

/// Events waiting to be published, at most.
const QUEUE: usize = 4096;

#[derive(Clone)]
pub struct EventPublisher {
    queue: mpsc::Sender<(Event, ObjectReference)>,
}

impl EventPublisher {
    /// The publisher, and the task that publishes (it ends when every publisher is dropped).
    pub fn new(recorder: Recorder) -> (EventPublisher, impl Future<Output = ()> + Send) {
        let (queue, mut rx) = mpsc::channel::<(Event, ObjectReference)>(QUEUE);
        let task = async move {
            while let Some((event, about)) = rx.recv().await {
                if let Err(e) = recorder.publish(&event, &about).await {
                    warn!(object = ?about.name, reason = %event.reason, error = %e, "cannot publish event");
                }
            }
        };
        (EventPublisher { queue }, task)
    }

    pub fn publish(&self, event: Event, about: ObjectReference) {
        if let Err(e) = self.queue.try_send((event, about)) {
            let (event, about) = e.into_inner();
            warn!(object = ?about.name, reason = %event.reason, "event dropped: the API server is behind");
        }
    }
}
