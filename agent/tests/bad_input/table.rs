//! The expected-refusal table: issue #12's classes as hostile documents and what each decoder
//! must do with them. This file is the specification the suite checks; `gen.rs` adds seeded
//! random mutations (truncations, bit flips, spliced tokens) of the same base documents.
//!
//! Every case names its issue class (`class`), what it is (`what`), the decoder it is for
//! (`kind`) and the verdict the issue demands (`expect`):
//! - `Refused`: the decoder must refuse it, naming a field or the whole document, in under
//!   4 KiB even when it quotes a 200 KB value;
//! - `Accepted`: a control (boundary values, trailing whitespace), so the suite cannot pass
//!   by refusing everything;
//! - `Either`: no panic and, if refused, the same rules for the message.

use serde_json::{json, Value};

/// Which decoder a document is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `Deployment::from_json_slice` (NATS KV, MQTT retained).
    ManifestJson,
    /// `Deployment::from_toml_bytes` (local `deployments.d/*.toml`).
    ManifestToml,
    /// `SystemUpgrade::from_json_slice` (`<device>.system`).
    SystemJson,
    /// `SystemUpgrade::from_toml_bytes` (local `system.toml`).
    SystemToml,
    /// `AgentRelease::from_json_slice` (`<device>.agent`).
    AgentJson,
    /// `SignedCommand::decode` + `verify` (the command subject / topic).
    Command,
}

/// What the issue demands of the decoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    Refused,
    Accepted,
    Either,
}

/// One hostile (or control) document.
#[derive(Debug, Clone)]
pub struct Case {
    /// Unique, stable id: `<kind>/<class>/<n>`; also used to name KV keys and files.
    pub id: String,
    /// Issue #12 class, e.g. "2 trailing content".
    pub class: &'static str,
    /// What was done to the base document.
    pub what: String,
    pub kind: Kind,
    /// The deployment name the document is stored under (network planes: the key).
    pub name: String,
    pub bytes: Vec<u8>,
    pub expect: Expect,
}

/// The base documents' constants.
pub const DEV: &str = "bad-dev";
pub const GOOD_IMAGE: &str = "localhost/fleet-test/busybox:testkit";
/// Hostile manifests pull this (absent) image when they are accepted, so none runs.
pub const HOSTILE_IMAGE: &str = "localhost/fleet-test/absent:0";
pub const BIG: usize = 200 * 1024;
pub const HUGE_DOC: usize = 1024 * 1024;
pub const ZWSP: &str = "\u{200b}";

pub const C1: &str = "1 numbers bounded at the decoder";
pub const C2: &str = "2 trailing content, arrays for structs, duplicate keys";
pub const C3: &str = "3 image references and argv";
pub const C4: &str = "4 200 KB values quoted in messages";
pub const C6: &str = "6 documents over the size cap";
pub const C8: &str = "8 odd names and non-UTF-8 text";
pub const C0: &str = "0 not a document at all";
pub const CTRL: &str = "control (must be accepted)";

/// A valid manifest for deployment `name`, as JSON, with `secret` as an env value.
pub fn manifest_value(name: &str, image: &str, secret: &str) -> Value {
    json!({
        "apiVersion": "fleet/v1",
        "name": name,
        "revision": 3,
        "container": {
            "image": image,
            "command": ["sh", "-c", "trap 'exit 0' TERM; sleep 3600 & wait"],
            "env": {"TOKEN": secret, "MODE": "test"},
            "restart": "always"
        },
        "lifecycle": {"stopSignal": "SIGTERM", "gracePeriodSecs": 5},
        "init": [{"name": "prep", "command": ["true"], "timeoutSecs": 30}]
    })
}

/// The same manifest as TOML.
pub fn manifest_toml(name: &str, image: &str, secret: &str) -> String {
    format!(
        "apiVersion = \"fleet/v1\"\nname = \"{name}\"\nrevision = 3\n\n[container]\n\
         image = \"{image}\"\ncommand = [\"sh\", \"-c\", \"trap 'exit 0' TERM; sleep 3600 & wait\"]\n\
         restart = \"always\"\n\n[container.env]\nTOKEN = \"{secret}\"\nMODE = \"test\"\n\n\
         [lifecycle]\nstopSignal = \"SIGTERM\"\ngracePeriodSecs = 5\n\n\
         [[init]]\nname = \"prep\"\ncommand = [\"true\"]\ntimeoutSecs = 30\n"
    )
}

