//! Issue #12's bad-input suite: hundreds of hostile documents (the table in
//! `bad_input/table.rs` plus seeded random mutations from `bad_input/gen.rs`) fed through
//! every decoder of outside input, and through the live agent on each control plane (NATS,
//! MQTT, local) with real podman running a couple of good deployments.
//!
//! Every failure names the case (`<kind>-<n>`, its issue class, what was done), the plane and
//! what was expected, and the fix it waits for: decoders → `contract/`; messages, caches,
//! planes, status, RSS → the agent (`agent/src`); containers kept or removed, podman argv →
//! `modules/containers`.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;
#[path = "bad_input/gen.rs"]
mod gen;
#[path = "bad_input/live.rs"]
mod live;
#[path = "bad_input/table.rs"]
mod table;

use std::panic::{catch_unwind, AssertUnwindSafe};

use fleet_contract::release::AgentRelease;
use fleet_contract::{Deployment, SignedCommand, SystemUpgrade};
use table::{Case, Expect, Kind};

/// Messages (status, replies, logs) stay under this even when they quote a 200 KB value.
pub const MAX_MESSAGE: usize = 4096;

/// What a decoder made of a document.
#[derive(Debug)]
pub enum Verdict {
    Accepted,
    Refused {
        message: String,
        /// The refusal names a field, or says it is about the whole document.
        names_field: bool,
    },
    Panicked(String),
}

fn says_whole(m: &str) -> bool {
    m.contains("whole document")
}

/// Runs the decoder for `case.kind`; commands are also verified with `operator_key`.
pub fn decode(case: &Case, operator_key: &[u8]) -> Verdict {
    let bytes = case.bytes.as_slice();
    let decoded = catch_unwind(AssertUnwindSafe(|| {
        let named = |e: &fleet_contract::DecodeError| {
            (
                e.to_string(),
                e.field.is_some() || says_whole(&e.to_string()),
            )
        };
        let r: Result<(), (String, bool)> = match case.kind {
            Kind::ManifestJson => Deployment::from_json_slice(bytes)
                .map(drop)
                .map_err(|e| named(&e)),
            Kind::ManifestToml => Deployment::from_toml_bytes(bytes)
                .map(drop)
                .map_err(|e| named(&e)),
            Kind::SystemJson => SystemUpgrade::from_json_slice(bytes)
                .map(drop)
                .map_err(|e| named(&e)),
            Kind::SystemToml => SystemUpgrade::from_toml_bytes(bytes)
                .map(drop)
                .map_err(|e| named(&e)),
            Kind::AgentJson => AgentRelease::from_json_slice(bytes).map(drop).map_err(|m| {
                let ok = m.contains("field `") || says_whole(&m);
                (m, ok)
            }),
            Kind::Command => {
                let cmd_named = |e: &fleet_contract::CommandDecodeError| {
                    use fleet_contract::CommandDecodeError as E;
                    let m = e.to_string();
                    let ok = match e {
                        E::BadField { .. } | E::BadEnvelope { .. } | E::BadSignature => true,
                        E::TooLarge(_) | E::Malformed(_) => m.contains("field `") || says_whole(&m),
                    };
                    (m, ok)
                };
                SignedCommand::decode(bytes)
                    .map_err(|e| cmd_named(&e))
                    .and_then(|c| c.verify(operator_key).map(drop).map_err(|e| cmd_named(&e)))
            }
        };
        r
    }));
    match decoded {
        Ok(Ok(())) => Verdict::Accepted,
        Ok(Err((message, names_field))) => Verdict::Refused {
            message,
            names_field,
        },
        Err(p) => Verdict::Panicked(
            p.downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_default(),
        ),
    }
}

/// A message for a failure line: at most 240 bytes.
pub fn cut(m: &str) -> String {
    if m.len() <= 240 {
        return m.to_owned();
    }
    let mut end = 240;
    while !m.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes)", &m[..end], m.len())
}

/// Every case of the suite: the table plus `per_base` seeded mutations of each base document.
pub fn all_cases(
    secret: &str,
    now: u64,
    sign: &dyn Fn(&[u8]) -> Vec<u8>,
    per_base: usize,
) -> Vec<Case> {
    let mut cases = table::manifest_json_cases(secret);
    cases.extend(table::manifest_toml_cases(secret));
    cases.extend(table::system_cases());
    cases.extend(table::agent_cases());
    cases.extend(table::command_cases(now, sign));
    let bases = [
        (
            Kind::ManifestJson,
            "mj",
            serde_json::to_vec(&table::manifest_value(
                "hostile",
                table::HOSTILE_IMAGE,
                secret,
            ))
            .unwrap(),
        ),
        (
            Kind::ManifestToml,
            "mt",
            table::manifest_toml("hostile", table::HOSTILE_IMAGE, secret).into_bytes(),
        ),
        (
            Kind::SystemJson,
            "sj",
            serde_json::to_vec(&table::system_value()).unwrap(),
        ),
        (
            Kind::AgentJson,
            "aj",
            serde_json::to_vec(&table::agent_value()).unwrap(),
        ),
        (
            Kind::Command,
            "cm",
            sign(&serde_json::to_vec(&table::envelope_value("bad-input-rnd", now)).unwrap()),
        ),
    ];
    cases.extend(gen::mutations(gen::seed(), &bases, per_base));
    cases
}

