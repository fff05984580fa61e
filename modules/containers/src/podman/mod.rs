//! The only place that runs `podman`. Every call goes through [`Podman::run`], which records
//! the shell-escaped command and the tail of its stderr in the error, kills the child if the
//! future is dropped (`kill_on_drop`) and decodes `--format json` output into the small serde
//! structs below, never with `unwrap`.
//!
//! Why the CLI and not the libpod REST API: see the crate docs ("Runtime access").

mod containers;
mod images;
mod types;
mod volumes;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;

use crate::error::Error;

pub use containers::create_args;
#[cfg(test)]
use images::check_auth_file;
pub use types::{CreateSpec, Event, EventStream, PsEntry};

/// Lines of stderr kept in an error.
const STDERR_TAIL: usize = 8;
/// Ceiling for calls that should return quickly (ps, inspect, create, start, rm).
const QUICK: Duration = Duration::from_secs(120);
/// Ceiling for a pull.
const PULL: Duration = Duration::from_secs(1800);

/// A podman CLI with the environment this module configured.
#[derive(Debug, Clone)]
pub struct Podman {
    bin: PathBuf,
    env: Vec<(OsString, OsString)>,
    auth_file: Option<PathBuf>,
}

impl Podman {
    /// A CLI at `bin`, with `registries_conf` exported as `CONTAINERS_REGISTRIES_CONF` and
    /// `auth_file` used for pulls.
    pub fn new(bin: &Path, registries_conf: Option<&Path>, auth_file: Option<&Path>) -> Self {
        let mut env = Vec::new();
        if let Some(conf) = registries_conf {
            env.push((
                OsString::from("CONTAINERS_REGISTRIES_CONF"),
                conf.as_os_str().to_owned(),
            ));
        }
        Self {
            bin: bin.to_owned(),
            env,
            auth_file: auth_file.map(Path::to_owned),
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .kill_on_drop(true);
        cmd
    }

    fn describe(&self, args: &[&str]) -> String {
        let mut out = shell_quote(&self.bin.to_string_lossy());
        for a in args {
            out.push(' ');
            out.push_str(&shell_quote(a));
        }
        out
    }

    /// Runs `podman <args>` to completion within `limit`; stdout on success.
    async fn run_within(&self, args: &[&str], limit: Duration) -> Result<String, Error> {
        let command = self.describe(args);
        tracing::debug!(%command, "podman");
        let child = self
            .command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| Error::Spawn {
                command: command.clone(),
                source,
            })?;
        let out = match tokio::time::timeout(limit, child.wait_with_output()).await {
            Ok(r) => r.map_err(|source| Error::Spawn {
                command: command.clone(),
                source,
            })?,
            Err(_) => {
                return Err(Error::Timeout {
                    command,
                    secs: limit.as_secs(),
                })
            }
        };
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(Error::Command {
                command,
                status: out.status.to_string(),
                stderr: tail(&String::from_utf8_lossy(&out.stderr), STDERR_TAIL),
            })
        }
    }

    async fn run(&self, args: &[&str]) -> Result<String, Error> {
        self.run_within(args, QUICK).await
    }

    fn decode<T: serde::de::DeserializeOwned>(&self, args: &[&str], out: &str) -> Result<T, Error> {
        serde_json::from_str(out).map_err(|e| Error::Decode {
            command: self.describe(args),
            message: format!("{e} in {:?}", truncate(out, 200)),
        })
    }

    /// `podman version`, for the probe.
    pub async fn version(&self) -> Result<String, Error> {
        let out = self
            .run(&["version", "--format", "{{.Client.Version}}"])
            .await?;
        Ok(out.trim().to_owned())
    }
}

/// The last `n` non-empty lines of `text`, joined with newlines.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// Quotes `s` for a shell when it needs it (for error messages and logs only).
fn shell_quote(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=,@%+".contains(c));
    if plain {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_ps_json_of_podman_4_3() {
        let out = r#"[{"AutoRemove":false,"Command":["sleep","100"],"CreatedAt":"now",
            "Exited":false,"ExitedAt":-62135596800,"ExitCode":0,"Id":"032d","Image":"i",
            "ImageID":"3949","IsInfra":false,"Labels":{"fleet.deployment":"web"},"Mounts":[],
            "Names":["fleet-web"],"Namespaces":{},"Networks":["podman"],"Pid":20476,"Pod":"",
            "PodName":"","Ports":null,"Size":null,"StartedAt":1795465238,"State":"running",
            "Status":"Up","Created":1795465238}]"#;
        let ps: Vec<PsEntry> = serde_json::from_str(out).unwrap();
        assert_eq!(ps[0].name(), "fleet-web");
        assert_eq!(ps[0].state, "running");
        assert_eq!(ps[0].label("fleet.deployment"), Some("web"));
        assert_eq!(ps[0].exited_at, -62_135_596_800);
        // Labels may be null.
        let ps: Vec<PsEntry> =
            serde_json::from_str(r#"[{"Id":"x","Names":["n"],"Labels":null}]"#).unwrap();
        assert_eq!(ps[0].label("a"), None);
    }

    #[test]
    fn decodes_events_and_names_bad_lines() {
        let e = Event::parse(
            r#"{"ContainerExitCode":137,"ID":"03","Image":"i","Name":"pe1","Status":"died","Time":"t","Type":"container","Attributes":{"fleet.deployment":"web"}}"#,
        )
        .unwrap();
        assert_eq!((e.kind.as_str(), e.status.as_str()), ("container", "died"));
        assert_eq!(e.label("fleet.deployment"), Some("web"));
        let err = Event::parse("not json").unwrap_err().to_string();
        assert!(err.contains("podman events"), "{err}");
        assert!(err.contains("not json"), "{err}");
    }

    #[test]
    fn create_args_carry_lifecycle_labels_env_and_volume() {
        let spec = CreateSpec {
            name: "fleet-web".into(),
            image: "img:1".into(),
            command: vec!["sh".into(), "-c".into(), "echo hi".into()],
            env: [("A".to_owned(), "b c".to_owned())].into(),
            labels: [("fleet.deployment".to_owned(), "web".to_owned())].into(),
            volumes: vec![("fleet-web-data".into(), "/data".into())],
            stop_signal: "SIGINT".into(),
            stop_timeout: 7,
        };
        let a = create_args(&spec).join(" ");
        assert_eq!(
            a,
            "create --name fleet-web --stop-signal SIGINT --stop-timeout 7 --restart no \
             --label fleet.deployment=web --env A=b c --volume fleet-web-data:/data img:1 sh -c echo hi"
        );
    }

    #[test]
    fn errors_quote_the_command_and_keep_the_stderr_tail() {
        let p = Podman::new(Path::new("podman"), None, None);
        assert_eq!(
            p.describe(&["run", "a b", "it's"]),
            r"podman run 'a b' 'it'\''s'"
        );
        let text = (1..=20).map(|i| format!("line {i}\n")).collect::<String>();
        assert_eq!(tail(&text, 2), "line 19\nline 20");
    }

    #[tokio::test]
    async fn a_missing_binary_is_named() {
        let p = Podman::new(Path::new("/nonexistent/podman"), None, None);
        let err = p.version().await.unwrap_err().to_string();
        assert!(err.contains("/nonexistent/podman version"), "{err}");
    }

    #[test]
    fn auth_file_must_be_root_only() {
        let dir = std::env::temp_dir().join(format!("fleet-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("auth.json");
        std::fs::write(&f, "{}").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = check_auth_file(&f).unwrap_err().to_string();
        assert!(
            err.contains("chmod 600") || err.contains("not root"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
