//! Hostile documents through every decoder of outside input: each is refused with a short
//! message that names a field or says the whole document, and never echoes a secret.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use fleet_contract::release::AgentRelease;
use fleet_contract::{
    generate_key_pkcs8, key_pair_from_b64, CommandDecodeError, CommandEnvelope, DecodeError,
    Deployment, ImageReference, SignedCommand, SystemUpgrade, COMMAND_API_VERSION,
    MAX_COMMAND_BYTES, MAX_MANIFEST_BYTES, MAX_SAFE_INTEGER, SIGNING_DOMAIN,
};
use ring::signature::{Ed25519KeyPair, KeyPair};

const MANIFEST: &str = r#"{"apiVersion":"fleet/v1","name":"web","revision":3,"container":{"image":"localhost/web:1","command":["httpd","-f"],"env":{"PORT":"8080","TOKEN":"s3cr3t"}},"lifecycle":{"stopSignal":"SIGINT","gracePeriodSecs":5},"init":[{"name":"prep","command":["true"]}]}"#;
const SYSTEM: &str =
    r#"{"apiVersion":"fleet/v1","id":"u-1","command":"true","deadlineSecs":600,"maxBoots":3}"#;
const RELEASE: &str = r#"{"apiVersion":"fleet/v1","version":"2.0.0","artifact":"file:///tmp/x","sha256":"ab","key":"k","signature":"s"}"#;

const TOML: &str = r#"apiVersion = "fleet/v1"
name = "web"
revision = 3

[container]
image = "localhost/web:1"
command = ["httpd"]

[lifecycle]
stopSignal = "SIGINT"
"#;

/// A refusal's text: short, and about a field or the whole document.
fn assert_refusal(what: &str, text: &str) {
    assert!(
        text.contains("field `") || text.contains("the whole document"),
        "{what}: names neither a field nor the whole document: {text}"
    );
    assert!(text.len() < 400, "{what}: {} bytes: {text}", text.len());
}

fn manifest_err(doc: &str) -> DecodeError {
    let e = Deployment::from_json_slice(doc.as_bytes())
        .expect_err(&format!("accepted: {}", fleet_contract::quote(doc)));
    assert_refusal(doc, &e.to_string());
    e
}

fn key() -> Ed25519KeyPair {
    key_pair_from_b64(&B64.encode(generate_key_pkcs8().unwrap())).unwrap()
}

/// A signed command whose payload is `payload` exactly (not re-serialised).
fn signed(payload: &[u8], k: &Ed25519KeyPair) -> SignedCommand {
    let mut msg = SIGNING_DOMAIN.to_vec();
    msg.extend_from_slice(payload);
    SignedCommand {
        payload: B64.encode(payload),
        key: B64.encode(k.public_key().as_ref()),
        sig: B64.encode(k.sign(&msg).as_ref()),
    }
}

fn envelope_json(issued: &str, expires: &str, args: &str) -> String {
    format!(
        r#"{{"apiVersion":"{COMMAND_API_VERSION}","id":"c-1","device":"pi-1","verb":"ping","args":{args},"actor":"alice","issuedAt":{issued},"expiresAt":{expires}}}"#
    )
}

fn envelope_err(payload: &str) -> CommandDecodeError {
    let k = key();
    let e = signed(payload.as_bytes(), &k)
        .verify(k.public_key().as_ref())
        .expect_err(payload);
    assert_refusal(payload, &e.to_string());
    e
}

#[test]
fn the_good_documents_decode() {
    Deployment::from_json_slice(MANIFEST.as_bytes()).unwrap();
    Deployment::from_toml_str(TOML).unwrap();
    SystemUpgrade::from_json_slice(SYSTEM.as_bytes()).unwrap();
    AgentRelease::from_json_slice(RELEASE.as_bytes()).unwrap();
    let k = key();
    let env = signed(envelope_json("100", "200", "{}").as_bytes(), &k)
        .verify(k.public_key().as_ref())
        .unwrap();
    assert_eq!(env.verb, "ping");
}