pub fn system_value() -> Value {
    json!({"apiVersion": "fleet/v1", "id": "up-1", "deadlineSecs": 600, "maxBoots": 3})
}

pub fn agent_value() -> Value {
    json!({
        "apiVersion": "fleet/v1",
        "version": "2.0.0",
        "artifact": "nats-object://fleet-agent-2.0.0",
        "sha256": "ab".repeat(32),
        "key": "release",
        "signature": "A".repeat(88)
    })
}

/// The command envelope a signed ping carries.
pub fn envelope_value(id: &str, now: u64) -> Value {
    json!({
        "apiVersion": "fleet/v1", "id": id, "device": DEV, "verb": "ping", "args": null,
        "actor": "bad-input", "issuedAt": now, "expiresAt": now + 600
    })
}

fn enc(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).expect("serialise")
}

/// `v` with the value at `path` (dotted; numeric parts index arrays) replaced by `new`.
pub fn with(v: &Value, path: &str, new: Value) -> Value {
    let mut out = v.clone();
    let mut cur = &mut out;
    let parts: Vec<&str> = path.split('.').collect();
    for (i, p) in parts.iter().enumerate() {
        let last = i + 1 == parts.len();
        cur = match p.parse::<usize>() {
            Ok(n) => &mut cur[n],
            Err(_) => {
                if last {
                    cur[*p] = Value::Null;
                }
                &mut cur[*p]
            }
        };
    }
    *cur = new;
    out
}

/// Replaces the JSON text of the object at `path` by the raw `text` (for shapes serde_json's
/// `Value` cannot hold: duplicate keys, raw numbers beyond u64).
fn raw(v: &Value, path: &str, text: &str) -> Vec<u8> {
    const MARK: &str = "\"@@RAW@@\"";
    let doc = String::from_utf8(enc(&with(v, path, json!("@@RAW@@")))).expect("utf-8");
    doc.replacen(MARK, text, 1).into_bytes()
}

/// Builds the cases of one kind, numbering them.
struct Table {
    kind: Kind,
    prefix: &'static str,
    name: String,
    cases: Vec<Case>,
}

impl Table {
    fn new(kind: Kind, prefix: &'static str, name: &str) -> Self {
        Self {
            kind,
            prefix,
            name: name.to_owned(),
            cases: Vec::new(),
        }
    }

    fn add(
        &mut self,
        class: &'static str,
        what: impl Into<String>,
        bytes: Vec<u8>,
        expect: Expect,
    ) {
        self.add_named(class, what, self.name.clone(), bytes, expect);
    }

    fn add_named(
        &mut self,
        class: &'static str,
        what: impl Into<String>,
        name: String,
        bytes: Vec<u8>,
        expect: Expect,
    ) {
        let n = self.cases.len();
        self.cases.push(Case {
            id: format!("{}-{n:03}", self.prefix),
            class,
            what: what.into(),
            kind: self.kind,
            name,
            bytes,
            expect,
        });
    }
}

use Expect::{Accepted, Either, Refused};

/// The common "not a document" inputs, for any JSON decoder.
fn not_documents(t: &mut Table) {
    for (what, bytes) in [
        ("empty input", b"".to_vec()),
        ("null", b"null".to_vec()),
        ("an empty array", b"[]".to_vec()),
        ("an empty object", b"{}".to_vec()),
        ("a string", b"\"fleet/v1\"".to_vec()),
        ("a number", b"0".to_vec()),
        ("10 000 nested arrays", "[".repeat(10_000).into_bytes()),
        (
            "10 000 nested objects",
            "{\"a\":".repeat(10_000).into_bytes(),
        ),
        ("NUL bytes", vec![0u8; 64]),
        ("0xff bytes", vec![0xffu8; 64]),
    ] {
        t.add(C0, what, bytes, Refused);
    }
}

