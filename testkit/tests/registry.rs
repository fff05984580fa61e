mod common;

use common::{http_get, refuses};
use fleet_testkit::{require, Registry};

#[test]
fn serves_v2_and_drop_cleans_up() {
    if !require("docker-registry") {
        return;
    }
    let reg = Registry::start().unwrap();
    assert_eq!(reg.addr(), format!("127.0.0.1:{}", reg.port()));
    assert_eq!(http_get(reg.port(), "/v2/").0, 200);
    let conf = std::fs::read_to_string(reg.registries_conf().unwrap()).unwrap();
    assert!(
        conf.contains(&reg.addr()) && conf.contains("insecure = true"),
        "{conf}"
    );
    let (port, dir) = (reg.port(), reg.dir().to_path_buf());
    drop(reg);
    assert!(refuses(port));
    assert!(!dir.exists());
}

#[test]
fn stop_and_restart_keep_port() {
    if !require("docker-registry") {
        return;
    }
    let mut reg = Registry::start().unwrap();
    let port = reg.port();
    reg.stop();
    assert!(refuses(port));
    reg.restart().unwrap();
    assert!(reg.is_running());
    assert_eq!(http_get(port, "/v2/").0, 200);
}
