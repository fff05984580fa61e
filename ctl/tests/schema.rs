//! The manifest's JSON schema: `contract/schema/deployment.schema.json` is what schemars
//! generates from `fleet_contract::Deployment` (regenerate it with
//! `FLEET_UPDATE_SCHEMA=1 cargo test -p fleetctl --test schema`), `fleetctl schema` prints
//! exactly that file, and the reference manifest walks the schema without a stray key.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::path::PathBuf;

use fleet_contract::{Deployment, NetworkMode, Probe, Protocol, PullPolicy};
use serde_json::{json, Map, Value};

const CTL: &str = env!("CARGO_BIN_EXE_fleetctl");
const REGENERATE: &str = "FLEET_UPDATE_SCHEMA=1 cargo test -p fleetctl --test schema";

fn committed_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../contract/schema/deployment.schema.json")
}

/// Rustdoc's links and line wrapping out of a description (editors show it as text).
fn clean_description(d: &str) -> String {
    let d = d
        .replace("[`API_VERSION`]", "`fleet/v1`")
        .replace("[`MAX_REVISION`]", "2^53 - 1");
    // Wrapped lines join with a space; blank lines stay paragraph breaks.
    d.split("\n\n")
        .map(|p| p.split('\n').map(str::trim).collect::<Vec<_>>().join(" "))
        .collect::<Vec<_>>()
        .join("\n\n")
}

/// The defaults schemars leaves out: it writes a field's default only when serde would
/// serialize it, and these fields are skipped at their default (so an old manifest encodes
/// as before). Editors complete from `default`, so they are put back here, each from the
/// Rust value.
fn missing_default(def: &str, prop: &str, schema: &Value) -> Option<Value> {
    let probe: Probe = serde_json::from_value(json!({ "exec": { "command": ["true"] } })).unwrap();
    let v = match (def, prop) {
        ("ContainerSpec", "network") => json!(NetworkMode::default()),
        ("ContainerSpec", "pullPolicy") => json!(PullPolicy::default()),
        ("PortMapping", "protocol") => json!(Protocol::default()),
        ("Probe", "initialDelaySecs") => json!(probe.initial_delay_secs),
        ("Probe", "periodSecs") => json!(probe.period_secs),
        ("Probe", "timeoutSecs") => json!(probe.timeout_secs),
        ("Probe", "failureThreshold") => json!(probe.failure_threshold),
        // Structs whose every field is optional: absent is `{}`.
        ("ContainerSpec", "resources" | "logs") => json!({}),
        _ => match schema.get("type").and_then(Value::as_str) {
            Some("boolean") => json!(false),
            Some("array") => json!([]),
            Some("object") => json!({}),
            _ => return None,
        },
    };
    Some(v)
}

fn allows_null(schema: &Value) -> bool {
    match schema.get("type") {
        Some(Value::Array(types)) => types.iter().any(|t| t == "null"),
        _ => schema
            .get("anyOf")
            .and_then(Value::as_array)
            .is_some_and(|a| a.iter().any(|s| s["type"] == "null")),
    }
}