/// Trailing content, arrays for the document, duplicate keys: for any JSON decoder.
fn strictness(t: &mut Table, base: &Value, dup_key: &str) {
    let doc = enc(base);
    let cat = |tail: &[u8]| [doc.as_slice(), tail].concat();
    t.add(
        C2,
        "trailing `xyz` after the document",
        cat(b"xyz"),
        Refused,
    );
    t.add(C2, "the document twice back to back", cat(&doc), Refused);
    t.add(C2, "a NUL byte after the document", cat(b"\0"), Refused);
    t.add(C2, "a `}` after the document", cat(b"}"), Refused);
    t.add(C2, "a `,` after the document", cat(b",{}"), Refused);
    t.add(
        CTRL,
        "whitespace after the document",
        cat(b" \n\t\r\n"),
        Accepted,
    );
    let values: Vec<Value> = base
        .as_object()
        .expect("object")
        .values()
        .cloned()
        .collect();
    t.add(
        C2,
        "the whole document as an array of its values",
        enc(&Value::Array(values)),
        Refused,
    );
    let first_two: Vec<Value> = base
        .as_object()
        .expect("object")
        .values()
        .take(2)
        .cloned()
        .collect();
    t.add(
        C2,
        "an array of the first two values",
        enc(&Value::Array(first_two)),
        Refused,
    );
    let text = String::from_utf8(doc.clone()).expect("utf-8");
    let dup = text.replacen('{', &format!("{{\"{dup_key}\":{},", base[dup_key]), 1);
    t.add(
        C2,
        format!("top-level key `{dup_key}` twice"),
        dup.into_bytes(),
        Refused,
    );
}

