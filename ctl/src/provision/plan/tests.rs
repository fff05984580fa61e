use std::cmp::Ordering;

use super::*;

fn good_probe() -> Probe {
    Probe::parse(
        "uid=0\narch=arm64\nos_id=debian\nos_version=12\nglibc=glibc 2.36\n\
         installed=installed 0.1.0\nhostname=pi-7\nconfig_sha=abc\nsystemd=yes\n\
         enabled=enabled\nactive=active\n",
    )
}

fn deb(v: &str) -> Deb {
    Deb {
        path: PathBuf::from(format!("/p/fleet-agent_{v}_arm64.deb")),
        version: v.into(),
    }
}

#[test]
fn targets_parse_and_bad_ones_say_why() {
    let t = Target::parse("pi@10.0.0.7:2222").unwrap();
    assert_eq!(
        (t.user.as_str(), t.host.as_str(), t.port),
        ("pi", "10.0.0.7", Some(2222))
    );
    assert_eq!(t.to_string(), "pi@10.0.0.7:2222");
    assert_eq!(Target::parse("root@pi-7.lan").unwrap().port, None);
    let v6 = Target::parse("root@[::1]:22").unwrap();
    assert_eq!((v6.host.as_str(), v6.port), ("::1", Some(22)));
    assert_eq!(v6.to_string(), "root@[::1]:22");
    for (bad, why) in [
        ("10.0.0.7", "user@host"),
        ("@h", "user"),
        ("pi@", "host"),
        ("pi@-oProxyCommand=x", "host"),
        ("pi@h:0", "port"),
        ("pi@h:99999", "port"),
        ("pi@h:x", "port"),
    ] {
        let e = Target::parse(bad).unwrap_err().to_string();
        assert!(e.contains(why), "{bad}: {e}");
    }
}

#[test]
fn hosts_file_comments_overrides_and_errors_naming_the_line() {
    let text = "# the lab\n\npi@10.0.0.7 device_id=pi-7  # first\nroot@10.0.0.8:2222\n";
    let h = parse_hosts("fleet.txt", text).unwrap();
    assert_eq!(h.len(), 2);
    assert_eq!(h[0].sets, vec!["device_id=pi-7".to_owned()]);
    assert_eq!(h[1].target.port, Some(2222));

    let e = parse_hosts("fleet.txt", "pi@a\nnot-a-target\n").unwrap_err();
    assert!(format!("{e:#}").starts_with("fleet.txt:2: "), "{e:#}");
    let e = parse_hosts("fleet.txt", "pi@a oops\n").unwrap_err();
    assert!(
        format!("{e:#}").contains("fleet.txt:1: ") && format!("{e:#}").contains("key=value"),
        "{e:#}"
    );
    let e = parse_hosts("fleet.txt", "pi@a\npi@a\n").unwrap_err();
    assert!(
        format!("{e:#}").contains("fleet.txt:2: pi@a is already listed"),
        "{e:#}"
    );
    let e = parse_hosts("fleet.txt", "# nothing\n").unwrap_err();
    assert!(e.to_string().contains("no hosts"), "{e}");
}

#[test]
fn sets_merge_over_the_base_with_dotted_keys_and_toml_values() {
    let mut doc: toml::Table = toml::from_str(
        "device_id = \"x\"\n[control]\nplane = \"local\"\n[log]\nlevel = \"debug\"\n",
    )
    .unwrap();
    apply_sets(
        &mut doc,
        &[
            "device_id=pi-7".into(),
            "control.plane=nats".into(),
            r#"control.nats.servers=["nats://10.0.0.1:4222"]"#.into(),
            "heartbeat_interval_secs=5".into(),
            "control.plane=mqtt".into(),
        ],
    )
    .unwrap();
    assert_eq!(doc["device_id"].as_str(), Some("pi-7"));
    assert_eq!(
        doc["control"]["plane"].as_str(),
        Some("mqtt"),
        "later set wins"
    );
    assert_eq!(
        doc["control"]["nats"]["servers"][0].as_str(),
        Some("nats://10.0.0.1:4222")
    );
    assert_eq!(doc["heartbeat_interval_secs"].as_integer(), Some(5));
    assert_eq!(
        doc["log"]["level"].as_str(),
        Some("debug"),
        "untouched base key kept"
    );

    let e = apply_sets(&mut doc, &["device_id.x=1".into()]).unwrap_err();
    assert!(
        e.to_string().contains("device_id is a value, not a table"),
        "{e}"
    );
    let e = apply_sets(&mut doc, &["control..plane=x".into()]).unwrap_err();
    assert!(e.to_string().contains("dotted TOML key"), "{e}");
    let e = apply_sets(&mut doc, &["novalue".into()]).unwrap_err();
    assert!(e.to_string().contains("key=value"), "{e}");
}

