//! JSON manifests (the network format, straight off the KV or a retained topic): any bytes
//! must decode or be refused, never panic; whatever decodes must re-encode to itself, and
//! must be what a strict decoder accepts (one object, bounded numbers, argv-safe strings).
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
    let Ok(d) = Deployment::from_json_slice(data) else {
        return;
    };
    check_accepted(&d);
    // One JSON object, with objects where the manifest has structs (no list decoded by
    // position, nothing after the document).
    let v: serde_json::Value =
        serde_json::from_slice(data).expect("an accepted manifest is one JSON document");
    assert!(
        v.is_object(),
        "a manifest that is not an object was accepted"
    );
    assert!(
        v["container"].is_object(),
        "a container that is not an object was accepted"
    );
    assert!(v.get("lifecycle").is_none_or(serde_json::Value::is_object));
    if let Some(init) = v.get("init").and_then(serde_json::Value::as_array) {
        assert!(
            init.iter().all(serde_json::Value::is_object),
            "an init list accepted"
        );
    }
    match Deployment::from_json_slice(&d.to_json()) {
        Ok(back) => assert_eq!(back, d, "re-encoding changed the manifest"),
        Err(e) => panic!("a decoded manifest does not decode after re-encoding: {e}"),
    }
});
