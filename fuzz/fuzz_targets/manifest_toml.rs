//! TOML manifests (the local `deployments.d/` format): any bytes must decode or be refused,
//! never panic; whatever decodes must survive the trip through the network (JSON) format.
#![no_main]

use fleet_contract::Deployment;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(src) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(d) = Deployment::from_toml_str(src) else {
        return;
    };
    let json = d.to_json();
    match Deployment::from_json_slice(&json) {
        Ok(back) => assert_eq!(back, d, "JSON round trip changed the manifest"),
        Err(e) => panic!(
            "a valid TOML manifest was refused as JSON: {e}\nJSON: {}",
            String::from_utf8_lossy(&json)
        ),
    }
});