#[test]
fn config_defaults_device_id_to_the_host_name_and_places_credentials_and_keys() {
    let key = TrustedKey {
        name: "ops".into(),
        public_key: "AAAA".into(),
        role: "admin".into(),
    };
    let inputs = ConfigInputs {
        base: None,
        sets: vec![
            "control.plane=nats".into(),
            r#"control.nats.servers=["nats://10.0.0.1:4222"]"#.into(),
        ],
        credentials: Some("device.creds".into()),
        trusted: vec![key.clone(), key],
    };
    let Rendered { text, plane, .. } = render_config(&inputs, "pi-7").unwrap();
    let doc: toml::Table = toml::from_str(&text).unwrap();
    assert_eq!(doc["device_id"].as_str(), Some("pi-7"));
    assert_eq!(
        doc["control"]["nats"]["creds_file"].as_str(),
        Some("/etc/fleet-agent/creds/device.creds")
    );
    assert_eq!(
        doc["trust"]["operators"].as_array().map(Vec::len),
        Some(1),
        "deduplicated"
    );
    assert_eq!(
        plane,
        Plane::Nats {
            url: "nats://10.0.0.1:4222".into()
        }
    );
    // Same inputs, same bytes: what the idempotence check compares.
    assert_eq!(render_config(&inputs, "pi-7").unwrap().text, text);

    let local = ConfigInputs::default();
    let Rendered { text, plane, .. } = render_config(&local, "pi-8").unwrap();
    assert_eq!(plane, Plane::Local);
    assert_eq!(text.trim(), "device_id = \"pi-8\"");

    let mut bad = local.clone();
    bad.sets = vec!["control.plane=nats".into()];
    let e = render_config(&bad, "h").unwrap_err();
    assert!(e.to_string().contains("control.nats.servers"), "{e}");
    bad.sets = vec!["control.plane=zmq".into()];
    assert!(render_config(&bad, "h")
        .unwrap_err()
        .to_string()
        .contains("control.plane"));
    let creds_local = ConfigInputs {
        credentials: Some("c".into()),
        ..ConfigInputs::default()
    };
    assert!(render_config(&creds_local, "h")
        .unwrap_err()
        .to_string()
        .contains("--credentials"));
    assert!(render_config(&ConfigInputs::default(), "")
        .unwrap_err()
        .to_string()
        .contains("device_id"));
}

#[test]
fn trusted_key_spec_names_role_and_rejects_junk() {
    let read = |_: &Path| Ok("  AAAAkey=\n".to_owned());
    let k = TrustedKey::parse("/keys/ops.pub:operator", read).unwrap();
    assert_eq!(
        (k.name.as_str(), k.public_key.as_str(), k.role.as_str()),
        ("ops", "AAAAkey=", "operator")
    );
    assert_eq!(
        TrustedKey::parse("/keys/ops.pub", read).unwrap().role,
        "admin"
    );
    let e = TrustedKey::parse("/k/a.pub", |_| Ok("two words".into())).unwrap_err();
    assert!(e.to_string().contains("one base64 public key"), "{e}");
}

