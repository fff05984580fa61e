//! Container calls: list, run, create, start, stop, rm, wait, logs; and the storage-level
//! calls that repair a container a killed podman left half-made.

use std::time::Duration;

use fleet_contract::quote;

use super::{check_name, Call, CreateSpec, Podman, PsEntry, QUICK};
use crate::error::Error;

impl Podman {
    /// Every container (any state) carrying `label` (`key=value`).
    pub async fn list(&self, label: &str) -> Result<Vec<PsEntry>, Error> {
        let call = Call::new(&["ps"])
            .opts(["-a".to_owned(), "--format=json".to_owned()])
            .opts([format!("--filter=label={label}")]);
        let out = self.run(&call).await?;
        if out.trim().is_empty() {
            return Ok(Vec::new());
        }
        self.decode(&call, &out)
    }

    /// Creates (does not start) a container; returns its id. Refuses, naming the field, a
    /// spec podman would misread (see [`create_call`]).
    pub async fn create(&self, spec: &CreateSpec) -> Result<String, Error> {
        let call = create_call(spec)?;
        Ok(self.run(&call).await?.trim().to_owned())
    }

    /// Creates and starts a container in one call (`podman run --detach`, never pulling:
    /// pulls go through [`Podman::pull`] with the configured credentials); returns its id.
    /// A start that fails leaves the container created, as `create` then `start` would.
    pub async fn run_detached(&self, spec: &CreateSpec) -> Result<String, Error> {
        let call = run_call(spec)?;
        Ok(self.run(&call).await?.trim().to_owned())
    }

    /// Starts a created or exited container; `secrets` (its env values and arguments) are
    /// redacted from podman's error, which may quote the command it could not run.
    pub async fn start(&self, name: &str, secrets: &[String]) -> Result<(), Error> {
        let call = Call::new(&["start"])
            .name("container", name)
            .secrets(secrets.iter().cloned());
        self.run(&call).await.map(drop)
    }

    /// Stops a container the way it was created to be stopped: its stop signal, then
    /// SIGKILL after its stop timeout. A container that is not running is fine.
    pub async fn stop(&self, name: &str, grace: u32) -> Result<(), Error> {
        let call = Call::new(&["stop"])
            .opts(["--ignore"])
            .name("container", name)
            .limit(QUICK + Duration::from_secs(u64::from(grace)));
        self.run(&call).await.map(drop)
    }

    /// Removes a container (killing it if it still runs); a missing one is fine.
    pub async fn rm(&self, name: &str) -> Result<(), Error> {
        let call = Call::new(&["rm"])
            .opts(["--force", "--ignore", "--time", "0"])
            .name("container", name);
        self.run(&call).await.map(drop)
    }

