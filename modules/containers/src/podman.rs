//! The only place that runs `podman`. Every call goes through [`Podman::run`], which records
//! the shell-escaped command and the tail of its stderr in the error, kills the child if the
//! future is dropped (`kill_on_drop`) and decodes `--format json` output into the small serde
//! structs below, never with `unwrap`.
//!
//! Why the CLI and not the libpod REST API: see the crate docs ("Runtime access").

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde::Deserialize;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

use crate::error::Error;

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

/// One container as `podman ps -a --format json` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct PsEntry {
    /// Full container id.
    #[serde(rename = "Id")]
    pub id: String,
    /// Names (podman gives exactly one).
    #[serde(rename = "Names", default)]
    pub names: Vec<String>,
    /// `created`, `running`, `exited`, `stopping`, `paused`, ...
    #[serde(rename = "State", default)]
    pub state: String,
    /// Exit code of the last run (0 while it never exited).
    #[serde(rename = "ExitCode", default)]
    pub exit_code: i32,
    /// Unix seconds of the last start.
    #[serde(rename = "StartedAt", default)]
    pub started_at: i64,
    /// Unix seconds of the last exit (negative when it never exited).
    #[serde(rename = "ExitedAt", default)]
    pub exited_at: i64,
    /// Image id.
    #[serde(rename = "ImageID", default)]
    pub image_id: String,
    /// Labels.
    #[serde(rename = "Labels", default)]
    pub labels: Option<BTreeMap<String, String>>,
}

impl PsEntry {
    /// The container's name.
    pub fn name(&self) -> &str {
        self.names.first().map_or(self.id.as_str(), String::as_str)
    }

    /// A label's value.
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels.as_ref()?.get(key).map(String::as_str)
    }
}

#[derive(Debug, Deserialize)]
struct ImageInspect {
    #[serde(rename = "Digest", default)]
    digest: String,
}

/// One line of `podman events --format json`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Event {
    /// `container`, `image`, `volume`, ...
    #[serde(rename = "Type", default)]
    pub kind: String,
    /// `create`, `start`, `died`, `remove`, ...
    #[serde(rename = "Status", default)]
    pub status: String,
    /// Container name.
    #[serde(rename = "Name", default)]
    pub name: String,
    /// Labels (and podman's own attributes).
    #[serde(rename = "Attributes", default)]
    pub attributes: Option<BTreeMap<String, String>>,
}

impl Event {
    /// Decodes one event line.
    pub fn parse(line: &str) -> Result<Event, Error> {
        serde_json::from_str(line).map_err(|e| Error::Decode {
            command: "podman events --format json".into(),
            message: format!("{e} in {:?}", truncate(line, 200)),
        })
    }

    /// A label's value.
    pub fn label(&self, key: &str) -> Option<&str> {
        self.attributes.as_ref()?.get(key).map(String::as_str)
    }
}

/// What to create: the main container of a deployment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateSpec {
    /// Container name.
    pub name: String,
    /// Image reference.
    pub image: String,
    /// Command; the image's default when empty.
    pub command: Vec<String>,
    /// Environment.
    pub env: BTreeMap<String, String>,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// `(volume, mount point)` pairs.
    pub volumes: Vec<(String, String)>,
    /// Signal `podman stop` sends first.
    pub stop_signal: String,
    /// Seconds `podman stop` waits before SIGKILL.
    pub stop_timeout: u32,
}

/// A running `podman events` process; killed when dropped.
pub struct EventStream {
    lines: Lines<BufReader<ChildStdout>>,
    // Held so the process is killed on drop.
    _child: Child,
}

impl EventStream {
    /// The next event; `Ok(None)` when podman ended the stream.
    pub async fn next(&mut self) -> Result<Option<Event>, Error> {
        loop {
            let line = self
                .lines
                .next_line()
                .await
                .map_err(|source| Error::Spawn {
                    command: "podman events".into(),
                    source,
                })?;
            match line {
                None => return Ok(None),
                Some(l) if l.trim().is_empty() => continue,
                Some(l) => return Event::parse(&l).map(Some),
            }
        }
    }
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

