//! Subject, topic and key names: the one place they are spelled (ARCHITECTURE §3).
//! KV keys never contain the bucket name.

/// KV bucket holding desired state.
pub const DESIRED_BUCKET: &str = "fleet-desired";
/// KV bucket holding status.
pub const STATUS_BUCKET: &str = "fleet-status";
/// Object store holding release artifacts.
pub const ARTIFACTS_BUCKET: &str = "fleet-artifacts";

/// KV key prefix of everything about one device: `<device>.`.
pub fn kv_device_prefix(device: &str) -> String {
    format!("{device}.")
}
/// KV watch filter for one device's desired state: `<device>.>`.
pub fn kv_device_filter(device: &str) -> String {
    format!("{device}.>")
}
/// KV key of a deployment (desired and status): `<device>.deploy.<name>`.
pub fn kv_deploy_key(device: &str, name: &str) -> String {
    format!("{device}.deploy.{name}")
}
/// KV key of the device's OS upgrade request (desired state): `<device>.system`.
pub fn kv_system_key(device: &str) -> String {
    format!("{device}.system")
}
/// MQTT retained desired-state topic of the device's OS upgrade request.
pub fn mqtt_desired_system(device: &str) -> String {
    format!("fleet/{device}/desired/system")
}
/// KV key of the agent release a device should run (self-upgrade): `<device>.agent`.
pub fn kv_agent_key(device: &str) -> String {
    format!("{device}.agent")
}
/// KV status key of the device's info (heartbeat): `<device>.info`.
pub fn kv_info_key(device: &str) -> String {
    format!("{device}.info")
}
/// NATS heartbeat subject.
pub fn nats_hb_subject(device: &str) -> String {
    format!("fleet.{device}.hb")
}
/// NATS heartbeat wildcard for all devices.
pub const NATS_HB_ALL: &str = "fleet.*.hb";
/// NATS command subject (request/reply).
pub fn nats_cmd_subject(device: &str) -> String {
    format!("fleet.{device}.cmd")
}
/// NATS audit subject.
pub fn nats_audit_subject(device: &str) -> String {
    format!("fleet.audit.{device}")
}

/// MQTT topic prefix of a device.
pub fn mqtt_prefix(device: &str) -> String {
    format!("fleet/{device}")
}
/// MQTT retained desired-state topic of a deployment.
pub fn mqtt_desired_deploy(device: &str, name: &str) -> String {
    format!("fleet/{device}/desired/deploy/{name}")
}
/// MQTT retained desired-state topic of the agent release (self-upgrade).
pub fn mqtt_desired_agent(device: &str) -> String {
    format!("fleet/{device}/desired/agent")
}
/// MQTT filter for a device's desired state.
pub fn mqtt_desired_filter(device: &str) -> String {
    format!("fleet/{device}/desired/#")
}
/// MQTT retained status topic of a deployment.
pub fn mqtt_status_deploy(device: &str, name: &str) -> String {
    format!("fleet/{device}/status/deploy/{name}")
}
/// MQTT retained status topic of the device info (heartbeat document).
pub fn mqtt_status_info(device: &str) -> String {
    format!("fleet/{device}/status/info")
}
/// MQTT heartbeat topic.
pub fn mqtt_hb(device: &str) -> String {
    format!("fleet/{device}/hb")
}
/// MQTT online flag (retained; last will = `false`).
pub fn mqtt_online(device: &str) -> String {
    format!("fleet/{device}/online")
}
/// MQTT command topic.
pub fn mqtt_cmd(device: &str) -> String {
    format!("fleet/{device}/cmd")
}
/// MQTT audit topic.
pub fn mqtt_audit(device: &str) -> String {
    format!("fleet/{device}/audit")
}

/// The deployment name in a desired-state KV key `<device>.deploy.<name>`, if it is one.
pub fn deploy_name_from_kv_key<'a>(device: &str, key: &'a str) -> Option<&'a str> {
    key.strip_prefix(device)?.strip_prefix(".deploy.")
}

/// The deployment name in a desired-state MQTT topic, if it is one.
pub fn deploy_name_from_mqtt_topic<'a>(device: &str, topic: &'a str) -> Option<&'a str> {
    topic
        .strip_prefix("fleet/")?
        .strip_prefix(device)?
        .strip_prefix("/desired/deploy/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_never_contain_the_bucket() {
        let k = kv_deploy_key("pi-1", "web");
        assert_eq!(k, "pi-1.deploy.web");
        assert!(!k.contains(DESIRED_BUCKET));
        assert_eq!(deploy_name_from_kv_key("pi-1", &k), Some("web"));
        assert_eq!(deploy_name_from_kv_key("pi-2", &k), None);
        assert_eq!(deploy_name_from_kv_key("pi", "pi-1.deploy.web"), None);
        let t = mqtt_desired_deploy("pi-1", "web");
        assert_eq!(deploy_name_from_mqtt_topic("pi-1", &t), Some("web"));
        assert_eq!(deploy_name_from_mqtt_topic("pi", &t), None);
    }
}