/// Deployment manifests as JSON (the network planes).
pub fn manifest_json_cases(secret: &str) -> Vec<Case> {
    let name = "hostile";
    let base = manifest_value(name, HOSTILE_IMAGE, secret);
    let mut t = Table::new(Kind::ManifestJson, "mj", name);
    not_documents(&mut t);
    strictness(&mut t, &base, "revision");
    t.add(CTRL, "the base manifest", enc(&base), Accepted);

    // Class 1: numbers.
    for (what, num) in [
        ("revision 2^63", "9223372036854775808"),
        ("revision 2^64-1", "18446744073709551615"),
        ("revision 2^64", "18446744073709551616"),
        ("revision 2^53", "9007199254740992"),
        ("revision -1", "-1"),
        ("revision 1.5", "1.5"),
        ("revision 1e30", "1e30"),
        ("revision 100 digits", &"9".repeat(100)),
        ("revision \"3\" (a string)", "\"3\""),
    ] {
        t.add(C1, what, raw(&base, "revision", num), Refused);
    }
    t.add(
        CTRL,
        "revision 2^53-1",
        raw(&base, "revision", "9007199254740991"),
        Accepted,
    );
    for (path, num) in [
        ("lifecycle.gracePeriodSecs", "4294967295"),
        ("lifecycle.gracePeriodSecs", "4294967296"),
        ("lifecycle.gracePeriodSecs", "18446744073709551615"),
        ("init.0.timeoutSecs", "4294967295"),
        ("init.0.timeoutSecs", "-5"),
    ] {
        t.add(
            C1,
            format!("{path} = {num}"),
            raw(&base, path, num),
            Refused,
        );
    }

    // Class 2: arrays for structs at every depth, duplicate keys in maps.
    let c = &base["container"];
    let c_values: Vec<Value> = c.as_object().expect("object").values().cloned().collect();
    t.add(
        C2,
        "container as an array of its values",
        enc(&with(&base, "container", Value::Array(c_values))),
        Refused,
    );
    t.add(
        C2,
        "lifecycle = []",
        enc(&with(&base, "lifecycle", json!([]))),
        Refused,
    );
    t.add(
        C2,
        "lifecycle as [\"SIGTERM\", 5]",
        enc(&with(&base, "lifecycle", json!(["SIGTERM", 5]))),
        Refused,
    );
    t.add(
        C2,
        "init[0] as an array",
        enc(&with(&base, "init.0", json!(["prep", null, ["true"], 30]))),
        Refused,
    );
    t.add(
        C2,
        "container.env as an array",
        enc(&with(&base, "container.env", json!([["TOKEN", "x"]]))),
        Refused,
    );
    t.add(
        C2,
        "container.env key TOKEN twice",
        raw(
            &base,
            "container.env",
            &format!("{{\"TOKEN\":\"{secret}\",\"TOKEN\":\"other\"}}"),
        ),
        Refused,
    );
    t.add(
        C2,
        "container key image twice",
        raw(
            &base,
            "container",
            &format!("{{\"image\":\"{HOSTILE_IMAGE}\",\"image\":\"{GOOD_IMAGE}\"}}"),
        ),
        Refused,
    );
    t.add(
        C2,
        "an unknown top-level field",
        enc(&with(&base, "extra", json!(1))),
        Refused,
    );
    t.add(
        C2,
        "apiVersion fleet/v2",
        enc(&with(&base, "apiVersion", json!("fleet/v2"))),
        Refused,
    );
    t.add(
        C2,
        "container = null",
        enc(&with(&base, "container", Value::Null)),
        Refused,
    );

    // Class 3: image references and argv.
    for image in [
        "--privileged".to_owned(),
        "-h".to_owned(),
        "--rm".to_owned(),
        "../../etc/passwd".to_owned(),
        "file:///x".to_owned(),
        "docker://busybox".to_owned(),
        format!("busybox{ZWSP}"),
        "a".repeat(512),
        "busybox\0".to_owned(),
        "".to_owned(),
        " busybox".to_owned(),
        "busybox\n".to_owned(),
        "Busybox".to_owned(),
        "busybox:".to_owned(),
        format!("localhost/x:{}", "t".repeat(129)),
        "busybox@sha256:zz".to_owned(),
        "localhost//x".to_owned(),
        "localhost/x/".to_owned(),
    ] {
        t.add(
            C3,
            format!("image {}", show(&image)),
            enc(&with(&base, "container.image", json!(image))),
            Refused,
        );
    }
    for image in [
        "busybox",
        "docker.io/library/busybox:1.36",
        "localhost:5000/a/b_c__d-e:v1.2-x",
        "busybox@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
    ] {
        t.add(
            CTRL,
            format!("image {image}"),
            enc(&with(&base, "container.image", json!(image))),
            Accepted,
        );
    }
    t.add(
        C3,
        "NUL in an env value",
        enc(&with(
            &base,
            "container.env.TOKEN",
            json!(format!("{secret}\0x")),
        )),
        Refused,
    );
    t.add(
        C3,
        "NUL in an env key",
        enc(&with(&base, "container.env", json!({"TO\0KEN": secret}))),
        Refused,
    );
    t.add(
        C3,
        "`=` in an env key",
        enc(&with(&base, "container.env", json!({"A=B": secret}))),
        Refused,
    );
    t.add(
        C3,
        "an empty env key",
        enc(&with(&base, "container.env", json!({"": secret}))),
        Refused,
    );
    t.add(
        C3,
        "NUL in a command argument",
        enc(&with(&base, "container.command.2", json!("sleep\x003600"))),
        Refused,
    );
    t.add(
        C3,
        "NUL in an init command",
        enc(&with(&base, "init.0.command.0", json!("tr\0ue"))),
        Refused,
    );
    t.add(
        C3,
        "BEL in a command argument",
        enc(&with(&base, "container.command.2", json!("a\u{7}b"))),
        Either,
    );
    t.add(
        C3,
        "NUL in stopSignal",
        enc(&with(&base, "lifecycle.stopSignal", json!("SIGTERM\0"))),
        Refused,
    );

    // Class 4: 200 KB values must give a short message.
    let big = "v".repeat(BIG);
    for path in [
        "name",
        "apiVersion",
        "container.image",
        "lifecycle.stopSignal",
        "init.0.name",
        "container.restart",
    ] {
        t.add(
            C4,
            format!("200 KB {path}"),
            enc(&with(&base, path, json!(big))),
            Refused,
        );
    }
    t.add(
        C4,
        "200 KB env key",
        enc(&with(&base, "container.env", json!({ big.clone(): "x" }))),
        Refused,
    );
    t.add(
        C4,
        "200 KB env value (never quoted)",
        enc(&with(
            &base,
            "container.env.TOKEN",
            json!(format!("{secret}{big}")),
        )),
        Either,
    );
    t.add(
        C4,
        "200 KB command argument",
        enc(&with(&base, "container.command.2", json!(big))),
        Either,
    );

    // Class 6: over the size cap.
    t.add(
        C6,
        "1 MB env value",
        enc(&with(
            &base,
            "container.env.PAD",
            json!("p".repeat(HUGE_DOC)),
        )),
        Refused,
    );
    let mut padded = enc(&base);
    padded.extend(std::iter::repeat_n(b' ', HUGE_DOC));
    t.add(C6, "1 MB of trailing spaces", padded, Refused);
    t.add(
        C6,
        "300 KB env value",
        enc(&with(
            &base,
            "container.env.PAD",
            json!("p".repeat(300 * 1024)),
        )),
        Refused,
    );

    // Class 8: odd names (the network planes store them under the same odd key).
    for odd in [
        "Web".to_owned(),
        "web.extra".to_owned(),
        "*".to_owned(),
        "x".repeat(3000),
        "../x".to_owned(),
        format!("web{ZWSP}"),
        "".to_owned(),
    ] {
        let v = with(&base, "name", json!(odd));
        t.add_named(
            C8,
            format!("name {}", show(&odd)),
            odd.clone(),
            enc(&v),
            Refused,
        );
    }
    let mut bad_utf8 = enc(&with(&base, "container.env.TOKEN", json!("@@")));
    let at = bad_utf8
        .windows(2)
        .position(|w| w == b"@@")
        .expect("marker");
    bad_utf8[at] = 0xff;
    bad_utf8[at + 1] = 0xfe;
    t.add(
        C8,
        "0xff 0xfe inside an env value (not UTF-8)",
        bad_utf8,
        Refused,
    );
    t.cases
}