#[test]
fn os_release_and_glibc_rules() {
    assert!(good_probe().check().is_ok());
    let mut p = good_probe();
    p.os_version = "11".into();
    p.glibc = "glibc 2.31".into();
    let e = p.check().unwrap_err().to_string();
    assert!(
        e.contains("Debian 11 is older than Debian 12 (bookworm)"),
        "{e}"
    );
    // Not Debian (e.g. Raspberry Pi OS says debian too; Ubuntu does not): glibc decides.
    let mut p = good_probe();
    p.os_id = "ubuntu".into();
    p.os_version = "20.04".into();
    p.glibc = "glibc 2.31".into();
    let e = p.check().unwrap_err().to_string();
    assert!(e.contains("glibc 2.31 is older than 2.34"), "{e}");
    p.glibc = "glibc 2.35".into();
    assert!(p.check().is_ok());
    p.glibc = String::new();
    assert!(p
        .check()
        .unwrap_err()
        .to_string()
        .contains("glibc version unknown"));
    // Debian testing has no VERSION_ID.
    let mut p = good_probe();
    p.os_version = String::new();
    assert!(p.check().is_ok());
}

#[test]
fn no_root_and_no_sudo_is_refused_before_anything_else() {
    let p = Probe::parse("uid=1000\nsudo=no\n");
    let e = p.check().unwrap_err().to_string();
    assert!(e.contains("no root") && e.contains("sudo -n true"), "{e}");
    let mut p = good_probe();
    p.uid = Some(1000);
    p.sudo = true;
    assert!(p.check().is_ok());
    assert!(p.needs_sudo());
    assert!(!good_probe().needs_sudo());
    let e = Probe::parse("").check().unwrap_err().to_string();
    assert!(e.contains("no uid"), "{e}");
}

#[test]
fn probe_output_parses_absent_things_as_absent() {
    let p =
        Probe::parse("uid=0\ninstalled=\nconfig_sha=\nenabled=disabled\nactive=inactive\njunk\n");
    assert_eq!(p.installed, None);
    assert_eq!(p.config_sha, None);
    assert!(!p.enabled && !p.active && !p.has_systemd);
    // dpkg-query after `dpkg -r`: config-files state is not installed.
    assert_eq!(
        Probe::parse("installed=config-files 0.1.0\n").installed,
        None
    );
    assert_eq!(good_probe().installed.as_deref(), Some("0.1.0"));
}

#[test]
fn the_deb_for_the_arch_and_the_newest_version() {
    let dir = Path::new("/pkgs");
    let names: Vec<String> = [
        "fleet-agent_0.1.0_amd64.deb",
        "fleet-agent_0.1.0_arm64.deb",
        "fleet-agent_0.10.0_arm64.deb",
        "fleet-agent_0.9.0_arm64.deb",
        "fleetctl_0.1.0_arm64.deb",
        "README",
    ]
    .map(String::from)
    .to_vec();
    let d = choose_deb(dir, &names, "arm64").unwrap();
    assert_eq!(d.version, "0.10.0");
    assert_eq!(d.path, Path::new("/pkgs/fleet-agent_0.10.0_arm64.deb"));
    assert_eq!(choose_deb(dir, &names, "amd64").unwrap().version, "0.1.0");
    let e = choose_deb(dir, &names, "armhf").unwrap_err().to_string();
    assert!(
        e.contains("unsupported architecture armhf") && e.contains("found: amd64, arm64"),
        "{e}"
    );
    let e = choose_deb(dir, &[], "arm64").unwrap_err().to_string();
    assert!(e.contains("found: none"), "{e}");
}

#[test]
fn version_order_is_debian_like() {
    assert_eq!(compare_versions("0.10.0", "0.9.0"), Ordering::Greater);
    assert_eq!(compare_versions("1.0~rc1", "1.0"), Ordering::Less);
    assert_eq!(compare_versions("1.0.1", "1.0"), Ordering::Greater);
    assert_eq!(compare_versions("1.01", "1.1"), Ordering::Equal);
    assert_eq!(compare_versions("1.0a", "1.0"), Ordering::Greater);
}

