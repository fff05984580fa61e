use std::os::unix::fs::symlink;

use fleet_contract::release::ReleaseSignature;
use fleet_module_api::DesiredAgent;

use super::desired::forward_only;
use super::guard::{decide, new_probation, reanchor, Decision, Now};
use super::*;

fn now(unix: u64, boot: &str, uptime: u64) -> Now {
    Now {
        unix,
        boot_id: boot.into(),
        uptime,
    }
}

#[test]
fn guard_decisions() {
    let n = now(1000, "b1", 50);
    let mut p = new_probation("1", "2", 600, 3, &n);
    assert_eq!(
        decide(None, Some("1"), Some("1"), &n),
        Decision::NoProbation
    );
    assert_eq!(
        decide(Some(&p), Some("2"), Some("1"), &n),
        Decision::Attempt(1)
    );
    assert_eq!(
        decide(Some(&p), Some("2"), Some("2"), &n),
        Decision::AlreadyConfirmed
    );
    assert!(matches!(
        decide(Some(&p), Some("1"), Some("1"), &n),
        Decision::Revert(r) if r.contains("cutover interrupted")
    ));
    p.attempts = 3;
    assert!(matches!(
        decide(Some(&p), Some("2"), Some("1"), &n),
        Decision::Revert(r) if r.contains("crash loop")
    ));
    p.attempts = 1;
    // Same boot: only the monotonic clock counts, a wall-clock jump does not.
    let jumped = now(1_000_000, "b1", 100);
    assert_eq!(
        decide(Some(&p), Some("2"), Some("1"), &jumped),
        Decision::Attempt(2)
    );
    let late = now(1000, "b1", 650);
    assert!(matches!(
        decide(Some(&p), Some("2"), Some("1"), &late),
        Decision::Revert(r) if r.contains("deadline")
    ));
}

#[test]
fn reanchor_bounds_a_clock_jump_to_one_deadline() {
    let mut p = new_probation("1", "2", 600, 3, &now(40_000_000, "b1", 50));
    // New boot, wall clock went back a year: at most one full deadline remains.
    let n = now(40_000_000 - 31_536_000, "b2", 5);
    assert!(reanchor(&mut p, &n));
    assert_eq!(p.deadline_uptime_secs, 605);
    // New boot, wall clock past the deadline: nothing remains.
    let mut q = new_probation("1", "2", 600, 3, &now(1000, "b1", 50));
    let n = now(5000, "b3", 5);
    reanchor(&mut q, &n);
    assert!(guard::deadline_passed(&q, &n));
}

fn layout_in(dir: &std::path::Path) -> Layout {
    let cfg = Config {
        install_root: dir.join("lib"),
        current_link: dir.join("bin/fleet-agent"),
        ..Config::default()
    };
    std::fs::create_dir_all(dir.join("bin")).unwrap();
    Layout::new(&cfg, &dir.join("state"))
}

fn install_fake(l: &Layout, v: &str) {
    std::fs::create_dir_all(l.version_dir(v)).unwrap();
    std::fs::write(l.binary(v), v).unwrap();
}

