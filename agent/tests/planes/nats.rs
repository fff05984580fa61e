//! The NATS plane fed hostile input.

use std::time::Duration;

use fleet_contract::names;
use fleet_contract::CommandReply;

use crate::support::*;
use fleet_testkit::{NatsServer, TempRoot};
use futures::StreamExt;

/// Class 1: one record SQLite cannot store (revision 2^63) among good ones. The good ones are
/// cached; an offline restart hands the modules every good deployment, says the state is not
/// complete and implies no removal for the bad one. (The old all-or-nothing cache write
/// stored nothing, so the offline restart had no deployment at all.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_record_among_good_ones_loses_nothing() {
    let mut nats = NatsServer::start_jetstream().unwrap();
    let client = async_nats::connect(nats.url()).await.unwrap();
    let (desired, _) = init_buckets(&client).await;
    for name in ["alpha", "beta", "gamma"] {
        desired
            .put(
                names::kv_deploy_key(DEV, name),
                manifest_json(name, "1").into(),
            )
            .await
            .unwrap();
    }
    desired
        .put(
            names::kv_deploy_key(DEV, "huge"),
            manifest_json("huge", "9223372036854775808").into(),
        )
        .await
        .unwrap();

    let root = TempRoot::new().unwrap();
    let key = key();
    let cfg = config(&root, &nats_plane(&nats.url()), &key);
    let watcher = Watcher::new(0);
    let agent = start(cfg.clone(), watcher.clone());
    wait_for(20, "the plane's listing", || {
        watcher
            .last()
            .filter(|s| s.complete && s.deployments.len() == 4)
    })
    .await;
    let keys = wait_for(10, "the good documents cached", || {
        let k = cached_keys(&root);
        ["deploy.alpha", "deploy.beta", "deploy.gamma"]
            .iter()
            .all(|n| k.iter().any(|c| c == n))
            .then_some(k)
    })
    .await;
    assert!(keys.len() >= 3, "{keys:?}");
    agent.stop().await;

    // Offline restart: from the cache alone.
    nats.stop();
    let watcher = Watcher::new(0);
    let agent = start(cfg, watcher.clone());
    let first = wait_for(10, "the start-up state", || watcher.first()).await;
    agent.stop().await;
    for name in ["alpha", "beta", "gamma"] {
        assert!(
            first.deployments.contains_key(name),
            "{name} missing from the state rebuilt from the cache: {:?}",
            first.deployments.keys().collect::<Vec<_>>()
        );
    }
    assert!(
        !first.complete,
        "a state rebuilt from the cache is never complete"
    );
    assert!(
        !first.removal_received("huge"),
        "no removal may be implied for the record the cache could not store"
    );
}

/// Class 1: a deletion that was received is recorded, so an offline restart knows it (and
/// only it) was deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_received_deletion_survives_an_offline_restart() {
    let mut nats = NatsServer::start_jetstream().unwrap();
    let client = async_nats::connect(nats.url()).await.unwrap();
    let (desired, _) = init_buckets(&client).await;
    for name in ["keep", "gone"] {
        desired
            .put(
                names::kv_deploy_key(DEV, name),
                manifest_json(name, "1").into(),
            )
            .await
            .unwrap();
    }
    let root = TempRoot::new().unwrap();
    let key = key();
    let cfg = config(&root, &nats_plane(&nats.url()), &key);
    let watcher = Watcher::new(0);
    let agent = start(cfg.clone(), watcher.clone());
    wait_for(20, "both deployments", || {
        watcher.last().filter(|s| s.deployments.len() == 2)
    })
    .await;
    desired
        .delete(names::kv_deploy_key(DEV, "gone"))
        .await
        .unwrap();
    wait_for(10, "the deletion", || {
        watcher.last().filter(|s| s.deployments.len() == 1)
    })
    .await;
    wait_for(10, "the deletion cached", || {
        (cached_keys(&root) == ["deploy.keep"]).then_some(())
    })
    .await;
    agent.stop().await;

    nats.stop();
    let watcher = Watcher::new(0);
    let agent = start(cfg, watcher.clone());
    let first = wait_for(10, "the start-up state", || watcher.first()).await;
    agent.stop().await;
    assert!(first.deployments.contains_key("keep"));
    assert!(first.removal_received("gone"), "{:?}", first.deleted);
    assert!(!first.removal_received("never-seen"));
}

