//! The only place that runs `podman`. Every call is a [`Call`]: options, then `--`, then
//! the positionals (image, names, the container's command), so no value can ever be read as an
//! option; an image or name that starts with `-`, and any NUL byte, is refused before podman
//! is spawned, naming the field. Errors name the operation and target, podman's exit code and
//! one capped line of its stderr with the call's secrets redacted, never the argv (it holds
//! env values). `--format json` output is decoded into the small serde structs of `types`,
//! never with `unwrap`, and a decode error gives a position, never the output.
//!
//! A call is not killed when its future is dropped (no `kill_on_drop`): a podman cut
//! mid-create leaves a container half in storage, half in its database. Only a call past its
//! own time limit is killed, explicitly.
//!
//! Why the CLI and not the libpod REST API: see the crate docs ("Runtime access").

mod containers;
mod exec;
mod images;
mod types;
mod volumes;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use fleet_contract::quote;
use tokio::io::AsyncReadExt;
use tokio::process::Command;

use crate::error::Error;

pub use containers::{create_args, run_args};
#[cfg(test)]
use images::check_auth_file;
pub use images::pinned_digest;
pub use types::{CreateSpec, HostOptions, PsEntry};
pub use volumes::VolumeEntry;

/// Longest stderr line kept in an error (characters; the whole message is capped again).
const STDERR_LINE: usize = 400;
/// Ceiling for calls that should return quickly (ps, inspect, create, start, rm).
const QUICK: Duration = Duration::from_secs(120);
/// Most bytes kept of a call's stdout and of its stderr.
const MAX_OUTPUT: u64 = 16 << 20;
/// Ceiling for a pull.
const PULL: Duration = Duration::from_secs(1800);
/// Shortest container argument treated as a secret.
const MIN_ARG_SECRET: usize = 4;
/// What replaces a secret in podman's stderr.
const REDACTED: &str = "<redacted>";

/// A podman CLI with the environment this module configured.
#[derive(Debug, Clone)]
pub struct Podman {
    bin: PathBuf,
    env: Vec<(OsString, OsString)>,
    auth_file: Option<PathBuf>,
}

/// One podman invocation: `podman <options> -- <names> <rest>`.
#[derive(Debug, Clone)]
pub(crate) struct Call {
    /// Operation and target for messages and logs: `podman create fleet-web`.
    what: String,
    /// Subcommand words and options.
    options: Vec<String>,
    /// Positionals that must not look like options: `(field, value)`.
    names: Vec<(String, String)>,
    /// Positionals after the names (the container's command), taken as they are.
    rest: Vec<String>,
    /// Values that must not appear in a message (env values, container arguments).
    secrets: Vec<String>,
    limit: Duration,
    /// Working directory of podman (and so of a conmon it starts); the agent's when `None`.
    cwd: Option<PathBuf>,
}

impl Call {
    /// `podman <words>`, e.g. `&["volume", "create"]`.
    pub(crate) fn new(words: &[&str]) -> Self {
        Self {
            what: format!("podman {}", words.join(" ")),
            options: words.iter().map(|w| (*w).to_owned()).collect(),
            names: Vec::new(),
            rest: Vec::new(),
            secrets: Vec::new(),
            limit: QUICK,
            cwd: None,
        }
    }

    /// Adds options (flags and their values).
    pub(crate) fn opts<I, S>(mut self, opts: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.options.extend(opts.into_iter().map(Into::into));
        self
    }

    /// Names the target in messages without adding an argument (e.g. `--name`'s value).
    pub(crate) fn target(mut self, target: &str) -> Self {
        self.what.push(' ');
        self.what.push_str(&short(target));
        self
    }

    /// A positional image or name, refused when it would look like an option.
    pub(crate) fn name(mut self, field: &str, value: &str) -> Self {
        if self.names.is_empty() {
            self = self.target(value);
        }
        self.names.push((field.to_owned(), value.to_owned()));
        self
    }

    /// Trailing positionals (the container's command): kept out of every message (see
    /// [`command_secrets`]).
    pub(crate) fn rest(mut self, rest: &[String]) -> Self {
        self.rest.extend(rest.iter().cloned());
        self.secrets.extend(command_secrets(rest));
        self
    }

