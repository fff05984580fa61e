mod common;

use common::{mqtt_connack, refuses};
use fleet_testkit::{require, Mosquitto};

#[test]
fn accepts_mqtt_and_drop_cleans_up() {
    if !require("mosquitto") {
        return;
    }
    let mq = Mosquitto::start().unwrap();
    assert_eq!(mq.url(), format!("mqtt://127.0.0.1:{}", mq.port()));
    assert_eq!(mqtt_connack(mq.port()), [0x20, 0x02, 0x00, 0x00]);
    let (port, dir) = (mq.port(), mq.dir().to_path_buf());
    drop(mq);
    assert!(refuses(port));
    assert!(!dir.exists());
}

#[test]
fn stop_and_restart_keep_port() {
    if !require("mosquitto") {
        return;
    }
    let mut mq = Mosquitto::start().unwrap();
    let port = mq.port();
    mq.stop();
    assert!(!mq.is_running());
    assert!(refuses(port));
    mq.restart().unwrap();
    assert_eq!(mq.port(), port);
    assert_eq!(mqtt_connack(port), [0x20, 0x02, 0x00, 0x00]);
    mq.restart().unwrap();
    assert_eq!(mqtt_connack(port), [0x20, 0x02, 0x00, 0x00]);
    assert!(mq.log_tail().contains("running"), "{}", mq.log_tail());
}