    /// Is there a container `name` in podman's database?
    pub async fn exists(&self, name: &str) -> Result<bool, Error> {
        let call = Call::new(&["container", "exists"]).name("container", name);
        match self.run(&call).await {
            Ok(_) => Ok(true),
            Err(Error::Command { code: Some(1), .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Is `name` a storage-only container: in containers/storage (`podman ps --external`)
    /// but unknown to podman's database? A podman killed mid-create leaves one; it holds
    /// the name, so every later create fails with "the container name … is already in use".
    pub async fn storage_only(&self, name: &str) -> Result<bool, Error> {
        if self.exists(name).await? {
            return Ok(false);
        }
        let call = Call::new(&["container", "exists"])
            .opts(["--external"])
            .name("container", name);
        match self.run(&call).await {
            Ok(_) => Ok(true),
            Err(Error::Command { code: Some(1), .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Removes a storage-only container (`podman rm --storage`).
    pub async fn rm_storage(&self, name: &str) -> Result<(), Error> {
        let call = Call::new(&["rm"])
            .opts(["--storage"])
            .name("container", name);
        self.run(&call).await.map(drop)
    }

    /// The container's state as podman's database has it now (`created`, `running`, ...);
    /// `None` when there is no such container.
    pub async fn state(&self, name: &str) -> Result<Option<String>, Error> {
        if !self.exists(name).await? {
            return Ok(None);
        }
        let call = Call::new(&["container", "inspect"])
            .opts(["--format", "{{.State.Status}}"])
            .name("container", name);
        Ok(Some(self.run(&call).await?.trim().to_owned()))
    }

    /// Waits for a container to exit; `Ok(None)` when `limit` passes first.
    pub async fn wait(&self, name: &str, limit: Duration) -> Result<Option<i32>, Error> {
        let call = Call::new(&["wait"]).name("container", name).limit(limit);
        match self.run(&call).await {
            Ok(out) => out.trim().parse().map(Some).map_err(|e| Error::Decode {
                what: call.what.clone(),
                message: format!("exit code {}: {e}", quote(out.trim())),
            }),
            Err(Error::Timeout { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The last `n` lines a container logged (stdout and stderr).
    pub async fn logs(&self, name: &str, n: usize) -> Result<Vec<String>, Error> {
        let call = Call::new(&["logs"])
            .opts(["--tail".to_owned(), n.to_string()])
            .name("container", name);
        let (out, err) = self.output(&call).await?;
        // Container stderr comes back on podman's stderr; order between the two is lost.
        let mut lines: Vec<String> = out.lines().chain(err.lines()).map(str::to_owned).collect();
        let keep = lines.len().saturating_sub(n);
        lines.drain(..keep);
        Ok(lines)
    }
}

/// The `podman create` call for `spec` (see [`container_call`]).
pub(crate) fn create_call(spec: &CreateSpec) -> Result<Call, Error> {
    container_call("create", &[], spec)
}

/// The `podman run --detach --pull=never` call for `spec` (see [`container_call`]).
pub(crate) fn run_call(spec: &CreateSpec) -> Result<Call, Error> {
    container_call("run", &["--detach", "--pull=never"], spec)
}

/// `podman <verb> <flags> <options> -- <image> <command>` for `spec`. Refused before podman runs,
/// naming the field: an image that starts with `-` or is empty, a NUL byte in any value, an
/// env key that is empty or holds `=`. Env values and the command are secrets: they never
/// appear in a message.
fn container_call(verb: &str, flags: &[&str], spec: &CreateSpec) -> Result<Call, Error> {
    let refused = |field: String, reason: &str| Error::Refused {
        field,
        reason: reason.to_owned(),
    };
    // The image first: a refused reference is named before any other field.
    check_name("container.image", &spec.image)?;
    for (i, a) in spec.command.iter().enumerate() {
        if a.contains('\0') {
            return Err(refused(
                format!("container.command[{i}]"),
                "contains a NUL byte",
            ));
        }
    }
    for (k, v) in &spec.env {
        let field = || format!("container.env.{}", quote(k));
        if k.is_empty() || k.contains('=') || k.contains('\0') {
            return Err(refused(
                field(),
                "is not a usable variable name (empty, '=' or NUL)",
            ));
        }
        if v.contains('\0') {
            return Err(refused(field(), "value contains a NUL byte"));
        }
    }
    for (k, v) in &spec.labels {
        if k.contains('\0') || v.contains('\0') {
            return Err(refused(
                format!("label {}", quote(k)),
                "contains a NUL byte",
            ));
        }
    }
    // `--flag=value`, one argument each: no value can be taken for a flag of its own.
    let mut opts: Vec<String> = vec![
        format!("--name={}", spec.name),
        format!("--stop-signal={}", spec.stop_signal),
        format!("--stop-timeout={}", spec.stop_timeout),
        // The agent restarts containers itself (with backoff); podman must not.
        "--restart=no".into(),
    ];
    opts.extend(spec.labels.iter().map(|(k, v)| format!("--label={k}={v}")));
    opts.extend(spec.env.iter().map(|(k, v)| format!("--env={k}={v}")));
    opts.extend(
        spec.volumes
            .iter()
            .map(|(vol, at)| format!("--volume={vol}:{at}")),
    );
    Ok(Call::new(&[verb])
        .opts(flags.iter().copied())
        .target(&spec.name)
        .opts(opts)
        .name("container.image", &spec.image)
        .rest(&spec.command)
        .secrets(spec.env.values().cloned()))
}

/// `podman create` arguments for `spec` (pure, unit-tested): options, `--`, image, command.
pub fn create_args(spec: &CreateSpec) -> Result<Vec<String>, Error> {
    create_call(spec)?.argv()
}

/// `podman run --detach` arguments for `spec` (pure, unit-tested), as [`create_args`].
pub fn run_args(spec: &CreateSpec) -> Result<Vec<String>, Error> {
    run_call(spec)?.argv()
}