/// Descriptions cleaned and every optional property's default filled in; a property that
/// has neither a default nor `null` fails the generation (add its default above).
fn polish(name: &str, schema: &mut Map<String, Value>) {
    if let Some(Value::String(d)) = schema.get_mut("description") {
        *d = clean_description(d);
    }
    for key in ["oneOf", "anyOf"] {
        if let Some(Value::Array(variants)) = schema.get_mut(key) {
            for v in variants.iter_mut().filter_map(Value::as_object_mut) {
                polish(name, v);
            }
        }
    }
    let required: Vec<String> = schema
        .get("required")
        .and_then(Value::as_array)
        .map(|r| {
            r.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let Some(Value::Object(props)) = schema.get_mut("properties") else {
        return;
    };
    for (prop, p) in props.iter_mut() {
        let p = p.as_object_mut().unwrap();
        if let Some(Value::String(d)) = p.get_mut("description") {
            *d = clean_description(d);
        }
        let whole = Value::Object(p.clone());
        if !required.contains(prop) && !p.contains_key("default") && !allows_null(&whole) {
            let d = missing_default(name, prop, &whole).unwrap_or_else(|| {
                panic!("{name}.{prop} has no default in the schema: add it to missing_default")
            });
            p.insert("default".into(), d);
        }
    }
}

fn generate() -> String {
    let generator = schemars::generate::SchemaSettings::draft2020_12()
        .for_deserialize()
        .into_generator();
    let schema = generator.into_root_schema_for::<Deployment>();
    let mut v = serde_json::to_value(schema).unwrap();
    let root = v.as_object_mut().unwrap();
    polish("Deployment", root);
    if let Some(Value::Object(defs)) = root.get_mut("$defs") {
        for (name, d) in defs.iter_mut() {
            polish(name, d.as_object_mut().unwrap());
        }
    }
    root["properties"]["apiVersion"]["const"] = json!(fleet_contract::API_VERSION);
    // serde_json's map sorts its keys: the identifying keys are written first by hand.
    let schema_uri = root.remove("$schema").unwrap();
    root.remove("title");
    let head = format!(
        "{{\n  \"$schema\": {schema_uri},\n  \"$id\": \"urn:fleet-agent:schema:deployment:fleet-v1\",\n  \"title\": \"fleet-agent deployment manifest (fleet/v1)\",\n"
    );
    let body = serde_json::to_string_pretty(&v).unwrap();
    let mut text = head + body.strip_prefix("{\n").unwrap();
    text.push('\n');
    text
}

#[test]
fn the_committed_schema_is_current() {
    let generated = generate();
    let path = committed_path();
    if std::env::var_os("FLEET_UPDATE_SCHEMA").is_some() {
        std::fs::write(&path, &generated).unwrap();
        eprintln!("wrote {}", path.display());
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    if committed != generated {
        let first = committed
            .lines()
            .zip(generated.lines())
            .position(|(a, b)| a != b)
            .unwrap_or(committed.lines().count().min(generated.lines().count()));
        panic!(
            "contract/schema/deployment.schema.json is not what the manifest types generate \
             (first difference at line {}: committed {:?}, generated {:?}); regenerate it with \
             `{REGENERATE}` and commit it",
            first + 1,
            committed.lines().nth(first).unwrap_or("<end>"),
            generated.lines().nth(first).unwrap_or("<end>"),
        );
    }
}

#[test]
fn fleetctl_schema_prints_the_committed_file() {
    if std::env::var_os("FLEET_UPDATE_SCHEMA").is_some() {
        return; // the binary embeds the file as it was before this run rewrote it
    }
    let out = std::process::Command::new(CTL)
        .arg("schema")
        .output()
        .unwrap();
    assert!(out.status.success());
    let committed = std::fs::read_to_string(committed_path()).unwrap();
    assert!(
        out.stdout == committed.as_bytes(),
        "`fleetctl schema` does not print contract/schema/deployment.schema.json"
    );
    let v: Value = serde_json::from_str(&committed).unwrap();
    assert_eq!(v["$id"], "urn:fleet-agent:schema:deployment:fleet-v1");
    assert_eq!(v["properties"]["apiVersion"]["const"], "fleet/v1");
    // Descriptions, enums and defaults are there for completion.
    let probe = &v["$defs"]["Probe"]["properties"];
    assert_eq!(probe["periodSecs"]["default"], 10);
    assert_eq!(probe["failureThreshold"]["default"], 3);
    assert!(probe["periodSecs"]["description"]
        .as_str()
        .unwrap()
        .contains("1..=3600"));
    let restart: Vec<&str> = v["$defs"]["RestartPolicy"]["oneOf"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["const"].as_str().unwrap())
        .collect();
    assert_eq!(restart, ["always", "on-failure", "never"]);
    assert_eq!(
        v["$defs"]["ContainerSpec"]["properties"]["network"]["default"],
        "bridge"
    );
}

/// Resolves `$ref` and a nullable `anyOf` to the schema a value must match.
fn resolve<'a>(root: &'a Value, mut s: &'a Value) -> &'a Value {
    loop {
        if let Some(r) = s.get("$ref").and_then(Value::as_str) {
            let name = r.strip_prefix("#/$defs/").unwrap();
            s = &root["$defs"][name];
        } else if let Some(any) = s.get("anyOf").and_then(Value::as_array) {
            s = any.iter().find(|a| a["type"] != "null").unwrap();
        } else {
            return s;
        }
    }
}

/// `type` is `t`, or a list holding `t` (a nullable field).
fn has_type(s: &Value, t: &str) -> bool {
    s["type"] == t
        || s["type"]
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x == t))
}

/// A small structural check of `v` against the schema: property names, types, enum values.
fn walk(root: &Value, schema: &Value, v: &toml::Value, path: &str) {
    let s = resolve(root, schema);
    if let Some(variants) = s.get("oneOf").and_then(Value::as_array) {
        let consts: Vec<&str> = variants
            .iter()
            .filter_map(|c| c["const"].as_str())
            .collect();
        assert!(
            consts.contains(&v.as_str().unwrap_or_default()),
            "{path}: {v} is not one of {consts:?}"
        );
        return;
    }
    match v {
        toml::Value::Table(t) => {
            assert_eq!(s["type"], "object", "{path}");
            for (k, val) in t {
                let p = format!("{path}.{k}");
                match s["properties"].get(k) {
                    Some(ps) => walk(root, ps, val, &p),
                    None => {
                        let extra = &s["additionalProperties"];
                        assert!(extra.is_object(), "{p} is not in the schema");
                        walk(root, extra, val, &p);
                    }
                }
            }
            for r in s["required"].as_array().into_iter().flatten() {
                assert!(t.contains_key(r.as_str().unwrap()), "{path}: {r} missing");
            }
        }
        toml::Value::Array(a) => {
            assert_eq!(s["type"], "array", "{path}");
            for (i, item) in a.iter().enumerate() {
                walk(root, &s["items"], item, &format!("{path}[{i}]"));
            }
        }
        toml::Value::String(_) => assert!(has_type(s, "string"), "{path}"),
        toml::Value::Integer(_) => assert!(has_type(s, "integer"), "{path}"),
        toml::Value::Boolean(_) => assert!(has_type(s, "boolean"), "{path}"),
        other => panic!("{path}: unexpected {other}"),
    }
}

#[test]
fn the_reference_manifest_fits_the_schema() {
    let src = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/reference/sensor.toml"),
    )
    .unwrap();
    Deployment::from_toml_str(&src).unwrap();
    let schema: Value =
        serde_json::from_str(&std::fs::read_to_string(committed_path()).unwrap()).unwrap();
    let doc: toml::Value = toml::from_str(&src).unwrap();
    walk(&schema, &schema, &doc, "");
}