/// Class 8 and 6: odd keys appear as ignored inputs (quoted, with the reason) in the
/// heartbeat, `fleet-agent status` (text and JSON) and the published info document; a
/// document over the cap is refused by size and cached as key, length and reason only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_keys_and_oversized_documents_are_reported() {
    let nats = NatsServer::start_jetstream().unwrap();
    let client = async_nats::connect(nats.url()).await.unwrap();
    let (desired, status) = init_buckets(&client).await;
    let long = format!("{DEV}.deploy.{}", "k".repeat(3000));
    for k in [
        format!("{DEV}.deploy.Web"),
        format!("{DEV}.deploy.web.extra"),
        format!("{DEV}.other"),
        long.clone(),
    ] {
        desired
            .put(k, manifest_json("web", "1").into())
            .await
            .unwrap();
    }
    // A wildcard key: the KV client refuses to write one, so it goes in as a raw JetStream
    // publish; if the server takes it, it is listed too.
    let js = async_nats::jetstream::new(client.clone());
    let star = match js
        .publish(
            format!("$KV.{}.{DEV}.*", fleet_contract::names::DESIRED_BUCKET),
            manifest_json("web", "1").into(),
        )
        .await
    {
        Ok(ack) => ack.await.is_ok(),
        Err(_) => false,
    };
    let big = vec![b' '; fleet_contract::MAX_MANIFEST_BYTES + 1];
    desired
        .put(names::kv_deploy_key(DEV, "big"), big.into())
        .await
        .unwrap();

    let root = TempRoot::new().unwrap();
    let key = key();
    let cfg = config(&root, &nats_plane(&nats.url()), &key);
    let watcher = Watcher::new(0);
    let agent = start(cfg, watcher.clone());
    let hb = wait_for(20, "four ignored inputs", || {
        let hb = agent.handle.heartbeat();
        (hb.ignored_inputs.listed.len() >= 4).then_some(hb)
    })
    .await;
    let listed = &hb.ignored_inputs.listed;
    let find = |needle: &str| {
        listed
            .iter()
            .find(|i| i.input.contains(needle))
            .unwrap_or_else(|| panic!("{needle} not among {listed:#?}"))
    };
    assert!(find("deploy.Web").reason.contains("deployment name"));
    assert!(find("deploy.web.extra").reason.contains("deployment name"));
    assert!(find("dev-1.other")
        .reason
        .contains("not a key this agent reads"));
    if star {
        assert!(find("dev-1.*\"")
            .reason
            .contains("not a key this agent reads"));
    }
    let long_one = find("(3013 bytes)");
    assert!(
        long_one.input.len() < 200,
        "the long key is quoted, not copied: {long_one:?}"
    );

    // The oversized document: refused by size, naming its length, cached without its body.
    let state = wait_for(10, "big refused", || {
        watcher.last().filter(|s| s.deployments.contains_key("big"))
    })
    .await;
    match &state.deployments["big"] {
        fleet_module_api::DesiredDeployment::Invalid { error, .. } => {
            let m = error.to_string();
            assert!(
                m.contains(&format!("{} bytes", fleet_contract::MAX_MANIFEST_BYTES + 1)),
                "{m}"
            );
        }
        other => panic!("{other:?}"),
    }
    wait_for(10, "big cached as a refusal", || {
        let store = fleet_agent::store::Store::open_existing(
            &root.state().join("state.db"),
            Duration::from_secs(2),
        )
        .unwrap();
        store
            .desired()
            .unwrap()
            .into_iter()
            .find(|r| r.key == "deploy.big")
            .filter(|r| r.body.is_empty() && r.refused.is_some())
            .map(|r| assert_eq!(r.length, fleet_contract::MAX_MANIFEST_BYTES as u64 + 1))
    })
    .await;

    // `fleet-agent status`, JSON and text, reads the same from the store.
    let db = root.state().join("state.db");
    let report = wait_for(10, "status lists the ignored inputs", || {
        fleet_agent::status::read(&db, Duration::from_secs(2))
            .ok()
            .filter(|r| r.ignored_inputs.listed.len() >= 4)
    })
    .await;
    let text = fleet_agent::status::render(&report);
    assert!(text.contains("IGNORED INPUTS"), "{text}");
    assert!(text.contains("deploy.Web"), "{text}");
    let json = serde_json::to_value(&report).unwrap();
    assert!(json["ignored_inputs"]["listed"].as_array().unwrap().len() >= 4);

    // The published info document carries them too.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let doc: Option<serde_json::Value> = status
            .get(names::kv_info_key(DEV))
            .await
            .unwrap()
            .and_then(|v| serde_json::from_slice(&v).ok());
        let n = doc
            .as_ref()
            .and_then(|d| d["ignored_inputs"]["listed"].as_array().map(Vec::len));
        if n.is_some_and(|n| n >= 4) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "published info: {doc:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // A deleted odd key is no longer listed.
    desired.delete(format!("{DEV}.other")).await.unwrap();
    wait_for(10, "the deleted key unlisted", || {
        let hb = agent.handle.heartbeat();
        (!hb.ignored_inputs
            .listed
            .iter()
            .any(|i| i.input.contains("dev-1.other")))
        .then_some(())
    })
    .await;
    agent.stop().await;
}

