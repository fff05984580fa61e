//! The MQTT plane fed hostile input.

use std::time::Duration;

use fleet_contract::names;
use fleet_contract::CommandReply;

use crate::support::*;
use fleet_testkit::{Mosquitto, TempRoot};

/// Class 4 on MQTT: a broker whose CONNACK limits packets to 4 KiB. The old plane handed a
/// larger heartbeat to the client, whose event loop then failed on it at every reconnect; now
/// documents are cut to the broker's limit and the device answers a signed ping.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_document_over_the_brokers_packet_limit_does_not_take_the_device_off_mqtt() {
    use rumqttc::v5::mqttbytes::v5::PublishProperties;
    use rumqttc::v5::mqttbytes::QoS;
    let broker = Mosquitto::start_with_config("max_packet_size 4096").unwrap();
    let root = TempRoot::new().unwrap();
    let key = key();
    let cfg = config(&root, &mqtt_plane(broker.port()), &key);
    let (client, mut rx) = mqtt_client(
        broker.port(),
        &[names::mqtt_hb(DEV), "test/reply".to_owned()],
    )
    .await;
    let agent = start(cfg, Watcher::new(10_000));

    let mut beats = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while beats < 3 {
        let (topic, payload) = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .expect("three heartbeats within 30 s")
            .unwrap();
        if topic == names::mqtt_hb(DEV) {
            let hb: serde_json::Value = serde_json::from_slice(&payload).unwrap();
            assert!(hb["details"]["cut"].is_object(), "{hb}");
            beats += 1;
        }
    }
    let props = PublishProperties {
        response_topic: Some("test/reply".into()),
        correlation_data: Some(bytes::Bytes::from_static(b"c-1")),
        ..Default::default()
    };
    client
        .publish_with_properties(
            names::mqtt_cmd(DEV),
            QoS::AtLeastOnce,
            false,
            signed_ping(&key, "p-1"),
            props,
        )
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (topic, payload) = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .expect("ping answered within 20 s")
            .unwrap();
        if topic == "test/reply" {
            let reply: CommandReply = serde_json::from_slice(&payload).unwrap();
            assert!(reply.ok, "{reply:?}");
            break;
        }
    }
    agent.stop().await;
}

/// Class 7 and 8 on MQTT: a retained manifest over the contract's cap arrives (the agent's
/// packet limit is above the cap) and is refused by size with its length; an odd desired
/// topic is an ignored input.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_over_cap_retained_manifest_and_odd_topics_are_reported_on_mqtt() {
    use rumqttc::v5::mqttbytes::QoS;
    let broker = Mosquitto::start().unwrap();
    let (client, _rx) = mqtt_client(broker.port(), &[]).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let over = fleet_contract::MAX_MANIFEST_BYTES + 10_000;
    client
        .publish(
            names::mqtt_desired_deploy(DEV, "big"),
            QoS::AtLeastOnce,
            true,
            vec![b' '; over],
        )
        .await
        .unwrap();
    for topic in [
        format!("fleet/{DEV}/desired/deploy/Web"),
        format!("fleet/{DEV}/desired/other"),
    ] {
        client
            .publish(topic, QoS::AtLeastOnce, true, manifest_json("web", "1"))
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    let root = TempRoot::new().unwrap();
    let key = key();
    let cfg = config(&root, &mqtt_plane(broker.port()), &key);
    let watcher = Watcher::new(0);
    let agent = start(cfg, watcher.clone());
    let state = wait_for(20, "big refused", || {
        watcher.last().filter(|s| s.deployments.contains_key("big"))
    })
    .await;
    match &state.deployments["big"] {
        fleet_module_api::DesiredDeployment::Invalid { error, .. } => {
            let m = error.to_string();
            assert!(m.contains(&format!("{over} bytes")), "{m}");
            assert!(m.contains("deploy/big"), "{m}");
        }
        other => panic!("{other:?}"),
    }
    let hb = wait_for(10, "two ignored topics", || {
        let hb = agent.handle.heartbeat();
        (hb.ignored_inputs.listed.len() >= 2).then_some(hb)
    })
    .await;
    let inputs: Vec<&str> = hb
        .ignored_inputs
        .listed
        .iter()
        .map(|i| i.input.as_str())
        .collect();
    assert!(
        inputs.iter().any(|i| i.contains("deploy/Web")),
        "{inputs:?}"
    );
    assert!(
        inputs.iter().any(|i| i.contains("desired/other")),
        "{inputs:?}"
    );
    agent.stop().await;
}
