//! Signed commands as they arrive on the command subject/topic: decode, take the key, verify.
//! A fuzzer never forges a signature, so each decoded payload is also re-signed with a fixed
//! key and verified again: that way the envelope decoder and its validation (which only run
//! after the signature checks out) see fuzzed input too.
#![no_main]

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use fleet_contract::{SignedCommand, MAX_SAFE_INTEGER, SIGNING_DOMAIN};
use libfuzzer_sys::fuzz_target;
use ring::signature::{Ed25519KeyPair, KeyPair};

/// Fixed seed: the key only has to be valid, not secret.
const SEED: [u8; 32] = [7; 32];

fuzz_target!(|data: &[u8]| {
    let Ok(cmd) = SignedCommand::decode(data) else {
        return;
    };
    let v: serde_json::Value =
        serde_json::from_slice(data).expect("an accepted command is one JSON document");
    assert!(
        v.is_object(),
        "a command that is not an object was accepted"
    );
    let _ = cmd.encode();
    if let Ok(pk) = cmd.public_key() {
        let _ = cmd.verify(&pk);
    }
    let Ok(payload) = B64.decode(&cmd.payload) else {
        return;
    };
    let Ok(key) = Ed25519KeyPair::from_seed_unchecked(&SEED) else {
        return;
    };
    let mut msg = SIGNING_DOMAIN.to_vec();
    msg.extend_from_slice(&payload);
    let resigned = SignedCommand {
        payload: cmd.payload.clone(),
        key: B64.encode(key.public_key().as_ref()),
        sig: B64.encode(key.sign(&msg).as_ref()),
    };
    let pk = resigned
        .public_key()
        .unwrap_or_else(|e| panic!("a 32-byte key was refused: {e}"));
    match resigned.verify(&pk) {
        Err(fleet_contract::CommandDecodeError::BadSignature) => {
            panic!("a correct signature did not verify")
        }
        Err(_) => {}
        Ok(env) => {
            assert!(env.issued_at <= MAX_SAFE_INTEGER && env.expires_at <= MAX_SAFE_INTEGER);
            let v: serde_json::Value = serde_json::from_slice(&payload)
                .expect("an accepted envelope is one JSON document");
            assert!(
                v.is_object(),
                "an envelope that is not an object was accepted"
            );
        }
    }
});
