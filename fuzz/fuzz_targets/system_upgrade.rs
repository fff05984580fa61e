//! OS upgrade requests (`<device>.system` as JSON off the KV or a retained topic, TOML from
//! the local `system.toml`, and the `system-upgrade` verb's arguments): any bytes must decode
//! or be refused, never panic; whatever decodes must re-encode to itself.
#![no_main]

use fleet_contract::SystemUpgrade;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for decoded in [
        SystemUpgrade::from_json_slice(data),
        SystemUpgrade::from_toml_bytes(data),
    ] {
        let Ok(s) = decoded else { continue };
        match SystemUpgrade::from_json_slice(&s.to_json()) {
            Ok(back) => assert_eq!(back, s, "re-encoding changed the request"),
            Err(e) => panic!("a decoded request does not decode after re-encoding: {e}"),
        }
    }
});