/// Class 4: a heartbeat larger than the server's max payload. The old plane ended the
/// session on the failed publish and re-published it first after every reconnect, so the
/// device never answered a command again. Now the document is cut to fit, and the device
/// answers a signed ping and keeps publishing heartbeats.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_document_over_the_servers_max_payload_does_not_take_the_device_off_nats() {
    let nats = NatsServer::start_jetstream_with_config("max_payload: 4096\n").unwrap();
    let client = async_nats::connect(nats.url()).await.unwrap();
    assert_eq!(client.server_info().max_payload, 4096);
    let (_desired, status) = init_buckets(&client).await;
    let root = TempRoot::new().unwrap();
    let key = key();
    let cfg = config(&root, &nats_plane(&nats.url()), &key);
    let mut beats = client.subscribe(names::nats_hb_subject(DEV)).await.unwrap();
    let agent = start(cfg, Watcher::new(10_000));

    // Heartbeats keep coming, each within the limit and saying it was cut.
    for _ in 0..3 {
        let msg = tokio::time::timeout(Duration::from_secs(20), beats.next())
            .await
            .expect("a heartbeat within 20 s")
            .unwrap();
        assert!(msg.payload.len() <= 4096);
        let hb: serde_json::Value = serde_json::from_slice(&msg.payload).unwrap();
        assert_eq!(hb["device"], DEV);
        assert!(
            hb["details"]["cut"]["length"].as_u64().unwrap() > 10_000,
            "{hb}"
        );
    }
    // A signed ping is answered.
    let reply = tokio::time::timeout(
        Duration::from_secs(20),
        client.request(
            names::nats_cmd_subject(DEV),
            signed_ping(&key, "p-1").into(),
        ),
    )
    .await
    .expect("ping answered within 20 s")
    .unwrap();
    let reply: CommandReply = serde_json::from_slice(&reply.payload).unwrap();
    assert!(reply.ok, "{reply:?}");
    // The info document is there, cut.
    let info = status.get(names::kv_info_key(DEV)).await.unwrap().unwrap();
    assert!(info.len() <= 4096);
    agent.stop().await;
}