    /// Every container (any state) carrying `label` (`key=value`).
    pub async fn list(&self, label: &str) -> Result<Vec<PsEntry>, Error> {
        let filter = format!("label={label}");
        let args = ["ps", "-a", "--format", "json", "--filter", &filter];
        let out = self.run(&args).await?;
        if out.trim().is_empty() {
            return Ok(Vec::new());
        }
        self.decode(&args, &out)
    }

    /// Is `image` present in local storage?
    pub async fn image_exists(&self, image: &str) -> Result<bool, Error> {
        match self.run(&["image", "exists", image]).await {
            Ok(_) => Ok(true),
            Err(Error::Command { status, .. }) if status.ends_with("exit status: 1") => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Pulls `image`, with the configured credentials.
    pub async fn pull(&self, image: &str) -> Result<(), Error> {
        let mut args = vec!["pull", "--quiet"];
        let auth;
        if let Some(path) = &self.auth_file {
            check_auth_file(path)?;
            auth = path.to_string_lossy().into_owned();
            args.extend(["--authfile", &auth]);
        }
        args.push(image);
        match self.run_within(&args, PULL).await {
            Ok(_) => Ok(()),
            Err(e) => Err(Error::Pull {
                image: image.to_owned(),
                message: e.detail().replace('\n', " | "),
            }),
        }
    }

    /// The repo digest of a local image (`sha256:...`), if it has one.
    pub async fn image_digest(&self, image: &str) -> Result<Option<String>, Error> {
        let args = ["image", "inspect", "--format", "json", image];
        let out = self.run(&args).await?;
        let images: Vec<ImageInspect> = self.decode(&args, &out)?;
        Ok(images
            .into_iter()
            .next()
            .map(|i| i.digest)
            .filter(|d| !d.is_empty()))
    }

    /// Creates a named volume unless it exists.
    pub async fn volume_ensure(
        &self,
        name: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<(), Error> {
        if self.run(&["volume", "exists", name]).await.is_ok() {
            return Ok(());
        }
        let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let mut args = vec!["volume", "create"];
        for l in &labels {
            args.extend(["--label", l]);
        }
        args.push(name);
        match self.run(&args).await {
            Ok(_) => Ok(()),
            // Lost a race with a concurrent creation: fine.
            Err(_) if self.run(&["volume", "exists", name]).await.is_ok() => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Removes a volume; a missing one is not an error.
    pub async fn volume_rm(&self, name: &str) -> Result<(), Error> {
        if self.run(&["volume", "exists", name]).await.is_err() {
            return Ok(());
        }
        self.run(&["volume", "rm", "-f", name]).await.map(drop)
    }

    /// Creates (does not start) a container; returns its id.
    pub async fn create(&self, spec: &CreateSpec) -> Result<String, Error> {
        let owned = create_args(spec);
        let args: Vec<&str> = owned.iter().map(String::as_str).collect();
        Ok(self.run(&args).await?.trim().to_owned())
    }

    /// Starts a created or exited container.
    pub async fn start(&self, name: &str) -> Result<(), Error> {
        self.run(&["start", name]).await.map(drop)
    }

    /// Stops a container the way it was created to be stopped: its stop signal, then
    /// SIGKILL after its stop timeout. A container that is not running is fine.
    pub async fn stop(&self, name: &str, grace: u32) -> Result<(), Error> {
        let limit = QUICK + Duration::from_secs(u64::from(grace));
        self.run_within(&["stop", "--ignore", name], limit)
            .await
            .map(drop)
    }

    /// Removes a container (killing it if it still runs); a missing one is fine.
    pub async fn rm(&self, name: &str) -> Result<(), Error> {
        self.run(&["rm", "--force", "--ignore", "--time", "0", name])
            .await
            .map(drop)
    }

    /// Waits for a container to exit; `Ok(None)` when `limit` passes first.
    pub async fn wait(&self, name: &str, limit: Duration) -> Result<Option<i32>, Error> {
        let args = ["wait", name];
        match self.run_within(&args, limit).await {
            Ok(out) => out.trim().parse().map(Some).map_err(|e| Error::Decode {
                command: self.describe(&args),
                message: format!("exit code {:?}: {e}", out.trim()),
            }),
            Err(Error::Timeout { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The last `n` lines a container logged (stdout and stderr).
    pub async fn logs(&self, name: &str, n: usize) -> Result<Vec<String>, Error> {
        let n = n.to_string();
        let args = ["logs", "--tail", &n, name];
        let command = self.describe(&args);
        let out = tokio::time::timeout(
            QUICK,
            self.command(&args)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .output(),
        )
        .await
        .map_err(|_| Error::Timeout {
            command: command.clone(),
            secs: QUICK.as_secs(),
        })?
        .map_err(|source| Error::Spawn {
            command: command.clone(),
            source,
        })?;
        if !out.status.success() {
            return Err(Error::Command {
                command,
                status: out.status.to_string(),
                stderr: tail(&String::from_utf8_lossy(&out.stderr), STDERR_TAIL),
            });
        }
        // Container stderr comes back on podman's stderr; order between the two is lost.
        let mut lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .chain(String::from_utf8_lossy(&out.stderr).lines())
            .map(str::to_owned)
            .collect();
        let keep = lines.len().saturating_sub(n.parse().unwrap_or(usize::MAX));
        lines.drain(..keep);
        Ok(lines)
    }

    /// Starts `podman events` for containers carrying `label`, as a stream of decoded events.
    pub fn events(&self, label: &str) -> Result<EventStream, Error> {
        let filter = format!("label={label}");
        let args = [
            "events",
            "--format",
            "json",
            "--filter",
            "type=container",
            "--filter",
            &filter,
        ];
        let command = self.describe(&args);
        let mut child = self
            .command(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|source| Error::Spawn {
                command: command.clone(),
                source,
            })?;
        let stdout = child.stdout.take().ok_or_else(|| Error::Decode {
            command,
            message: "no stdout pipe".into(),
        })?;
        Ok(EventStream {
            lines: BufReader::new(stdout).lines(),
            _child: child,
        })
    }
}

/// `podman create` arguments for `spec` (pure, unit-tested).
pub fn create_args(spec: &CreateSpec) -> Vec<String> {
    let mut a: Vec<String> = vec![
        "create".into(),
        "--name".into(),
        spec.name.clone(),
        "--stop-signal".into(),
        spec.stop_signal.clone(),
        "--stop-timeout".into(),
        spec.stop_timeout.to_string(),
        // The agent restarts containers itself (with backoff); podman must not.
        "--restart".into(),
        "no".into(),
    ];
    for (k, v) in &spec.labels {
        a.push("--label".into());
        a.push(format!("{k}={v}"));
    }
    for (k, v) in &spec.env {
        a.push("--env".into());
        a.push(format!("{k}={v}"));
    }
    for (vol, at) in &spec.volumes {
        a.push("--volume".into());
        a.push(format!("{vol}:{at}"));
    }
    a.push(spec.image.clone());
    a.extend(spec.command.iter().cloned());
    a
}

/// Refuses credentials that are not root-only (they are registry passwords).
fn check_auth_file(path: &Path) -> Result<(), Error> {
    use std::os::unix::fs::MetadataExt;
    let bad = |message: String| Error::AuthFile {
        path: path.display().to_string(),
        message,
    };
    let meta = std::fs::metadata(path).map_err(|e| bad(e.to_string()))?;
    if meta.uid() != 0 {
        return Err(bad(format!("owned by uid {}, not root", meta.uid())));
    }
    if meta.mode() & 0o077 != 0 {
        return Err(bad(format!(
            "mode {:o} lets others read it; chmod 600",
            meta.mode() & 0o777
        )));
    }
    Ok(())
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
