//! Never removed for an absence: containers and volume go only for a received deletion.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::sync::Arc;
use std::time::Duration;

use fleet_testkit::{busybox_image, require, PodmanScope};

use common::*;
// ---- Class 1: never remove for an absence ----

#[tokio::test]
async fn a_partial_desired_state_removes_nothing_and_a_complete_one_removes_both() {
    if !require("podman") {
        return;
    }
    let image = busybox_image("testkit").unwrap();
    let scope = PodmanScope::new("absence").unwrap();
    let names = naming(&scope);
    let (container, volume) = (names.container("web"), names.volume("web"));
    let d = deployment("web", &image, &[], &["sleep", "100"]);
    let store: Arc<MemStore> = Arc::default();
    let run = start(&section(&scope, ""), store.clone(), state(true, &[&d]));
    run.wait_running("web").await;
    run.stop().await;

    // Rebuilt from a cache that lacks it: an absence, not a deletion.
    let run = start(&section(&scope, ""), store.clone(), state(false, &[]));
    // Several passes (resync every 2 s): still there.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(state_of(&container).as_deref(), Some("running"));
    assert!(volume_exists(&volume));
    eventually("the held deployment is reported", || {
        run.sink.all_text().contains("confirms its deletion")
    })
    .await;
    let detail = run.sink.details.lock().unwrap().last().cloned().unwrap();
    assert_eq!(detail["held"][0]["deployment"], "web", "{detail}");
    assert_eq!(detail["held"][0]["volume"], volume.as_str(), "{detail}");

    // The control plane's complete set, without it: now it is a deletion.
    run.desired.send(Arc::new(state(true, &[]))).unwrap();
    eventually("container and volume are removed", || {
        state_of(&container).is_none() && !volume_exists(&volume)
    })
    .await;
    run.stop().await;

    // A deletion recorded in the cache counts as received too.
    let run = start(&section(&scope, ""), store.clone(), state(true, &[&d]));
    run.wait_running("web").await;
    let mut cached = state(false, &[]);
    cached.deleted.insert("web".into());
    run.desired.send(Arc::new(cached)).unwrap();
    eventually("container and volume are removed", || {
        state_of(&container).is_none() && !volume_exists(&volume)
    })
    .await;
    run.stop().await;
}