/// The operator key the suite signs with: (key pair, public key bytes, public key base64).
pub fn operator_key() -> (ring::signature::Ed25519KeyPair, Vec<u8>, String) {
    use base64::Engine;
    use ring::signature::KeyPair;
    let der = fleet_contract::generate_key_pkcs8().unwrap();
    let kp =
        fleet_contract::key_pair_from_b64(&base64::engine::general_purpose::STANDARD.encode(der))
            .unwrap();
    let public = kp.public_key().as_ref().to_vec();
    let b64 = fleet_contract::public_key_b64(&kp);
    (kp, public, b64)
}

/// The wire form of a command whose envelope bytes are exactly `payload`, signed by `kp`.
pub fn sign_payload(kp: &ring::signature::Ed25519KeyPair, payload: &[u8]) -> Vec<u8> {
    use base64::engine::general_purpose::STANDARD as B64;
    use base64::Engine;
    use ring::signature::KeyPair;
    let msg = [fleet_contract::SIGNING_DOMAIN, payload].concat();
    serde_json::to_vec(&serde_json::json!({
        "payload": B64.encode(payload),
        "key": B64.encode(kp.public_key().as_ref()),
        "sig": B64.encode(kp.sign(&msg).as_ref()),
    }))
    .unwrap()
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

pub fn secret() -> String {
    use rand::Rng;
    format!("FLEETSECRET-{:016x}", rand::thread_rng().gen::<u64>())
}

/// Part a: every decoder, every case. Failures are for the contract fix (`contract/`).
#[test]
fn every_decoder_refuses_hostile_documents_naming_the_field() {
    let secret = secret();
    let (kp, public, _) = operator_key();
    let sign = |p: &[u8]| sign_payload(&kp, p);
    let cases = all_cases(&secret, unix_now(), &sign, 60);
    eprintln!("{} documents, seed {:#x}", cases.len(), gen::seed());
    assert!(cases.len() >= 400, "hundreds of documents: {}", cases.len());
    let mut failures = Vec::new();
    let mut by_class = std::collections::BTreeMap::<String, usize>::new();
    let (mut accepted, mut refused) = (0, 0);
    for case in &cases {
        let broken = case_failures(case, &public, &secret);
        match decode(case, &public) {
            Verdict::Accepted => accepted += 1,
            _ => refused += 1,
        }
        if !broken.is_empty() {
            *by_class
                .entry(format!("{:?} class {}", case.kind, case.class))
                .or_default() += 1;
            failures.extend(broken);
        }
    }
    eprintln!("accepted {accepted}, refused {refused}");
    let summary: Vec<String> = by_class
        .iter()
        .map(|(k, n)| format!("  {n:>3} × {k}"))
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} documents broke the decoder rules of issue #12 (fix: contract/); \
         failing documents per decoder and class:\n{}\n{}",
        by_class.values().sum::<usize>(),
        cases.len(),
        summary.join("\n"),
        failures.join("\n")
    );
}

/// What is wrong with the decoder's verdict on `case`, one line each (empty: all well).
pub fn case_failures(case: &Case, public: &[u8], secret: &str) -> Vec<String> {
    let id = format!(
        "[{}] {:?} class {} — {}",
        case.id, case.kind, case.class, case.what
    );
    let mut failures = Vec::new();
    match decode(case, public) {
        Verdict::Panicked(p) => failures.push(format!("{id}: the decoder PANICKED: {}", cut(&p))),
        Verdict::Accepted => {
            if case.expect == Expect::Refused {
                failures.push(format!("{id}: expected a refusal, the decoder accepted it"));
            }
        }
        Verdict::Refused {
            message,
            names_field,
        } => {
            if case.expect == Expect::Accepted {
                failures.push(format!(
                    "{id}: a control document was refused: {}",
                    cut(&message)
                ));
            }
            if !names_field {
                failures.push(format!(
                    "{id}: the refusal names no field and does not say \"whole document\": {}",
                    cut(&message)
                ));
            }
            if message.len() >= MAX_MESSAGE {
                failures.push(format!(
                    "{id}: the refusal is {} bytes (limit {MAX_MESSAGE}): {}",
                    message.len(),
                    cut(&message)
                ));
            }
            if message.contains(secret) {
                failures.push(format!(
                    "{id}: the refusal quotes the env value (planted secret): {}",
                    cut(&message)
                ));
            }
        }
    }
    failures
}