/// Deployment manifests as TOML (the local plane).
pub fn manifest_toml_cases(secret: &str) -> Vec<Case> {
    let name = "hostile";
    let base = manifest_toml(name, HOSTILE_IMAGE, secret);
    let mut t = Table::new(Kind::ManifestToml, "mt", name);
    let sub = |from: &str, to: &str| {
        assert!(base.contains(from), "{from}");
        base.replacen(from, to, 1).into_bytes()
    };
    t.add(
        CTRL,
        "the base manifest",
        base.clone().into_bytes(),
        Accepted,
    );
    t.add(C0, "empty file", Vec::new(), Refused);
    t.add(C0, "NUL bytes", vec![0; 64], Refused);
    t.add(
        C0,
        "10 000 nested arrays",
        format!("x = {}", "[".repeat(10_000)).into_bytes(),
        Refused,
    );
    t.add(
        C2,
        "trailing garbage line",
        format!("{base}xyz\n").into_bytes(),
        Refused,
    );
    t.add(
        C2,
        "a NUL after the document",
        format!("{base}\0").into_bytes(),
        Refused,
    );
    t.add(
        C2,
        "lifecycle = []",
        sub(
            "[lifecycle]\nstopSignal = \"SIGTERM\"\ngracePeriodSecs = 5\n",
            "lifecycle = []\n",
        ),
        Refused,
    );
    t.add(
        C2,
        "[[container]] (an array of tables)",
        sub("[container]\n", "[[container]]\n"),
        Refused,
    );
    t.add(
        C2,
        "[[lifecycle]] (an array of tables)",
        sub("[lifecycle]\n", "[[lifecycle]]\n"),
        Refused,
    );
    t.add(
        C2,
        "container.env as an array",
        sub("[container.env]\nTOKEN", "[[container.env]]\nTOKEN"),
        Refused,
    );
    t.add(
        C2,
        "revision twice",
        sub("revision = 3\n", "revision = 3\nrevision = 4\n"),
        Refused,
    );
    t.add(
        C2,
        "env TOKEN twice",
        sub("MODE = \"test\"\n", "MODE = \"test\"\nTOKEN = \"x\"\n"),
        Refused,
    );
    for (what, num) in [
        ("revision 2^63", "9223372036854775808"),
        ("revision 2^63-1", "9223372036854775807"),
        ("revision 2^53", "9007199254740992"),
        ("revision -1", "-1"),
        ("revision 1.5", "1.5"),
        ("revision inf", "inf"),
    ] {
        t.add(
            C1,
            what,
            sub("revision = 3\n", &format!("revision = {num}\n")),
            Refused,
        );
    }
    t.add(
        CTRL,
        "revision 2^53-1",
        sub("revision = 3\n", "revision = 9007199254740991\n"),
        Accepted,
    );
    t.add(
        C1,
        "gracePeriodSecs 2^32-1",
        sub("gracePeriodSecs = 5", "gracePeriodSecs = 4294967295"),
        Refused,
    );
    for image in [
        "--privileged",
        "-h",
        "../../etc/passwd",
        "file:///x",
        "busybox\\u200b",
        "busybox\\u0000",
        &"a".repeat(512),
    ] {
        t.add(
            C3,
            format!("image {}", show(image)),
            sub(
                &format!("image = \"{HOSTILE_IMAGE}\""),
                &format!("image = \"{image}\""),
            ),
            Refused,
        );
    }
    t.add(
        C3,
        "NUL in an env value",
        sub(
            &format!("TOKEN = \"{secret}\""),
            &format!("TOKEN = \"{secret}\\u0000\""),
        ),
        Refused,
    );
    t.add(
        C3,
        "NUL in a command argument",
        sub("[\"sh\", \"-c\"", "[\"sh\\u0000\", \"-c\""),
        Refused,
    );
    t.add(
        C3,
        "NUL in an init command",
        sub("command = [\"true\"]", "command = [\"tr\\u0000ue\"]"),
        Refused,
    );
    let big = "v".repeat(BIG);
    t.add(
        C4,
        "200 KB name",
        sub(&format!("name = \"{name}\""), &format!("name = \"{big}\"")),
        Refused,
    );
    t.add(
        C4,
        "200 KB image",
        sub(
            &format!("image = \"{HOSTILE_IMAGE}\""),
            &format!("image = \"{big}\""),
        ),
        Refused,
    );
    t.add(
        C4,
        "200 KB stopSignal",
        sub(
            "stopSignal = \"SIGTERM\"",
            &format!("stopSignal = \"{big}\""),
        ),
        Refused,
    );
    t.add(
        C4,
        "200 KB env key",
        sub("MODE = \"test\"", &format!("{big} = \"test\"")),
        Refused,
    );
    t.add(
        C6,
        "1 MB env value",
        sub(
            "MODE = \"test\"",
            &format!("MODE = \"{}\"", "p".repeat(HUGE_DOC)),
        ),
        Refused,
    );
    t.add(
        C6,
        "1 MB comment",
        format!("{base}#{}\n", "c".repeat(HUGE_DOC)).into_bytes(),
        Refused,
    );
    for odd in [
        "Web".to_owned(),
        "web.extra".to_owned(),
        "*".to_owned(),
        "x".repeat(3000),
    ] {
        t.add(
            C8,
            format!("name {}", show(&odd)),
            sub(&format!("name = \"{name}\""), &format!("name = \"{odd}\"")),
            Refused,
        );
    }
    let mut bad = base.clone().into_bytes();
    let at = bad.windows(4).position(|w| w == b"test").expect("marker");
    bad[at] = 0xff;
    t.add(C8, "0xff inside a value (not UTF-8)", bad, Refused);
    t.cases
}

