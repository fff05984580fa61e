use std::os::unix::fs::symlink;

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
