//! The drift watcher: `podman events` for this instance's containers wakes the loop.

use std::sync::Arc;

use tokio::sync::mpsc;

use super::{Engine, PODMAN_RETRY};
use crate::reconcile::LABEL_DEPLOYMENT;

/// Follows `podman events` for this instance and triggers a pass on every container change;
/// restarts the stream (and triggers a pass, since events may have been missed) when it ends.
pub(super) async fn watch_events(engine: Arc<Engine>, trigger: mpsc::UnboundedSender<()>) {
    let selector = engine.rt.naming.selector();
    loop {
        match engine.rt.podman.events(&selector) {
            Ok(mut stream) => loop {
                match stream.next().await {
                    Ok(Some(ev)) => {
                        let relevant = matches!(
                            ev.status.as_str(),
                            "died" | "remove" | "stop" | "pause" | "unpause" | "kill"
                        );
                        if relevant && ev.label(LABEL_DEPLOYMENT).is_some() {
                            tracing::debug!(container = %ev.name, status = %ev.status, "podman event");
                            if trigger.send(()).is_err() {
                                return;
                            }
                        }
                    }
                    Ok(None) => {
                        tracing::warn!("podman events ended; restarting it");
                        break;
                    }
                    Err(e @ crate::error::Error::Decode { .. }) => {
                        tracing::warn!(error = %e, "skipping an undecodable podman event");
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "podman events failed; restarting it");
                        break;
                    }
                }
            },
            Err(e) => tracing::warn!(error = %e, "cannot follow podman events"),
        }
        if trigger.send(()).is_err() {
            return;
        }
        tokio::time::sleep(PODMAN_RETRY).await;
    }
}