#[test]
fn idempotence_same_inputs_change_nothing() {
    let p = good_probe();
    let c = decide(&p, &deb("0.1.0"), "abc", None);
    assert!(c.none(), "{c:?}");
    assert!(c.lines(&deb("0.1.0")).is_empty());

    // New config: write it and restart the running agent.
    let c = decide(&p, &deb("0.1.0"), "def", None);
    assert!(
        c.write_config && c.restart && c.install.is_none() && !c.enable,
        "{c:?}"
    );
    // New version: install; the package's own scripts restart, so no extra restart.
    let c = decide(&p, &deb("0.2.0"), "def", None);
    assert_eq!(c.install.as_deref(), Some("0.2.0"));
    assert!(c.write_config && !c.restart, "{c:?}");
    // Fresh device.
    let fresh = Probe::parse("uid=0\narch=arm64\nsystemd=yes\n");
    let c = decide(&fresh, &deb("0.1.0"), "abc", Some("s"));
    assert!(c.install.is_some() && c.write_config && c.write_credentials && !c.restart);
    let lines = c.lines(&deb("0.1.0"));
    assert!(
        lines[0].starts_with("copy /p/fleet-agent_0.1.0_arm64.deb and install"),
        "{lines:?}"
    );
    // Installed, config the same, but the service is stopped: enable and start it.
    let mut stopped = good_probe();
    stopped.active = false;
    let c = decide(&stopped, &deb("0.1.0"), "abc", None);
    assert!(c.enable && !c.restart && !c.write_config, "{c:?}");
    // Credentials compared by sha256 too.
    let mut with_creds = good_probe();
    with_creds.creds_sha = Some("s1".into());
    assert!(decide(&with_creds, &deb("0.1.0"), "abc", Some("s1")).none());
    assert!(decide(&with_creds, &deb("0.1.0"), "abc", Some("s2")).write_credentials);
}

#[test]
fn ssh_failures_are_named() {
    let t = Target::parse("pi@10.0.0.7:2222").unwrap();
    let mismatch = "@@@@@@@@@@@\n@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @\n\
                    Host key verification failed.\n";
    let e = classify_ssh_failure(&t, Some(255), mismatch);
    assert!(e.starts_with("pi@10.0.0.7:2222: host key mismatch"), "{e}");
    assert!(e.contains("nothing was changed"), "{e}");
    let unknown = "No ED25519 host key is known for [10.0.0.7]:2222 and you have requested strict checking.\nHost key verification failed.\n";
    assert!(classify_ssh_failure(&t, Some(255), unknown).contains("host key verification failed"));
    let refused = "ssh: connect to host 10.0.0.7 port 2222: Connection refused\n";
    let e = classify_ssh_failure(&t, Some(255), refused);
    assert!(
        e.contains("unreachable: 10.0.0.7:2222: connection refused"),
        "{e}"
    );
    let denied = "pi@10.0.0.7: Permission denied (publickey).\n";
    assert!(classify_ssh_failure(&t, Some(255), denied).contains("login refused"));
    assert!(classify_ssh_failure(&t, Some(1), "boom\n").contains("exit 1: boom"));
}

fn sh(script: &str, input: &[u8]) -> std::process::ExitStatus {
    use std::io::Write;
    let mut c = std::process::Command::new("sh")
        .arg("-c")
        .arg(script)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin.take().unwrap().write_all(input).unwrap();
    c.wait().unwrap()
}

#[test]
fn file_writes_are_atomic_with_the_mode_and_leave_no_temp_file() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("etc fleet's"); // quoting: a space and a quote
    let d = dir.to_str().unwrap();
    assert!(sh(&write_file_script(d, "c.creds", "0600", "077"), b"seed-1\n").success());
    assert!(sh(&write_file_script(d, "c.creds", "0600", "077"), b"seed-2\n").success());
    let f = dir.join("c.creds");
    assert_eq!(std::fs::read(&f).unwrap(), b"seed-2\n");
    assert_eq!(
        std::fs::metadata(&f).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(
        std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
        0o700
    );
    assert_eq!(
        std::fs::read_dir(&dir).unwrap().count(),
        1,
        "no temp file left"
    );
    // A destination that cannot be written: fails, and the temp file is gone.
    std::fs::create_dir(dir.join("blocked")).unwrap();
    assert!(!sh(&write_file_script(d, "blocked", "0640", "027"), b"x").success());
    assert_eq!(
        std::fs::read_dir(&dir).unwrap().count(),
        2,
        "no temp file left"
    );
    let n = std::process::Command::new("sh")
        .args(["-n", "-c", INSTALL_SCRIPT])
        .status()
        .unwrap();
    assert!(n.success());
}