/// `<device>.system` as JSON and `system.toml`.
pub fn system_cases() -> Vec<Case> {
    let base = system_value();
    let mut t = Table::new(Kind::SystemJson, "sj", "system");
    not_documents(&mut t);
    strictness(&mut t, &base, "id");
    t.add(CTRL, "the base request", enc(&base), Accepted);
    t.add(
        C2,
        "[\"fleet/v1\",\"id\"] (started an OS upgrade)",
        br#"["fleet/v1","id"]"#.to_vec(),
        Refused,
    );
    t.add(
        C2,
        "[\"fleet/v1\",\"up-1\",null,600,3]",
        br#"["fleet/v1","up-1",null,600,3]"#.to_vec(),
        Refused,
    );
    for (path, num) in [
        ("deadlineSecs", "18446744073709551615"),
        ("deadlineSecs", "9223372036854775808"),
        ("deadlineSecs", "1e30"),
        ("deadlineSecs", "-1"),
        ("maxBoots", "4294967296"),
        ("maxBoots", "4294967295"),
    ] {
        t.add(
            C1,
            format!("{path} = {num}"),
            raw(&base, path, num),
            Refused,
        );
    }
    let big = "v".repeat(BIG);
    t.add(
        C4,
        "200 KB id",
        enc(&with(&base, "id", json!(big))),
        Refused,
    );
    t.add(
        C4,
        "200 KB apiVersion",
        enc(&with(&base, "apiVersion", json!(big))),
        Refused,
    );
    t.add(
        C4,
        "200 KB command",
        enc(&with(&base, "command", json!(big))),
        Either,
    );
    t.add(
        C3,
        "NUL in command",
        enc(&with(&base, "command", json!("lvm-upgrade\0--force"))),
        Refused,
    );
    t.add(
        C8,
        "id ../../boot",
        enc(&with(&base, "id", json!("../../boot"))),
        Refused,
    );
    t.add(
        C8,
        "id with a zero-width space",
        enc(&with(&base, "id", json!(format!("up{ZWSP}1")))),
        Refused,
    );
    t.add(
        C6,
        "1 MB command",
        enc(&with(&base, "command", json!("c".repeat(HUGE_DOC)))),
        Refused,
    );
    let mut cases = t.cases;

    let base_toml = "apiVersion = \"fleet/v1\"\nid = \"up-1\"\ndeadlineSecs = 600\nmaxBoots = 3\n";
    let mut t = Table::new(Kind::SystemToml, "st", "system");
    let sub = |from: &str, to: &str| base_toml.replacen(from, to, 1).into_bytes();
    t.add(
        CTRL,
        "the base request",
        base_toml.as_bytes().to_vec(),
        Accepted,
    );
    t.add(
        C2,
        "trailing garbage",
        format!("{base_toml}xyz").into_bytes(),
        Refused,
    );
    t.add(
        C2,
        "id twice",
        format!("{base_toml}id = \"up-2\"\n").into_bytes(),
        Refused,
    );
    t.add(
        C1,
        "deadlineSecs 2^63-1",
        sub("deadlineSecs = 600", "deadlineSecs = 9223372036854775807"),
        Refused,
    );
    t.add(
        C1,
        "deadlineSecs 2^63",
        sub("deadlineSecs = 600", "deadlineSecs = 9223372036854775808"),
        Refused,
    );
    t.add(
        C1,
        "maxBoots 2^32",
        sub("maxBoots = 3", "maxBoots = 4294967296"),
        Refused,
    );
    t.add(
        C4,
        "200 KB id",
        sub("\"up-1\"", &format!("\"{}\"", "v".repeat(BIG))),
        Refused,
    );
    t.add(
        C6,
        "1 MB comment",
        format!("{base_toml}#{}\n", "c".repeat(HUGE_DOC)).into_bytes(),
        Refused,
    );
    t.add(
        C8,
        "not UTF-8",
        [base_toml.as_bytes(), b"# \xff\xfe\n"].concat(),
        Refused,
    );
    cases.extend(t.cases);
    cases
}

