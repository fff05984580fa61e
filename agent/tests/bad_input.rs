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
#[path = "bad_input/observe.rs"]
mod observe;
#[path = "bad_input/scenario.rs"]
mod scenario;
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

/// Runs the decoder for `case.kind`; commands also have their signer's key read and are
/// verified with `operator_key`.
pub fn decode(case: &Case, operator_key: &[u8]) -> Verdict {
    let bytes = case.bytes.as_slice();
    let decoded = catch_unwind(AssertUnwindSafe(|| {
        // Judged on the rendered message only (a named field renders as "field `…`"), so the
        // suite keeps compiling whatever shape the error types take.
        let named = |e: &dyn std::fmt::Display| {
            let m = e.to_string();
            let ok = m.contains("field `") || says_whole(&m);
            (m, ok)
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
            Kind::AgentJson => AgentRelease::from_json_slice(bytes)
                .map(drop)
                .map_err(|e| named(&e)),
            Kind::Command => {
                // A bad signature is about the field `sig`.
                let cmd_named = |e: &dyn std::fmt::Display| {
                    let (m, ok) = named(e);
                    let ok = ok || m == "bad signature";
                    (m, ok)
                };
                SignedCommand::decode(bytes)
                    .map_err(|e| cmd_named(&e))
                    // As the agent does: the signer's key (to find the operator), then the
                    // signature and the envelope.
                    .and_then(|c| c.public_key().map(|_| c).map_err(|e| cmd_named(&e)))
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

/// The operator key the suite signs with, derived from the seed (so every document, the
/// signed ones included, is the same for a seed): (key pair, public key bytes, base64).
pub fn operator_key() -> (ring::signature::Ed25519KeyPair, Vec<u8>, String) {
    use rand::{Rng, SeedableRng};
    use ring::signature::KeyPair;
    let seed: [u8; 32] = rand::rngs::StdRng::seed_from_u64(gen::seed()).gen();
    let kp = ring::signature::Ed25519KeyPair::from_seed_unchecked(&seed).unwrap();
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

/// The planted secret: an env value in hostile and good manifests that must never show in a
/// message, log line, status or audit record (derived from the seed, like every document).
pub fn secret() -> String {
    use rand::{Rng, SeedableRng};
    let n: u64 = rand::rngs::StdRng::seed_from_u64(gen::seed() ^ 0x5ec2e7).gen();
    format!("FLEETSECRET-{n:016x}")
}

/// Part a: every decoder, every case. Failures are for the contract fix (`contract/`).
#[test]
fn every_decoder_refuses_hostile_documents_naming_the_field() {
    let secret = secret();
    let (kp, public, _) = operator_key();
    let sign = |p: &[u8]| sign_payload(&kp, p);
    // A fixed issue time: `verify` checks the signature and the envelope, not the clock.
    let cases = all_cases(&secret, 1_800_000_000, &sign, 60);
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

/// The three planes at once (each its own broker, agent and podman scope), so the suite's
/// time is the slowest plane's, not their sum; every plane's findings are reported.
#[test]
fn every_plane_keeps_everything_under_hostile_documents() {
    let runs: Vec<_> = [live::Plane::Nats, live::Plane::Mqtt, live::Plane::Local]
        .into_iter()
        .map(|plane| {
            (
                plane,
                std::thread::Builder::new()
                    .name(format!("{plane:?}"))
                    .spawn(move || scenario::live_plane(plane))
                    .unwrap(),
            )
        })
        .collect();
    let mut failed = Vec::new();
    for (plane, run) in runs {
        if let Err(p) = run.join() {
            let text = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_default();
            failed.push(format!("==== {plane:?} plane ====\n{text}"));
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n\n"));
}