    /// Values redacted from podman's stderr.
    pub(crate) fn secrets<I: IntoIterator<Item = String>>(mut self, secrets: I) -> Self {
        self.secrets.extend(secrets);
        self
    }

    /// Runs podman in `dir` (see [`CreateSpec::conmon_dir`]).
    pub(crate) fn cwd(mut self, dir: Option<&Path>) -> Self {
        self.cwd = dir.map(Path::to_owned);
        self
    }

    /// A time limit other than [`QUICK`].
    pub(crate) fn limit(mut self, limit: Duration) -> Self {
        self.limit = limit;
        self
    }

    /// The argv after the binary, checked: no NUL anywhere, no name that starts with `-`.
    pub(crate) fn argv(&self) -> Result<Vec<String>, Error> {
        let refused = |field: String, reason: &str| Error::Refused {
            field,
            reason: reason.to_owned(),
        };
        if self.options.iter().any(|o| o.contains('\0')) {
            return Err(refused(
                format!("an option of `{}`", self.what),
                "contains a NUL byte",
            ));
        }
        for (field, value) in &self.names {
            check_name(field, value)?;
        }
        if let Some(i) = self.rest.iter().position(|a| a.contains('\0')) {
            return Err(refused(
                format!("argument {i} of `{}`", self.what),
                "contains a NUL byte",
            ));
        }
        let mut argv = self.options.clone();
        argv.push("--".to_owned());
        argv.extend(self.names.iter().map(|(_, v)| v.clone()));
        argv.extend(self.rest.iter().cloned());
        Ok(argv)
    }

    /// podman's error line: the first `Error:` line (podman prints warnings before it), else
    /// the first non-empty line; secrets redacted, cut to [`STDERR_LINE`] bytes.
    fn error_line(&self, stderr: &str) -> String {
        let lines = || stderr.lines().map(str::trim).filter(|l| !l.is_empty());
        let line = lines()
            .find(|l| l.starts_with("Error:"))
            .or_else(|| lines().next())
            .unwrap_or("(no error output)");
        let line = redact(line, &self.secrets);
        let line = truncate(&line, STDERR_LINE);
        fleet_contract::cap_message(line)
    }
}

/// A positional (image, name) podman could misread: a NUL byte, empty, or a leading `-`.
pub(crate) fn check_name(field: &str, value: &str) -> Result<(), Error> {
    let refused = |reason: String| Error::Refused {
        field: field.to_owned(),
        reason,
    };
    if value.contains('\0') {
        return Err(refused("contains a NUL byte".into()));
    }
    if value.is_empty() {
        return Err(refused("is empty".into()));
    }
    if value.starts_with('-') {
        return Err(refused(format!(
            "{} starts with '-' and would be read as an option",
            quote(value)
        )));
    }
    Ok(())
}

/// `value` as it is when it is short and plain (a container or volume name, an image), else
/// quoted with [`quote`] (a prefix and its length): a hostile value never makes a long message.
pub(crate) fn short(value: &str) -> String {
    let plain = value.chars().count() <= 64 && !value.chars().any(char::is_control);
    if plain {
        value.to_owned()
    } else {
        quote(value)
    }
}

/// The container arguments redacted from podman's messages: those of at least
/// [`MIN_ARG_SECRET`] characters. Shorter ones (`sh`, `-c`) cannot hold a secret worth the
/// name, and redacting them would garble every message they occur in as a substring. Env
/// values are redacted whatever their length.
pub(crate) fn command_secrets(args: &[String]) -> impl Iterator<Item = String> + '_ {
    args.iter()
        .filter(|a| a.chars().count() >= MIN_ARG_SECRET)
        .cloned()
}