/// `<device>.agent`.
pub fn agent_cases() -> Vec<Case> {
    let base = agent_value();
    let mut t = Table::new(Kind::AgentJson, "aj", "agent");
    not_documents(&mut t);
    strictness(&mut t, &base, "version");
    t.add(CTRL, "the base release", enc(&base), Accepted);
    let big = "v".repeat(BIG);
    for path in [
        "version",
        "artifact",
        "key",
        "signature",
        "sha256",
        "apiVersion",
    ] {
        t.add(
            C4,
            format!("200 KB {path}"),
            enc(&with(&base, path, json!(big))),
            Refused,
        );
    }
    t.add(
        C6,
        "1 MB signature",
        enc(&with(&base, "signature", json!("A".repeat(HUGE_DOC)))),
        Refused,
    );
    t.add(
        C2,
        "an unknown field",
        enc(&with(&base, "extra", json!(true))),
        Refused,
    );
    t.add(
        C2,
        "version as an array",
        enc(&with(&base, "version", json!(["2", "0", "0"]))),
        Refused,
    );
    t.add(
        C3,
        "NUL in version",
        enc(&with(&base, "version", json!("2.0.0\0"))),
        Refused,
    );
    t.cases
}

/// A signed-command envelope's mutations are signed again with the operator key, so the
/// envelope decoder itself is reached; the wire form's mutations break the signature or the
/// outer document. `sign(payload)` returns the wire form for a payload.
pub fn command_cases(now: u64, sign: &dyn Fn(&[u8]) -> Vec<u8>) -> Vec<Case> {
    let env = envelope_value("bad-input-1", now);
    let mut t = Table::new(Kind::Command, "cm", "cmd");
    let good = sign(&enc(&env));
    t.add(CTRL, "a signed ping", good.clone(), Accepted);
    // The envelope, signed.
    let doc = enc(&env);
    let signed = |b: Vec<u8>| sign(&b);
    t.add(
        C2,
        "envelope with trailing `xyz`",
        signed([doc.as_slice(), b"xyz"].concat()),
        Refused,
    );
    t.add(
        C2,
        "envelope twice back to back",
        signed([doc.as_slice(), doc.as_slice()].concat()),
        Refused,
    );
    t.add(
        C2,
        "envelope with a trailing NUL",
        signed([doc.as_slice(), b"\0"].concat()),
        Refused,
    );
    let values: Vec<Value> = env.as_object().expect("object").values().cloned().collect();
    t.add(
        C2,
        "envelope as an array",
        signed(enc(&Value::Array(values))),
        Refused,
    );
    let text = String::from_utf8(doc.clone()).expect("utf-8");
    t.add(
        C2,
        "envelope key verb twice",
        signed(text.replacen('{', "{\"verb\":\"reboot\",", 1).into_bytes()),
        Refused,
    );
    t.add(
        C2,
        "args with key a twice",
        signed(raw(&env, "args", "{\"a\":1,\"a\":2}")),
        Refused,
    );
    for (path, num) in [
        ("issuedAt", "18446744073709551615"),
        ("expiresAt", "18446744073709551615"),
        ("expiresAt", "9223372036854775808"),
        ("expiresAt", "18446744073709551616"),
        ("expiresAt", "1e30"),
        ("issuedAt", "-1"),
    ] {
        t.add(
            C1,
            format!("{path} = {num}"),
            signed(raw(&env, path, num)),
            Refused,
        );
    }
    t.add(
        C3,
        "NUL in verb",
        signed(enc(&with(&env, "verb", json!("ping\0")))),
        Refused,
    );
    t.add(
        C4,
        "40 KB id",
        signed(enc(&with(&env, "id", json!("i".repeat(40 * 1024))))),
        Refused,
    );
    t.add(
        C4,
        "40 KB apiVersion",
        signed(enc(&with(&env, "apiVersion", json!("v".repeat(40 * 1024))))),
        Refused,
    );
    t.add(
        C4,
        "40 KB device",
        signed(enc(&with(&env, "device", json!("d".repeat(40 * 1024))))),
        Refused,
    );
    t.add(
        C6,
        "200 KB actor (over the command cap)",
        signed(enc(&with(&env, "actor", json!("a".repeat(BIG))))),
        Refused,
    );
    t.add(
        C8,
        "envelope not UTF-8",
        signed([b"{\"apiVersion\":\"\xff\xfe\"".as_slice(), &doc[1..]].concat()),
        Refused,
    );
    // The wire form.
    let wire: Value = serde_json::from_slice(&good).expect("wire json");
    not_documents(&mut t);
    let w = enc(&wire);
    t.add(
        C2,
        "wire form with trailing `xyz`",
        [w.as_slice(), b"xyz"].concat(),
        Refused,
    );
    t.add(
        C2,
        "wire form twice",
        [w.as_slice(), w.as_slice()].concat(),
        Refused,
    );
    t.add(
        C2,
        "wire form as an array",
        enc(&json!([wire["payload"], wire["key"], wire["sig"]])),
        Refused,
    );
    let wtext = String::from_utf8(w.clone()).expect("utf-8");
    t.add(
        C2,
        "wire key payload twice",
        wtext
            .replacen('{', "{\"payload\":\"e30=\",", 1)
            .into_bytes(),
        Refused,
    );
    t.add(
        C2,
        "payload not base64",
        enc(&with(&wire, "payload", json!("!!!"))),
        Refused,
    );
    t.add(
        C2,
        "key 31 bytes",
        enc(&with(&wire, "key", json!("A".repeat(40) + "=="))),
        Refused,
    );
    let mut sig = wire["sig"].as_str().expect("sig").to_owned().into_bytes();
    sig[5] = if sig[5] == b'A' { b'B' } else { b'A' };
    t.add(
        C2,
        "signature changed",
        enc(&with(
            &wire,
            "sig",
            json!(String::from_utf8(sig).expect("ascii")),
        )),
        Refused,
    );
    t.add(
        C4,
        "200 KB key",
        enc(&with(&wire, "key", json!("k".repeat(BIG)))),
        Refused,
    );
    t.add(
        C6,
        "1 MB wire form",
        enc(&with(&wire, "payload", json!("A".repeat(HUGE_DOC)))),
        Refused,
    );
    t.cases
}

/// A value for a case title: at most 40 characters and its length.
pub fn show(s: &str) -> String {
    if s.chars().count() <= 40 {
        format!("{s:?}")
    } else {
        let head: String = s.chars().take(40).collect();
        format!("{head:?}… ({} bytes)", s.len())
    }
}