#[test]
fn content_after_the_document_is_refused_whitespace_is_not() {
    let k = key();
    let cmd = String::from_utf8(signed(b"{}", &k).encode()).unwrap();
    let env = envelope_json("100", "200", "{}");
    for doc in [MANIFEST, SYSTEM, RELEASE, cmd.as_str(), env.as_str()] {
        for tail in ["xyz", doc, "\0", "}", "]", " 1", "//"] {
            let bad = format!("{doc}{tail}");
            let refused = [
                Deployment::from_json_slice(bad.as_bytes())
                    .err()
                    .map(|e| e.to_string()),
                SystemUpgrade::from_json_slice(bad.as_bytes())
                    .err()
                    .map(|e| e.to_string()),
                AgentRelease::from_json_slice(bad.as_bytes()).err(),
                SignedCommand::decode(bad.as_bytes())
                    .err()
                    .map(|e| e.to_string()),
                signed(bad.as_bytes(), &k)
                    .verify(k.public_key().as_ref())
                    .err()
                    .map(|e| e.to_string()),
            ];
            for (i, r) in refused.iter().enumerate() {
                let text = r
                    .as_ref()
                    .unwrap_or_else(|| panic!("decoder {i} accepted {bad:?}"));
                assert_refusal(&bad, text);
            }
        }
        let spaced = format!("{doc} \n\t\r\n");
        let accepted = match doc {
            d if d == MANIFEST => Deployment::from_json_slice(spaced.as_bytes()).is_ok(),
            d if d == SYSTEM => SystemUpgrade::from_json_slice(spaced.as_bytes()).is_ok(),
            d if d == RELEASE => AgentRelease::from_json_slice(spaced.as_bytes()).is_ok(),
            d if d == cmd => SignedCommand::decode(spaced.as_bytes()).is_ok(),
            _ => signed(spaced.as_bytes(), &k)
                .verify(k.public_key().as_ref())
                .is_ok(),
        };
        assert!(accepted, "trailing whitespace refused: {spaced:?}");
    }
    let e = manifest_err(&format!("{MANIFEST}xyz"));
    assert_eq!(e.field, None);
    assert!(e.to_string().contains("trailing characters"), "{e}");
}

