//! JSON manifests (the network format, straight off the KV or a retained topic): any bytes
//! must decode or be refused, never panic; whatever decodes must re-encode to itself.
#![no_main]

use fleet_contract::Deployment;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(d) = Deployment::from_json_slice(data) else {
        return;
    };
    match Deployment::from_json_slice(&d.to_json()) {
        Ok(back) => assert_eq!(back, d, "re-encoding changed the manifest"),
        Err(e) => panic!("a decoded manifest does not decode after re-encoding: {e}"),
    }
});
