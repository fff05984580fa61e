//! Container calls: list, create, start, stop, rm, wait, logs, events.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};

use super::{tail, CreateSpec, EventStream, Podman, PsEntry, QUICK, STDERR_TAIL};
use crate::error::Error;

impl Podman {
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