/// `text` with every occurrence of every non-empty secret replaced, longest first (so a
/// secret containing another is not left half visible).
pub(crate) fn redact(text: &str, secrets: &[String]) -> String {
    let mut secrets: Vec<&str> = secrets
        .iter()
        .map(String::as_str)
        .filter(|s| !s.is_empty())
        .collect();
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    let mut out = text.to_owned();
    for s in secrets {
        if out.contains(s) {
            out = out.replace(s, REDACTED);
        }
    }
    out
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

    fn command(&self, argv: &[String]) -> Command {
        let mut cmd = Command::new(&self.bin);
        // Under systemd the agent's NOTIFY_SOCKET is the service's: podman seeing it would
        // act on it (send MAINPID/READY for conmon, or proxy it into the container and wait
        // for the container's READY, which a `run --detach` then hangs on while holding the
        // container's lock). It is the agent's alone.
        cmd.args(argv)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env_remove("NOTIFY_SOCKET")
            .stdin(Stdio::null());
        cmd
    }

    /// Runs `call` to completion within its limit; stdout and stderr on success. Past the
    /// limit the child is killed; a dropped future leaves it running to completion.
    pub(crate) async fn output(&self, call: &Call) -> Result<(String, String), Error> {
        let argv = call.argv()?;
        tracing::debug!(call = %call.what, "podman");
        let spawn = |source| Error::Spawn {
            what: call.what.clone(),
            source,
        };
        let mut cmd = self.command(&argv);
        if let Some(dir) = &call.cwd {
            cmd.current_dir(dir);
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(spawn)?;
        let mut stdout = child.stdout.take();
        let mut stderr = child.stderr.take();
        let collect = async {
            let mut out = Vec::new();
            let mut err = Vec::new();
            let read_out = async {
                if let Some(s) = stdout.as_mut() {
                    keep(s, &mut out).await;
                }
            };
            let read_err = async {
                if let Some(s) = stderr.as_mut() {
                    keep(s, &mut err).await;
                }
            };
            let ((), (), status) = tokio::join!(read_out, read_err, child.wait());
            (status, out, err)
        };
        let (status, out, err) = match tokio::time::timeout(call.limit, collect).await {
            Ok(r) => r,
            Err(_) => {
                let _ = child.start_kill();
                let _ = child.wait().await;
                return Err(Error::Timeout {
                    what: call.what.clone(),
                    secs: call.limit.as_secs(),
                });
            }
        };
        let status = status.map_err(spawn)?;
        let err = String::from_utf8_lossy(&err).into_owned();
        if status.success() {
            Ok((String::from_utf8_lossy(&out).into_owned(), err))
        } else {
            Err(Error::Command {
                what: call.what.clone(),
                code: status.code(),
                stderr: call.error_line(&err),
            })
        }
    }

    /// Runs `call`; stdout on success.
    pub(crate) async fn run(&self, call: &Call) -> Result<String, Error> {
        self.output(call).await.map(|(out, _)| out)
    }

    fn decode<T: serde::de::DeserializeOwned>(&self, call: &Call, out: &str) -> Result<T, Error> {
        serde_json::from_str(out).map_err(|e| Error::Decode {
            what: call.what.clone(),
            message: json_error(&e, out.len()),
        })
    }

    /// `podman version`, for the probe.
    pub async fn version(&self) -> Result<String, Error> {
        let call = Call::new(&["version"]).opts(["--format", "{{.Client.Version}}"]);
        Ok(self.run(&call).await?.trim().to_owned())
    }
}

/// Reads `from` to its end, keeping the first [`MAX_OUTPUT`] bytes in `into` (a command in
/// a container, `podman exec`, may print without end): the rest is drained unkept, so the
/// child never blocks on a full pipe.
async fn keep(from: &mut (dyn tokio::io::AsyncRead + Unpin + Send), into: &mut Vec<u8>) {
    let mut head = from.take(MAX_OUTPUT);
    let _ = head.read_to_end(into).await;
    let _ = tokio::io::copy(head.into_inner(), &mut tokio::io::sink()).await;
}

/// A JSON error by kind and position only: serde's own message may quote the value.
pub(crate) fn json_error(e: &serde_json::Error, len: usize) -> String {
    format!(
        "{:?} error at line {} column {} of {len} bytes",
        e.classify(),
        e.line(),
        e.column()
    )
}

/// The first `max` characters of `s`.
fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests;
