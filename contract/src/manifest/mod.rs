//! Deployment manifests: one deployment (a container plus its init containers) per document.

mod check;
mod container;
mod decode;
mod probe;

use serde::{Deserialize, Serialize};

use crate::device::{validate_name, NameError};
use crate::image::ImageReference;
use crate::quote;
use crate::text::argv_problem;

pub use check::{canonical_capability, CAPABILITIES, MAX_LIST_ENTRIES};
pub use container::{
    BindMount, ContainerSpec, DeviceMapping, LogOptions, NetworkMode, PortMapping, Protocol,
    PullPolicy, Resources, RestartPolicy, TmpfsMount, VolumeMount,
};
pub(crate) use decode::{decode_json, json_document, toml_document, toml_document_bytes, Document};
pub use decode::{decode_toml, located_error, DecodeError};
pub use probe::{ExecProbe, HttpProbe, Probe, ProbeCheck, TcpProbe};

/// The `apiVersion` every manifest must carry.
pub const API_VERSION: &str = "fleet/v1";

/// One deployment: what must run on the device under one name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Deployment {
    /// Schema version; must equal [`API_VERSION`].
    pub api_version: String,
    /// Deployment name: `[a-z0-9][a-z0-9-]{0,62}`, unique on the device.
    pub name: String,
    /// Operator-chosen revision (0..=[`MAX_REVISION`]); status reports which revision it
    /// reflects.
    pub revision: u64,
    /// The main container.
    pub container: ContainerSpec,
    /// How the old container is stopped on upgrade and removal.
    #[serde(default)]
    pub lifecycle: Lifecycle,
    /// Init containers, run in order to completion before the main container starts.
    #[serde(default, rename = "init", skip_serializing_if = "Vec::is_empty")]
    pub init: Vec<InitContainer>,
}

/// Stop behaviour on upgrade and removal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Lifecycle {
    /// Signal sent first, e.g. `SIGTERM`.
    #[serde(default = "default_stop_signal")]
    pub stop_signal: String,
    /// Seconds between the stop signal and SIGKILL (0..=3600).
    #[serde(default = "default_grace")]
    pub grace_period_secs: u32,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Self {
            stop_signal: default_stop_signal(),
            grace_period_secs: default_grace(),
        }
    }
}

fn default_stop_signal() -> String {
    "SIGTERM".to_owned()
}
fn default_grace() -> u32 {
    10
}

/// An init container: runs to completion before the main container on every fresh creation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct InitContainer {
    /// Name, unique within the deployment.
    pub name: String,
    /// Image reference; the main container's image when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Command and arguments.
    pub command: Vec<String>,
    /// Seconds before the init container is killed and the deployment fails (1..=86400).
    #[serde(default = "default_init_timeout")]
    pub timeout_secs: u32,
}

fn default_init_timeout() -> u32 {
    300
}
/// Largest manifest accepted, in bytes; anything bigger is refused before parsing.
pub const MAX_MANIFEST_BYTES: usize = 256 * 1024;

/// Largest integer every consumer holds exactly: 2^53 − 1 (JSON tools read numbers as
/// doubles; SQLite stores an i64). Revisions and command times are bounded by it.
pub const MAX_SAFE_INTEGER: u64 = (1 << 53) - 1;
/// Largest `revision` accepted: [`MAX_SAFE_INTEGER`].
pub const MAX_REVISION: u64 = MAX_SAFE_INTEGER;

impl Document for Deployment {
    const MAX_BYTES: usize = MAX_MANIFEST_BYTES;
    fn validate(&self) -> Result<(), (String, String)> {
        self.check()
    }
}

