//! What the health probes ask of podman: a command run in a container (`podman exec`) and
//! the container's address on its network.

use std::net::IpAddr;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncReadExt;

use super::{Call, Podman};
use crate::error::Error;

/// Most bytes of a probe command's stderr read (its stdout is not read at all).
const EXEC_STDERR: u64 = 8192;

impl Podman {
    /// Runs `command` in the running container `name` within `limit`; the command's exit
    /// code. podman's own failures (exit 125: no such container, 126: cannot be run, 127:
    /// not found) are errors with podman's error line, the command's arguments redacted.
    /// The command's stdout goes to /dev/null and at most 8 KiB of its stderr is kept, so a
    /// chatty probe costs the agent no memory. Past `limit` podman is killed.
    pub async fn exec(
        &self,
        name: &str,
        command: &[String],
        limit: Duration,
    ) -> Result<i32, Error> {
        let call = Call::new(&["exec"])
            .name("container", name)
            .rest(command)
            .limit(limit);
        let argv = call.argv()?;
        let spawn = |source| Error::Spawn {
            what: call.what.clone(),
            source,
        };
        let mut child = self
            .command(&argv)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(spawn)?;
        let stderr = child.stderr.take();
        let run = async {
            let mut err = Vec::new();
            if let Some(s) = stderr {
                // Past the cap the rest is drained unkept, so podman never blocks on the pipe.
                let mut head = s.take(EXEC_STDERR);
                let _ = head.read_to_end(&mut err).await;
                let _ = tokio::io::copy(&mut head.into_inner(), &mut tokio::io::sink()).await;
            }
            (child.wait().await, err)
        };
        let (status, err) = match tokio::time::timeout(limit, run).await {
            Ok(r) => r,
            Err(_) => {
                let _ = child.start_kill();
                let _ = child.wait().await;
                return Err(Error::Timeout {
                    what: call.what.clone(),
                    secs: limit.as_secs(),
                });
            }
        };
        let status = status.map_err(spawn)?;
        match status.code() {
            Some(0) => Ok(0),
            Some(code) if !(125..=127).contains(&code) => Ok(code),
            code => Err(Error::Command {
                what: call.what.clone(),
                code,
                stderr: call.error_line(&String::from_utf8_lossy(&err)),
            }),
        }
    }

    /// The address of container `name` on its network: `.NetworkSettings.IPAddress`, else
    /// the first of its networks' that parses; `None` when it has none (not running, no
    /// network).
    pub async fn address(&self, name: &str) -> Result<Option<IpAddr>, Error> {
        let call = Call::new(&["container", "inspect"])
            .opts([
                "--format",
                "{{.NetworkSettings.IPAddress}} {{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}",
            ])
            .name("container", name);
        let out = self.run(&call).await?;
        Ok(out.split_whitespace().find_map(|w| w.parse().ok()))
    }
}
