//! TOML manifests (the local `deployments.d/` format): any bytes must decode or be refused,
//! never panic; whatever decodes must survive the trip through the network (JSON) format.
#![no_main]

use fleet_contract::{argv_problem, quote, Deployment, ImageReference, MAX_REVISION};
use libfuzzer_sys::fuzz_target;

/// What every accepted manifest must be: bounded revision, valid images, argv-safe strings.
fn check_accepted(d: &Deployment) {
    assert!(
        d.revision <= MAX_REVISION,
        "revision {} accepted",
        d.revision
    );
    let images = std::iter::once(d.container.image.as_str())
        .chain(d.init.iter().filter_map(|i| i.image.as_deref()));
    for image in images {
        if let Err(e) = ImageReference::parse(image) {
            panic!("image {:?} accepted: {e}", quote(image));
        }
    }
    let c = &d.container;
    let argv = c
        .command
        .iter()
        .chain(c.env.values())
        .chain(d.init.iter().flat_map(|i| i.command.iter()))
        .chain(
            c.probes
                .iter()
                .filter_map(|p| p.exec.as_ref())
                .flat_map(|e| e.command.iter()),
        );
    for a in argv {
        if let Some(e) = argv_problem(a) {
            panic!("argv element {:?} accepted: {e}", quote(a));
        }
    }
    // What podman's --volume/--device/--tmpfs/--publish take apart: absolute paths without
    // its separators, non-zero ports, one check per probe, no label of the agent's own.
    let paths = c
        .volumes
        .iter()
        .map(|v| &v.mount_path)
        .chain(c.binds.iter().flat_map(|b| [&b.host_path, &b.mount_path]))
        .chain(c.tmpfs.iter().map(|t| &t.mount_path))
        .chain(c.devices.iter().map(|d| &d.host_path))
        .chain(c.devices.iter().filter_map(|d| d.container_path.as_ref()))
        .chain(c.working_dir.iter());
    for p in paths {
        assert!(
            p.starts_with('/') && !p.contains([':', ',']) && !p.split('/').any(|s| s == ".."),
            "path {:?} accepted",
            quote(p)
        );
    }
    assert!(c.devices.iter().all(|d| d.host_path.starts_with("/dev/")));
    assert!(c.ports.iter().all(|p| p.host_port > 0 && p.container_port > 0));
    assert!(c.probes.iter().all(|p| p.check().is_some()), "a probe without one check");
    assert!(!c.labels.keys().any(|k| k.starts_with("fleet.")));
}

fuzz_target!(|data: &[u8]| {
    let Ok(src) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(d) = Deployment::from_toml_str(src) else {
        return;
    };
    check_accepted(&d);
    // Tables where the manifest has structs (`lifecycle = []` is refused).
    let t: toml::Table = toml::from_str(src).expect("an accepted manifest is a TOML table");
    assert!(
        t["container"].is_table(),
        "a container that is not a table was accepted"
    );
    assert!(t.get("lifecycle").is_none_or(toml::Value::is_table));
    if let Some(init) = t.get("init").and_then(toml::Value::as_array) {
        assert!(
            init.iter().all(toml::Value::is_table),
            "an init list accepted"
        );
    }
    let json = d.to_json();
    match Deployment::from_json_slice(&json) {
        Ok(back) => assert_eq!(back, d, "JSON round trip changed the manifest"),
        Err(e) => panic!(
            "a valid TOML manifest was refused as JSON: {e}\nJSON: {}",
            String::from_utf8_lossy(&json)
        ),
    }
});
