//! The self-upgrade request as it arrives: the desired-state document `<device>.agent` (JSON)
//! and its release signature. Decoding and verifying must never panic; a document re-signed
//! with a fixed key must verify, and one with its version changed must not.
#![no_main]

use fleet_contract::release::{AgentRelease, ReleaseSignature};
use libfuzzer_sys::fuzz_target;
use ring::signature::{Ed25519KeyPair, KeyPair};

/// Fixed seed: the key only has to be valid, not secret.
const SEED: [u8; 32] = [9; 32];

fuzz_target!(|data: &[u8]| {
    let Ok(doc) = AgentRelease::from_json_slice(data) else {
        return;
    };
    let v: serde_json::Value =
        serde_json::from_slice(data).expect("an accepted release is one JSON document");
    assert!(
        v.is_object(),
        "a release document that is not an object was accepted"
    );
    for f in [
        &doc.version,
        &doc.artifact,
        &doc.sha256,
        &doc.key,
        &doc.signature,
    ] {
        assert!(
            !f.chars().any(char::is_control),
            "a control character was accepted"
        );
    }
    let _ = doc.command_args();
    let Ok(key) = Ed25519KeyPair::from_seed_unchecked(&SEED) else {
        return;
    };
    let sig = ReleaseSignature {
        version: doc.version.clone(),
        sha256: doc.sha256.clone(),
        key: doc.key.clone(),
        signature: doc.signature.clone(),
    };
    let _ = sig.verify(key.public_key().as_ref());
    // Valid version and digest: a fresh signature verifies, a changed version does not.
    if let Ok(good) = ReleaseSignature::sign(&doc.version, &doc.sha256, &doc.key, &key) {
        if good.verify(key.public_key().as_ref()).is_err() {
            panic!("a correct release signature did not verify");
        }
        let mut other = good.clone();
        other.version.push('x');
        if other.version.len() <= 64 && other.verify(key.public_key().as_ref()).is_ok() {
            panic!("a signature verified for another version");
        }
    }
});
