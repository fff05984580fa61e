mod common;

use std::net::TcpListener;
use std::time::Duration;

use common::{nats_jetstream_roundtrip, refuses};
use fleet_testkit::{require, NatsServer};

#[test]
fn jetstream_answers_and_drop_cleans_up() {
    if !require("nats-server") {
        return;
    }
    let nats = NatsServer::start_jetstream().unwrap();
    assert_eq!(nats.url(), format!("nats://127.0.0.1:{}", nats.port()));
    let reply = nats_jetstream_roundtrip(nats.port());
    assert!(reply.contains("\"streams\""), "{reply}");
    let (port, dir) = (nats.port(), nats.dir().to_path_buf());
    assert!(dir.exists());
    drop(nats);
    assert!(refuses(port), "port {port} still accepts after drop");
    assert!(!dir.exists(), "{} left behind", dir.display());
}

#[test]
fn stop_and_restart_keep_port_and_storage() {
    if !require("nats-server") {
        return;
    }
    let mut nats = NatsServer::start_jetstream().unwrap();
    let port = nats.port();
    nats_jetstream_roundtrip(port);
    nats.stop();
    assert!(!nats.is_running());
    assert!(refuses(port));
    assert!(nats.store_dir().exists());
    nats.restart().unwrap();
    assert!(nats.is_running());
    assert_eq!(nats.port(), port);
    nats_jetstream_roundtrip(port);
    // Restart while running works too.
    nats.restart().unwrap();
    nats_jetstream_roundtrip(port);
}

#[test]
fn restart_waits_for_a_port_held_by_a_stranger() {
    if !require("nats-server") {
        return;
    }
    let mut nats = NatsServer::start_jetstream().unwrap();
    let port = nats.port();
    nats.stop();
    let stranger = TcpListener::bind(("127.0.0.1", port)).unwrap();
    let release = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(700));
        drop(stranger);
    });
    nats.restart().unwrap();
    release.join().unwrap();
    nats_jetstream_roundtrip(port);
    assert!(nats
        .log_tail()
        .to_lowercase()
        .contains("address already in use"));
}

#[test]
fn parallel_servers_get_distinct_ports() {
    if !require("nats-server") {
        return;
    }
    let servers: Vec<NatsServer> = (0..3)
        .map(|_| NatsServer::start_jetstream().unwrap())
        .collect();
    let mut ports: Vec<u16> = servers.iter().map(NatsServer::port).collect();
    ports.sort_unstable();
    ports.dedup();
    assert_eq!(ports.len(), 3);
}