#[test]
fn adopt_install_revert_confirm_prune() {
    let tmp = tempfile::tempdir().unwrap();
    let l = layout_in(tmp.path());
    assert!(l.check().is_err());
    std::fs::write(&l.current, "v1 binary").unwrap();
    assert!(l.adopt("1", &l.current.clone()).unwrap());
    assert_eq!(l.check().unwrap(), ("1".into(), "1".into()));
    assert_eq!(std::fs::read_to_string(&l.current).unwrap(), "v1 binary");
    assert!(!l.adopt("1", &l.current.clone()).unwrap());

    // Stage v2 and install it.
    std::fs::create_dir_all(l.staging_dir("2")).unwrap();
    std::fs::write(l.staging_dir("2").join("fleet-agent"), "v2").unwrap();
    l.install("2").unwrap();
    assert!(!l.staging_dir("2").exists());
    let p = guard::new_probation("1", "2", 600, 3, &now(0, "b", 0));
    l.write_probation(&p).unwrap();
    layout::swap_link(&l.current, &l.binary("2")).unwrap();
    assert_eq!(l.current_version().as_deref(), Some("2"));

    // The guard counts, then reverts when attempts run out.
    let n = now(0, "b", 1);
    for i in 1..=3 {
        assert_eq!(
            guard::run(&l, &n).unwrap(),
            guard::GuardOutcome::Attempt {
                to: "2".into(),
                n: i,
                max: 3
            }
        );
    }
    assert!(matches!(
        guard::run(&l, &n).unwrap(),
        guard::GuardOutcome::Reverted { .. }
    ));
    assert_eq!(l.current_version().as_deref(), Some("1"));
    assert!(l.read_probation().unwrap().is_none());
    assert!(
        matches!(l.read_outcome().unwrap(), Some(Outcome::Reverted { ref to, .. }) if to == "2")
    );
    assert_eq!(
        guard::run(&l, &n).unwrap(),
        guard::GuardOutcome::NoProbation
    );

    // Confirm moves `confirmed`; prune keeps confirmed + current + the newest.
    l.write_probation(&p).unwrap();
    layout::swap_link(&l.current, &l.binary("2")).unwrap();
    l.confirm(&p, 5).unwrap();
    assert_eq!(l.confirmed_version().as_deref(), Some("2"));
    for v in ["3", "4", "5"] {
        install_fake(&l, v);
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let removed = l.prune(3);
    assert_eq!(removed, vec!["1".to_owned()]);
    assert!(l.binary("2").exists());
}

#[test]
fn foreign_links_are_not_versions() {
    let tmp = tempfile::tempdir().unwrap();
    let l = layout_in(tmp.path());
    symlink("/bin/true", &l.current).unwrap();
    assert_eq!(l.current_version(), None);
}

fn module_with_key() -> (SelfUpgrade, ring::signature::Ed25519KeyPair) {
    use base64::Engine;
    let der = fleet_contract::generate_key_pkcs8().unwrap();
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let kp = fleet_contract::key_pair_from_b64(&b64).unwrap();
    let cfg = Config {
        release_keys: vec![config::ReleaseKey {
            name: "rel".into(),
            public_key: fleet_contract::public_key_b64(&kp),
        }],
        ..Config::default()
    };
    cfg.validate().unwrap();
    (SelfUpgrade::new(cfg), kp)
}

#[test]
fn requests_are_checked_naming_the_field() {
    let (m, kp) = module_with_key();
    let digest = fleet_contract::release::sha256_hex(b"x");
    let sig = ReleaseSignature::sign("2.0.0", &digest, "rel", &kp).unwrap();
    let good = serde_json::json!({
        "version": "2.0.0", "artifact": "file:///tmp/x", "sha256": digest,
        "key": "rel", "signature": sig.signature,
    });
    m.check_request(&good).unwrap();
    let with = |k: &str, v: serde_json::Value| {
        let mut j = good.clone();
        j[k] = v;
        m.check_request(&j).unwrap_err()
    };
    assert!(
        matches!(with("version", "../x".into()), CommandError::BadRequest { field, .. } if field == "version")
    );
    assert!(
        matches!(with("sha256", "zz".into()), CommandError::BadRequest { field, .. } if field == "sha256")
    );
    assert!(
        matches!(with("artifact", "ftp://x".into()), CommandError::BadRequest { field, .. } if field == "artifact")
    );
    assert!(
        matches!(with("key", "other".into()), CommandError::Denied(m) if m.contains("unknown release key"))
    );
    assert!(
        matches!(with("version", "2.0.1".into()), CommandError::Denied(m) if m.contains("does not verify"))
    );
    assert!(
        matches!(with("extra", 1.into()), CommandError::BadRequest { field, .. } if field == "extra")
    );
    assert!(
        matches!(m.check_request(&serde_json::json!(null)), Err(CommandError::BadRequest { field, .. }) if field == "version")
    );
}

#[test]
fn config_errors_name_the_key() {
    let v: toml::Value = toml::from_str("max_attempts = 0").unwrap();
    let e = config_from_section(Some(&v)).unwrap_err();
    assert!(e.message.contains("max_attempts"), "{e}");
    let v: toml::Value = toml::from_str("install_rot = \"/x\"").unwrap();
    let e = config_from_section(Some(&v)).unwrap_err();
    assert!(e.message.contains("install_rot"), "{e}");
    let v: toml::Value =
        toml::from_str("[[release_keys]]\nname = \"r\"\npublic_key = \"AAAA\"").unwrap();
    let e = config_from_section(Some(&v)).unwrap_err();
    assert!(e.message.contains("release_keys[0].public_key"), "{e}");
}

#[test]
fn example_config_section_matches_defaults() {
    let example = include_str!("../../../agent/config.example.toml");
    let start = example
        .find("# [modules.self-upgrade]")
        .expect("config.example.toml documents [modules.self-upgrade]");
    let section: String = example[start..]
        .lines()
        .take_while(|l| l.starts_with('#'))
        .map(|l| l.strip_prefix("# ").unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n");
    let doc: toml::Value = toml::from_str(&section).expect("the documented section parses");
    let cfg: Config = doc["modules"]["self-upgrade"]
        .clone()
        .try_into()
        .expect("the documented keys are the module's keys");
    let d = Config::default();
    assert_eq!(cfg.install_root, d.install_root);
    assert_eq!(cfg.current_link, d.current_link);
    assert_eq!(cfg.config_path, d.config_path);
    assert_eq!(cfg.probation_deadline_secs, d.probation_deadline_secs);
    assert_eq!(cfg.max_attempts, d.max_attempts);
    assert_eq!(cfg.max_artifact_bytes, d.max_artifact_bytes);
    assert_eq!(cfg.self_test_timeout_secs, d.self_test_timeout_secs);
    assert_eq!(cfg.keep_versions, d.keep_versions);
    assert_eq!(cfg.release_keys.len(), 1);
}

#[tokio::test]
async fn file_download_resumes_and_respects_the_cap() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("release");
    let body: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(&src, &body).unwrap();
    let part = tmp.path().join("fleet-agent.part");
    // A crash left the first 70 000 bytes.
    std::fs::write(&part, &body[..70_000]).unwrap();
    let loc = fetch::Location::parse(&format!("file://{}", src.display())).unwrap();
    let n = fetch::fetch(&loc, &part, 1 << 20, None).await.unwrap();
    assert_eq!(n, body.len() as u64);
    assert_eq!(std::fs::read(&part).unwrap(), body);
    assert_eq!(
        fetch::sha256_file(&part).unwrap(),
        fleet_contract::release::sha256_hex(&body)
    );
    std::fs::remove_file(&part).unwrap();
    let e = fetch::fetch(&loc, &part, 1000, None).await.unwrap_err();
    assert!(e.to_string().contains("max_artifact_bytes"), "{e}");
    assert!(matches!(
        fetch::Location::parse("https://example.invalid/x"),
        Err(Error::BadRequest {
            field: "artifact",
            ..
        })
    ));
}

#[test]
fn desired_state_moves_the_agent_forward_only() {
    assert_eq!(forward_only("0.1.0", "2.0.0-test"), Ok(()));
    assert_eq!(forward_only("1.2.3", "1.2.4"), Ok(()));
    assert_eq!(forward_only("2.0.0-rc.1", "2.0.0"), Ok(()));
    for (running, target, why) in [
        ("2.0.0-test", "0.1.0", "is a downgrade"),
        ("2.0.0", "2.0.0-rc.1", "is a downgrade"),
        ("0.1.0", "2", "not a semantic version"),
        ("0.1.0", "latest", "not a semantic version"),
    ] {
        let e = forward_only(running, target).unwrap_err();
        assert!(
            e.contains(why) && e.contains("signed"),
            "{running} -> {target}: {e}"
        );
    }
}

struct NoStore;

impl fleet_module_api::ModuleStore for NoStore {
    fn get(&self, _: &str) -> Result<Option<Vec<u8>>, fleet_module_api::StoreError> {
        Ok(None)
    }
    fn put(&self, _: &str, _: &[u8]) -> Result<(), fleet_module_api::StoreError> {
        Ok(())
    }
    fn delete(&self, _: &str) -> Result<(), fleet_module_api::StoreError> {
        Ok(())
    }
    fn keys(&self, _: &str) -> Result<Vec<String>, fleet_module_api::StoreError> {
        Ok(Vec::new())
    }
}

/// The last self-upgrade detail published.
#[derive(Default)]
struct Details(Mutex<Option<serde_json::Value>>);

impl fleet_module_api::StatusSink for Details {
    fn deployment(&self, _: fleet_contract::DeploymentStatus) {}
    fn deployment_removed(&self, _: &str) {}
    fn detail(&self, _: &'static str, detail: serde_json::Value) {
        *self.0.lock().unwrap() = Some(detail);
    }
}

fn context_in(state_dir: &std::path::Path, details: Arc<Details>) -> Context {
    let desired = tokio::sync::watch::channel(Arc::new(fleet_module_api::DesiredState::default()));
    Context {
        module: NAME,
        store: Arc::new(NoStore),
        desired: desired.1,
        status: details,
        clock: Arc::new(fleet_module_api::SystemClock),
        paths: fleet_module_api::Paths {
            config_dir: state_dir.join("etc"),
            state_dir: state_dir.to_owned(),
            run_dir: state_dir.join("run"),
        },
        shutdown: fleet_module_api::CancellationToken::new(),
        ext: fleet_module_api::ExtensionsBuilder::new().build(),
        checkin: tokio::sync::watch::channel(Default::default()).1,
        progress: Default::default(),
    }
}

/// Issue #12 class 9: a desired document refused for an unknown release key (or a bad
/// signature, a downgrade, an invalid document) is a refusal shown in status, not a revert
/// recorded against the version; the corrected document is then acted on.
#[test]
fn a_refused_desired_release_is_reported_not_recorded_and_the_corrected_one_proceeds() {
    let tmp = tempfile::tempdir().unwrap();
    let l = layout_in(tmp.path());
    std::fs::write(&l.current, "v1 binary").unwrap();
    assert!(l.adopt("0.1.0", &l.current.clone()).unwrap());
    let (m, kp) = module_with_key();
    let details = Arc::new(Details::default());
    let ctx = context_in(&tmp.path().join("state"), details.clone());
    let digest = fleet_contract::release::sha256_hex(b"v99");
    let signed = |key: &str| {
        let sig = ReleaseSignature::sign("99.0.9", &digest, key, &kp).unwrap();
        fleet_contract::release::AgentRelease {
            api_version: fleet_contract::API_VERSION.into(),
            version: "99.0.9".into(),
            artifact: "file:///tmp/fleet-agent-99".into(),
            sha256: digest.clone(),
            key: key.into(),
            signature: sig.signature,
        }
    };
    let refused = |what: &str, agent: DesiredAgent, why: &str| {
        let req = m.desired_request(&ctx, &l, "0.1.0", Some(&agent));
        assert!(req.is_none(), "{what}: acted on");
        assert_eq!(
            l.read_outcome().unwrap(),
            None,
            "{what}: a refusal is no outcome of an upgrade"
        );
        let d = details.0.lock().unwrap().clone().unwrap();
        assert_ne!(d["phase"], "Reverted", "{what}: {d:#}");
        assert!(
            d["refused"].as_str().is_some_and(|r| r.contains(why)),
            "{what}: status says why ({why}): {d:#}"
        );
    };
    refused(
        "unknown release key",
        DesiredAgent::Valid(signed("stolen")),
        "unknown release key",
    );
    let mut bad_sig = signed("rel");
    bad_sig.sha256 = fleet_contract::release::sha256_hex(b"other");
    refused(
        "bad signature",
        DesiredAgent::Valid(bad_sig),
        "does not verify",
    );
    let mut older = signed("rel");
    older.version = "0.0.9".into();
    refused("downgrade", DesiredAgent::Valid(older), "is a downgrade");
    refused(
        "invalid document",
        DesiredAgent::Invalid {
            source_name: "test-dev.agent".into(),
            error: "field `sha256`: missing".into(),
        },
        "field `sha256`",
    );
    // A 200 KB key is quoted as a prefix and its length.
    refused(
        "200 KB key",
        DesiredAgent::Valid(signed(&"k".repeat(200_000))),
        "(200000 bytes)",
    );
    let d = details.0.lock().unwrap().clone().unwrap();
    assert!(
        d.to_string().len() < 4096,
        "status detail is capped: {} bytes",
        d.to_string().len()
    );
    // The same refusal again: still refused, still not recorded.
    refused(
        "unknown release key, again",
        DesiredAgent::Valid(signed("stolen")),
        "unknown release key",
    );

    // The corrected document (the right key) is acted on.
    let req = m.desired_request(&ctx, &l, "0.1.0", Some(&DesiredAgent::Valid(signed("rel"))));
    assert_eq!(
        req.map(|r| (r.version, r.key)),
        Some(("99.0.9".to_owned(), "rel".to_owned())),
        "the corrected document proceeds"
    );
    let d = details.0.lock().unwrap().clone().unwrap();
    assert!(
        d.get("refused").is_none(),
        "the refusal left the status: {d:#}"
    );
}

/// An agent before the fix recorded the refusal as `Reverted`; that record does not block
/// the corrected document either.
#[test]
fn a_refusal_recorded_as_a_revert_by_an_earlier_agent_does_not_block_the_version() {
    let tmp = tempfile::tempdir().unwrap();
    let l = layout_in(tmp.path());
    std::fs::write(&l.current, "v1 binary").unwrap();
    assert!(l.adopt("0.1.0", &l.current.clone()).unwrap());
    l.revert(
        "0.1.0",
        "99.0.9",
        "desired agent release refused: unknown release key \"stolen\"",
        1,
    )
    .unwrap();
    let (m, kp) = module_with_key();
    let ctx = context_in(&tmp.path().join("state"), Arc::new(Details::default()));
    let digest = fleet_contract::release::sha256_hex(b"v99");
    let sig = ReleaseSignature::sign("99.0.9", &digest, "rel", &kp).unwrap();
    let rel = fleet_contract::release::AgentRelease {
        api_version: fleet_contract::API_VERSION.into(),
        version: "99.0.9".into(),
        artifact: "file:///tmp/fleet-agent-99".into(),
        sha256: digest,
        key: "rel".into(),
        signature: sig.signature,
    };
    assert!(m
        .desired_request(&ctx, &l, "0.1.0", Some(&DesiredAgent::Valid(rel.clone())))
        .is_some());
    // A real revert of that version still blocks it (no revert loops).
    l.revert("0.1.0", "99.0.9", "crash loop: 3 starts", 2)
        .unwrap();
    assert!(m
        .desired_request(&ctx, &l, "0.1.0", Some(&DesiredAgent::Valid(rel)))
        .is_none());
}

/// At start, a refusal an earlier agent recorded as `Reverted` is dropped: status shows no
/// revert and the record is gone; a real revert record stays.
#[tokio::test]
async fn run_drops_a_refusal_recorded_as_a_revert() {
    for (reason, kept) in [
        (
            "desired agent release refused: denied: unknown release key \"stolen\"",
            false,
        ),
        ("crash loop: 3 starts", true),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let l = layout_in(tmp.path());
        std::fs::write(&l.current, "v1 binary").unwrap();
        assert!(l.adopt("0.1.0", &l.current.clone()).unwrap());
        l.revert("0.1.0", "99.0.9", reason, 1).unwrap();
        let cfg = Config {
            install_root: tmp.path().join("lib"),
            current_link: tmp.path().join("bin/fleet-agent"),
            ..Config::default()
        };
        let m = Arc::new(SelfUpgrade::new(cfg));
        let details = Arc::new(Details::default());
        let ctx = context_in(&tmp.path().join("state"), details.clone());
        let stop = ctx.shutdown.clone();
        let task = tokio::spawn(m.clone().run(ctx));
        let phase = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                if let Some(d) = details.0.lock().unwrap().clone() {
                    return d["phase"].clone();
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .unwrap();
        stop.cancel();
        task.await.unwrap().unwrap();
        let outcome = l.read_outcome().unwrap();
        if kept {
            assert_eq!(phase, "Reverted", "{reason}");
            assert!(outcome.is_some(), "{reason}: a real revert is kept");
        } else {
            assert_eq!(phase, "Running", "{reason}: a refusal is no revert");
            assert_eq!(outcome, None, "{reason}: the record is dropped");
        }
    }
}