impl Deployment {
    /// Decodes raw file bytes as a TOML manifest (refusing non-UTF-8 text).
    pub fn from_toml_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        toml_document_bytes(bytes)
    }

    /// Decodes and validates a TOML manifest (the local `deployments.d/` format).
    pub fn from_toml_str(src: &str) -> Result<Self, DecodeError> {
        toml_document(src)
    }

    /// Decodes and validates a JSON manifest (the network format).
    pub fn from_json_slice(bytes: &[u8]) -> Result<Self, DecodeError> {
        json_document(bytes)
    }

    /// Encodes to JSON (the form cached in the store and sent on the wire).
    pub fn to_json(&self) -> Vec<u8> {
        // Serializing plain owned data with string keys cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Semantic checks serde cannot express; returns (field path, message).
    fn check(&self) -> Result<(), (String, String)> {
        check_api_version(&self.api_version)?;
        check_name("name", &self.name)?;
        if self.revision > MAX_REVISION {
            return Err((
                "revision".into(),
                format!(
                    "{} is above the limit of {MAX_REVISION} (2^53 - 1)",
                    self.revision
                ),
            ));
        }
        check::check_container(&self.container)?;
        if !is_signal_name(&self.lifecycle.stop_signal) {
            return Err((
                "lifecycle.stopSignal".into(),
                format!(
                    "unknown signal {}; use a name like SIGTERM, SIGINT, SIGQUIT, SIGHUP, SIGUSR1",
                    quote(&self.lifecycle.stop_signal)
                ),
            ));
        }
        if self.lifecycle.grace_period_secs > 3600 {
            return Err((
                "lifecycle.gracePeriodSecs".into(),
                format!(
                    "{} is above the limit of 3600",
                    self.lifecycle.grace_period_secs
                ),
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, init) in self.init.iter().enumerate() {
            check_name(&format!("init[{i}].name"), &init.name)?;
            if !seen.insert(init.name.as_str()) {
                return Err((
                    format!("init[{i}].name"),
                    format!("duplicate init container name {}", quote(&init.name)),
                ));
            }
            if let Some(image) = &init.image {
                check_image(&format!("init[{i}].image"), image)?;
            }
            if init.command.is_empty() {
                return Err((format!("init[{i}].command"), "must not be empty".into()));
            }
            check_argv(&format!("init[{i}].command"), &init.command)?;
            if !(1..=86_400).contains(&init.timeout_secs) {
                return Err((
                    format!("init[{i}].timeoutSecs"),
                    format!("{} is outside 1..=86400", init.timeout_secs),
                ));
            }
        }
        Ok(())
    }
}

/// `apiVersion` must be [`API_VERSION`] (manifests and OS upgrade requests).
pub(crate) fn check_api_version(v: &str) -> Result<(), (String, String)> {
    if v != API_VERSION {
        return Err((
            "apiVersion".into(),
            format!(
                "unsupported apiVersion {}; this agent speaks {API_VERSION:?}",
                quote(v)
            ),
        ));
    }
    Ok(())
}

pub(super) fn check_name(field: &str, name: &str) -> Result<(), (String, String)> {
    validate_name(name).map_err(|e| {
        let why = match e {
            NameError::Empty => "must not be empty".to_owned(),
            NameError::TooLong(n) => format!("is {n} characters; at most 63"),
            NameError::BadChar { ch, pos } => format!(
                "{} has {ch:?} at position {pos}; allowed: a-z, 0-9 and '-' (not first)",
                quote(name)
            ),
        };
        (field.to_owned(), why)
    })
}

pub(super) fn check_image(field: &str, image: &str) -> Result<(), (String, String)> {
    ImageReference::parse(image).map(drop).map_err(|why| {
        let message = if image.is_empty() {
            why
        } else {
            format!("{} is not an image reference: {why}", quote(image))
        };
        (field.to_owned(), message)
    })
}

/// Every element of a command becomes one argv element of the container's process.
pub(super) fn check_argv(field: &str, argv: &[String]) -> Result<(), (String, String)> {
    for (i, arg) in argv.iter().enumerate() {
        if let Some(why) = argv_problem(arg) {
            return Err((format!("{field}[{i}]"), why));
        }
    }
    Ok(())
}

fn is_signal_name(s: &str) -> bool {
    const SIGNALS: &[&str] = &[
        "SIGTERM", "SIGINT", "SIGQUIT", "SIGHUP", "SIGUSR1", "SIGUSR2", "SIGKILL", "SIGWINCH",
        "SIGPWR",
    ];
    SIGNALS.contains(&s)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
apiVersion = "fleet/v1"
name = "web"
revision = 3

[container]
image = "localhost/web:1"
command = ["httpd", "-f"]
env = { PORT = "8080" }

[lifecycle]
stopSignal = "SIGINT"
gracePeriodSecs = 5

[[init]]
name = "prepare"
command = ["mkdir", "-p", "/data"]

[[init]]
name = "seed"
command = ["touch", "/data/x"]
timeoutSecs = 20
"#;

    #[test]
    fn decodes_a_full_manifest() {
        let d = Deployment::from_toml_str(GOOD).unwrap();
        assert_eq!(d.name, "web");
        assert_eq!(d.revision, 3);
        assert_eq!(d.container.env["PORT"], "8080");
        assert_eq!(d.lifecycle.grace_period_secs, 5);
        assert_eq!(d.init.len(), 2);
        assert_eq!(d.init[1].timeout_secs, 20);
        assert_eq!(d.init[0].timeout_secs, 300);
    }

    #[test]
    fn json_errors_name_the_field() {
        let e = Deployment::from_json_slice(
            br#"{"apiVersion":"fleet/v1","name":"a","revision":"x","container":{"image":"i"}}"#,
        )
        .unwrap_err();
        assert_eq!(e.field.as_deref(), Some("revision"), "{e}");
        let e = Deployment::from_json_slice(
            br#"{"apiVersion":"fleet/v1","name":"a","revision":1,"container":{"image":5}}"#,
        )
        .unwrap_err();
        assert_eq!(e.field.as_deref(), Some("container.image"), "{e}");
        let e =
            Deployment::from_json_slice(br#"{"apiVersion":"fleet/v1","nmae":"a"}"#).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("nmae"), "{e}");
    }

    #[test]
    fn json_round_trip_is_lossless() {
        let d = Deployment::from_toml_str(GOOD).unwrap();
        let back = Deployment::from_json_slice(&d.to_json()).unwrap();
        assert_eq!(d, back);
    }

    #[test]
    fn unknown_field_names_field_and_line() {
        let src = GOOD.replace("revision = 3", "revision = 3\nreplicas = 2");
        let e = Deployment::from_toml_str(&src).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("replicas"), "{e}");
        assert_eq!(e.line, Some(5), "{e}");
    }

    #[test]
    fn wrong_type_names_key_on_the_line() {
        let src = GOOD.replace("revision = 3", "revision = \"three\"");
        let e = Deployment::from_toml_str(&src).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("revision"), "{e}");
        assert_eq!(e.line, Some(4));
    }

    #[test]
    fn semantic_error_is_located_in_its_table() {
        let src = GOOD.replace("name = \"seed\"", "name = \"Seed\"");
        let e = Deployment::from_toml_str(&src).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("init[1].name"), "{e}");
        assert_eq!(e.line, Some(20), "{e}");
        let src = GOOD.replace("apiVersion = \"fleet/v1\"", "apiVersion = \"fleet/v9\"");
        let e = Deployment::from_toml_str(&src).unwrap_err();
        assert_eq!((e.field.as_deref(), e.line), (Some("apiVersion"), Some(2)));
    }

    #[test]
    fn missing_field_is_named() {
        let src = GOOD.replace("image = \"localhost/web:1\"\n", "");
        let e = Deployment::from_toml_str(&src).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("image"), "{e}");
    }

    #[test]
    fn rejects_bad_values() {
        for (from, to, field) in [
            (
                "stopSignal = \"SIGINT\"",
                "stopSignal = \"TERM\"",
                "lifecycle.stopSignal",
            ),
            (
                "gracePeriodSecs = 5",
                "gracePeriodSecs = 99999",
                "lifecycle.gracePeriodSecs",
            ),
            (
                "image = \"localhost/web:1\"",
                "image = \"\"",
                "container.image",
            ),
            ("PORT = ", "\"1X\" = ", "container.env.1X"),
            ("timeoutSecs = 20", "timeoutSecs = 0", "init[1].timeoutSecs"),
            ("name = \"seed\"", "name = \"prepare\"", "init[1].name"),
        ] {
            let src = GOOD.replace(from, to);
            assert_ne!(src, GOOD, "{from}");
            let e = Deployment::from_toml_str(&src).unwrap_err();
            assert_eq!(e.field.as_deref(), Some(field), "{e}");
        }
    }

    #[test]
    fn garbage_and_oversize_are_errors_not_panics() {
        for src in [
            "\u{0}\u{1}garbage",
            "[[[",
            "name = ",
            "= 1",
            "apiVersion = 1",
        ] {
            assert!(Deployment::from_toml_str(src).is_err());
            assert!(Deployment::from_json_slice(src.as_bytes()).is_err());
        }
        let big = "#".repeat(MAX_MANIFEST_BYTES + 1);
        assert!(Deployment::from_toml_str(&big)
            .unwrap_err()
            .message
            .contains("limit"));
    }

    #[test]
    fn display_reads_like_a_compiler_message() {
        let e = Deployment::from_toml_str("apiVersion = \"fleet/v1\"\nbogus = 1\n")
            .unwrap_err()
            .with_source("/etc/fleet-agent/deployments.d/web.toml");
        assert_eq!(
            e.to_string(),
            "/etc/fleet-agent/deployments.d/web.toml: line 2, column 1: field `bogus`: unknown field `bogus`, expected one of `apiVersion`, `name`, `revision`, `container`, `lifecycle`, `init`"
        );
    }
}