#[test]
fn a_list_where_a_struct_belongs_is_refused_at_every_depth() {
    let e = SystemUpgrade::from_json_slice(br#"["fleet/v1","id"]"#).unwrap_err();
    assert_eq!(e.field, None, "{e}");
    assert!(
        e.to_string().contains("the whole document: is a list"),
        "{e}"
    );
    let e = manifest_err(
        r#"["fleet/v1","web",3,{"image":"localhost/web:1"},{"stopSignal":"SIGTERM","gracePeriodSecs":1},[]]"#,
    );
    assert_eq!(e.field, None, "{e}");
    for (from, to, field) in [
        (
            r#"{"image":"localhost/web:1","command":["httpd","-f"],"env":{"PORT":"8080","TOKEN":"s3cr3t"}}"#,
            r#"["localhost/web:1",["httpd"]]"#,
            "container",
        ),
        (
            r#"{"stopSignal":"SIGINT","gracePeriodSecs":5}"#,
            "[]",
            "lifecycle",
        ),
        (
            r#"{"stopSignal":"SIGINT","gracePeriodSecs":5}"#,
            r#"["SIGINT",5]"#,
            "lifecycle",
        ),
        (
            r#"{"name":"prep","command":["true"]}"#,
            r#"["prep",null,["true"]]"#,
            "init[0]",
        ),
    ] {
        let doc = MANIFEST.replace(from, to);
        assert_ne!(doc, MANIFEST);
        let e = manifest_err(&doc);
        assert_eq!(e.field.as_deref(), Some(field), "{e}");
    }
    // TOML: `lifecycle = []`, `container = [...]`.
    let e = Deployment::from_toml_str(
        &TOML.replace("[lifecycle]\nstopSignal = \"SIGINT\"\n", "lifecycle = []\n"),
    )
    .unwrap_err();
    assert_eq!(e.field.as_deref(), Some("lifecycle"), "{e}");
    let e = Deployment::from_toml_str(
        "apiVersion = \"fleet/v1\"\nname = \"web\"\nrevision = 3\ncontainer = [\"localhost/web:1\"]\n",
    )
    .unwrap_err();
    assert_eq!(
        (e.field.as_deref(), e.line),
        (Some("container"), Some(4)),
        "{e}"
    );
    // The wire form of a command, and its envelope.
    let e = SignedCommand::decode(br#"["e30=","AAAA","AAAA"]"#).unwrap_err();
    assert_eq!(e.subject(), None, "{e}");
    let e = envelope_err(r#"["fleet/v1","c-1","pi-1","ping",{},"alice",100,200]"#);
    assert_eq!(e.subject(), None, "{e}");
}

#[test]
fn duplicate_keys_are_refused_naming_the_key() {
    for (from, to, field) in [
        (
            r#""TOKEN":"s3cr3t""#,
            r#""TOKEN":"s3cr3t","TOKEN":"other""#,
            "container.env.TOKEN",
        ),
        (r#""name":"web""#, r#""name":"web","name":"web""#, "name"),
        (
            r#""revision":3"#,
            r#""revision":3,"revision":4"#,
            "revision",
        ),
        (
            r#""gracePeriodSecs":5"#,
            r#""gracePeriodSecs":5,"gracePeriodSecs":5"#,
            "lifecycle.gracePeriodSecs",
        ),
    ] {
        let e = manifest_err(&MANIFEST.replace(from, to));
        assert_eq!(e.field.as_deref(), Some(field), "{e}");
        assert!(e.message.contains("duplicate"), "{e}");
        assert!(!e.to_string().contains("s3cr3t"), "{e}");
    }
    let e = SystemUpgrade::from_json_slice(
        SYSTEM
            .replace(r#""id":"u-1""#, r#""id":"u-1","id":"u-2""#)
            .as_bytes(),
    )
    .unwrap_err();
    assert_eq!(e.field.as_deref(), Some("id"), "{e}");
    let e = envelope_err(&envelope_json("100", "200", r#"{"x":1,"y":{"z":1,"z":2}}"#));
    assert_eq!(e.subject(), Some("args.y.z"), "{e}");
    let e = SignedCommand::decode(br#"{"payload":"e30=","payload":"e30=","key":"","sig":""}"#)
        .unwrap_err();
    assert_eq!(e.subject(), Some("payload"), "{e}");
}

#[test]
fn numbers_are_bounded_at_the_decoder() {
    let max = MAX_SAFE_INTEGER.to_string();
    let over = (MAX_SAFE_INTEGER + 1).to_string();
    let d = Deployment::from_json_slice(
        MANIFEST
            .replace(r#""revision":3"#, &format!(r#""revision":{max}"#))
            .as_bytes(),
    )
    .unwrap();
    assert_eq!(d.revision, MAX_SAFE_INTEGER);
    for n in [
        over.as_str(),
        "9223372036854775808",
        "18446744073709551615",
        "18446744073709551616",
        "-1",
        "1.5",
        "1e3",
    ] {
        let e = manifest_err(&MANIFEST.replace(r#""revision":3"#, &format!(r#""revision":{n}"#)));
        assert_eq!(e.field.as_deref(), Some("revision"), "{n}: {e}");
    }
    let e = Deployment::from_toml_str(&TOML.replace("revision = 3", &format!("revision = {over}")))
        .unwrap_err();
    assert_eq!(
        (e.field.as_deref(), e.line),
        (Some("revision"), Some(3)),
        "{e}"
    );
    for (field, doc) in [
        ("issuedAt", envelope_json(&over, &format!("{over}0"), "{}")),
        ("expiresAt", envelope_json("100", &over, "{}")),
        (
            "expiresAt",
            envelope_json("100", "18446744073709551616", "{}"),
        ),
        ("issuedAt", envelope_json("-5", "200", "{}")),
    ] {
        let e = envelope_err(&doc);
        assert_eq!(e.subject(), Some(field), "{e}");
    }
    for (from, to, field) in [
        (r#""maxBoots":3"#, r#""maxBoots":4294967296"#, "maxBoots"),
        (
            r#""deadlineSecs":600"#,
            r#""deadlineSecs":18446744073709551615"#,
            "deadlineSecs",
        ),
    ] {
        let e = SystemUpgrade::from_json_slice(SYSTEM.replace(from, to).as_bytes()).unwrap_err();
        assert_eq!(e.field.as_deref(), Some(field), "{e}");
    }
    for (from, to, field) in [
        (
            r#""gracePeriodSecs":5"#,
            r#""gracePeriodSecs":4294967296"#,
            "lifecycle.gracePeriodSecs",
        ),
        (
            r#""command":["true"]}"#,
            r#""command":["true"],"timeoutSecs":4294967295}"#,
            "init[0].timeoutSecs",
        ),
    ] {
        let e = manifest_err(&MANIFEST.replace(from, to));
        assert_eq!(e.field.as_deref(), Some(field), "{e}");
    }
}

#[test]
fn hostile_images_and_argv_are_refused_naming_the_field() {
    let long = "a".repeat(512);
    for image in [
        "--privileged",
        "-h",
        "../../etc/passwd",
        "file:///x",
        "alpine\u{200b}",
        &long,
        "a b",
        "a\0",
        "",
    ] {
        let escaped = serde_json::to_string(image).unwrap();
        let e = manifest_err(&MANIFEST.replace(r#""localhost/web:1""#, &escaped));
        assert_eq!(e.field.as_deref(), Some("container.image"), "{e}");
        let e = manifest_err(&MANIFEST.replace(
            r#""name":"prep""#,
            &format!(r#""name":"prep","image":{escaped}"#),
        ));
        assert_eq!(e.field.as_deref(), Some("init[0].image"), "{e}");
        assert!(ImageReference::parse(image).is_err());
    }
    for (from, to, field) in [
        (
            r#""TOKEN":"s3cr3t""#,
            r#""TOKEN":"s3cr3t\u0000x""#,
            "container.env.TOKEN",
        ),
        (
            r#""TOKEN":"s3cr3t""#,
            r#""TOKEN":"s3cr3t\u001b[2J""#,
            "container.env.TOKEN",
        ),
        (
            r#""httpd","-f""#,
            r#""httpd","-f\u0000s3cr3t""#,
            "container.command[1]",
        ),
        (
            r#""httpd","-f""#,
            r#""httpd\u0007","-f""#,
            "container.command[0]",
        ),
        (
            r#""command":["true"]"#,
            r#""command":["true","s3cr3t\u0000"]"#,
            "init[0].command[1]",
        ),
    ] {
        let e = manifest_err(&MANIFEST.replace(from, to));
        assert_eq!(e.field.as_deref(), Some(field), "{e}");
        assert!(!e.to_string().contains("s3cr3t"), "{e}");
    }
    // Tab, newline and a zero-width space are fine in values and arguments.
    Deployment::from_json_slice(
        MANIFEST
            .replace(r#""s3cr3t""#, r#""a\tb\nc\u200b""#)
            .replace(r#""-f""#, r#""-f\t""#)
            .as_bytes(),
    )
    .unwrap();
    let huge = "x".repeat(fleet_contract::MAX_ARG_BYTES);
    let e = manifest_err(&MANIFEST.replace(r#""s3cr3t""#, &format!("{huge:?}")));
    assert_eq!(e.field.as_deref(), Some("container.env.TOKEN"), "{e}");
    let e = SystemUpgrade::from_json_slice(
        SYSTEM
            .replace(r#""command":"true""#, r#""command":"true\u0000rm""#)
            .as_bytes(),
    )
    .unwrap_err();
    assert_eq!(e.field.as_deref(), Some("command"), "{e}");
}

#[test]
fn a_huge_value_gives_a_short_message_everywhere() {
    let big = "x".repeat(200 * 1024);
    let bigu = "Ü".repeat(100 * 1024);
    let mut refusals = Vec::new();
    for v in [&big, &bigu] {
        let q = serde_json::to_string(v).unwrap();
        for (from, to) in [
            (r#""fleet/v1""#, q.clone()),
            (r#""web""#, q.clone()),
            (r#""localhost/web:1""#, q.clone()),
            (r#""SIGINT""#, q.clone()),
            (r#""prep""#, q.clone()),
            (r#""PORT""#, q.clone()),
            (r#""revision""#, q.clone()),
            (r#"3,"#, format!("{q},")),
            (
                r#""container":{"#,
                format!(r#""container":{{"restart":{q},"#),
            ),
        ] {
            let doc = MANIFEST.replacen(from, &to, 1);
            assert_ne!(doc, MANIFEST, "{from}");
            if doc.len() <= MAX_MANIFEST_BYTES {
                refusals.push(manifest_err(&doc).to_string());
            }
            let e = Deployment::from_toml_str(&TOML.replacen(from, &to, 1));
            if let Err(e) = e {
                refusals.push(e.to_string());
            }
        }
        for (from, to) in [(r#""u-1""#, &q), (r#""fleet/v1""#, &q), (r#""id""#, &q)] {
            let doc = SYSTEM.replacen(from, to, 1);
            if let Err(e) = SystemUpgrade::from_json_slice(doc.as_bytes()) {
                refusals.push(e.to_string());
            }
        }
        for (from, to) in [(r#""fleet/v1""#, &q), (r#""version""#, &q), (r#""k""#, &q)] {
            refusals.push(
                AgentRelease::from_json_slice(RELEASE.replacen(from, to, 1).as_bytes())
                    .unwrap_err(),
            );
        }
        let small = "y".repeat(20 * 1024);
        let sq = serde_json::to_string(&small).unwrap();
        for (from, to) in [
            (r#""c-1""#, &sq),
            (r#""pi-1""#, &sq),
            (r#""ping""#, &sq),
            (r#""fleet/v1""#, &sq),
            (r#""alice""#, &sq),
            (r#""actor""#, &sq),
        ] {
            refusals.push(
                envelope_err(&envelope_json("100", "200", "{}").replacen(from, to, 1)).to_string(),
            );
        }
        refusals.push(
            SignedCommand::decode(format!(r#"{{"payload":{sq},"key":"","sig":""}}"#).as_bytes())
                .map(|c| c.public_key().unwrap_err())
                .unwrap_or_else(|e| e)
                .to_string(),
        );
        refusals.push(
            SignedCommand::decode(format!(r#"{{{sq}:1}}"#).as_bytes())
                .unwrap_err()
                .to_string(),
        );
    }
    for r in &refusals {
        assert_refusal("huge value", r);
        assert!(r.len() < 300, "{} bytes: {r}", r.len());
    }
    assert!(refusals.len() > 40, "{}", refusals.len());
}

#[test]
fn size_caps_and_non_utf8_say_the_whole_document() {
    let big = vec![b' '; MAX_MANIFEST_BYTES + 1];
    let e = Deployment::from_json_slice(&big).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "the whole document: {} bytes; the limit is {MAX_MANIFEST_BYTES}",
            big.len()
        )
    );
    let e = Deployment::from_toml_bytes(&big).unwrap_err();
    assert_eq!(e.field, None);
    let e = Deployment::from_toml_bytes(b"name = \"w\xffb\"").unwrap_err();
    assert_eq!(
        e.to_string(),
        "the whole document: not UTF-8 text (first bad byte at offset 9)"
    );
    let e = SystemUpgrade::from_toml_bytes(b"\xc3").unwrap_err();
    assert!(e.to_string().contains("first bad byte at offset 0"), "{e}");
    let e = SignedCommand::decode(&vec![b' '; MAX_COMMAND_BYTES + 1]).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "not a signed command: the whole document: {} bytes; the limit is {MAX_COMMAND_BYTES}",
            MAX_COMMAND_BYTES + 1
        )
    );
    // Command decode errors name the field now, not only `line 1 column N`.
    let e = SignedCommand::decode(br#"{"payload":5,"key":"","sig":""}"#).unwrap_err();
    assert_eq!(e.subject(), Some("payload"), "{e}");
    let e = envelope_err(&envelope_json("100", "\"soon\"", "{}"));
    assert_eq!(e.subject(), Some("expiresAt"), "{e}");
    let e = SignedCommand::decode(b"\xff\x00garbage").unwrap_err();
    assert!(e.to_string().starts_with("not a signed command: "), "{e}");
    assert_refusal("garbage", &e.to_string());
}

/// Hundreds of generated variants of each good document: every prefix, and hostile tokens
/// put in at many places. Whatever is refused names a field or the whole document, briefly.
#[test]
fn generated_hostile_documents_are_refused_clearly() {
    const TOKENS: &[&str] = &[
        "xyz",
        "\0",
        "[]",
        "[",
        "]",
        "{}",
        "{",
        "}",
        ",",
        ":",
        "\"",
        "\\",
        "null",
        "-1",
        "18446744073709551616",
        "9007199254740992",
        "1e400",
        "\"--privileged\"",
        "\"\\u0000\"",
        "\"\u{200b}\"",
        "\"file:///x\"",
        ",\"name\":\"x\"",
        ",\"env\":{\"A\":\"1\",\"A\":\"2\"}",
    ];
    let k = key();
    let mut refused = 0;
    let env = envelope_json("100", "200", r#"{"x":[1,{"y":"z"}]}"#);
    let toml_tokens = [
        "lifecycle = []\n",
        "[container]\n",
        "revision = 9007199254740992\n",
        "image = \"-h\"\n",
    ];
    for doc in [MANIFEST, SYSTEM, RELEASE, TOML, env.as_str()] {
        let cuts = (0..doc.len()).step_by(3).chain([doc.len()]);
        let mut variants: Vec<String> = cuts.clone().map(|i| doc[..i].to_owned()).collect();
        for i in cuts.step_by(4) {
            for t in TOKENS.iter().chain(&toml_tokens) {
                variants.push(format!("{}{t}{}", &doc[..i], &doc[i..]));
            }
        }
        for v in &variants {
            let b = v.as_bytes();
            let results = [
                Deployment::from_json_slice(b).err().map(|e| e.to_string()),
                Deployment::from_toml_str(v).err().map(|e| e.to_string()),
                SystemUpgrade::from_json_slice(b)
                    .err()
                    .map(|e| e.to_string()),
                SystemUpgrade::from_toml_bytes(b)
                    .err()
                    .map(|e| e.to_string()),
                AgentRelease::from_json_slice(b).err(),
                SignedCommand::decode(b).err().map(|e| e.to_string()),
                signed(b, &k)
                    .verify(k.public_key().as_ref())
                    .err()
                    .map(|e| e.to_string()),
            ];
            for r in results.into_iter().flatten() {
                assert_refusal(v, &r);
                refused += 1;
            }
        }
    }
    assert!(refused > 5000, "{refused}");
}

#[test]
fn envelope_type_is_unchanged_on_the_good_path() {
    let k = key();
    let env = CommandEnvelope {
        api_version: COMMAND_API_VERSION.into(),
        id: "c-9".into(),
        device: "pi-1".into(),
        verb: "ping".into(),
        args: serde_json::json!({"deep": {"list": [1, {"a": null}]}}),
        actor: "alice".into(),
        issued_at: MAX_SAFE_INTEGER - 1,
        expires_at: MAX_SAFE_INTEGER,
    };
    let cmd = SignedCommand::decode(&SignedCommand::sign(&env, &k).encode()).unwrap();
    assert_eq!(cmd.verify(&cmd.public_key().unwrap()).unwrap(), env);
}
