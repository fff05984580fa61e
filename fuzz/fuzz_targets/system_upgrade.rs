//! OS upgrade requests (`<device>.system` as JSON off the KV or a retained topic, TOML from
//! the local `system.toml`, and the `system-upgrade` verb's arguments): any bytes must decode
//! or be refused, never panic; whatever decodes must re-encode to itself.
#![no_main]

use fleet_contract::{argv_problem, SystemUpgrade};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // A JSON request that is accepted is one object (`["fleet/v1","id"]` is refused).
    if SystemUpgrade::from_json_slice(data).is_ok() {
        let v: serde_json::Value =
            serde_json::from_slice(data).expect("an accepted request is one JSON document");
        assert!(
            v.is_object(),
            "a request that is not an object was accepted"
        );
    }
    for decoded in [
        SystemUpgrade::from_json_slice(data),
        SystemUpgrade::from_toml_bytes(data),
    ] {
        let Ok(s) = decoded else { continue };
        assert!(s.command.as_deref().and_then(argv_problem).is_none());
        assert!(s.deadline_secs.is_none_or(|d| (60..=86_400).contains(&d)));
        assert!(s.max_boots.is_none_or(|n| (1..=10).contains(&n)));
        match SystemUpgrade::from_json_slice(&s.to_json()) {
            Ok(back) => assert_eq!(back, s, "re-encoding changed the request"),
            Err(e) => panic!("a decoded request does not decode after re-encoding: {e}"),
        }
    }
});
