//! What the health probes ask of podman: a command run in a container (`podman exec`) and
//! the container's address on its network.

use std::net::IpAddr;
use std::time::Duration;

use super::{Call, Podman};
use crate::error::Error;

impl Podman {
    /// Runs `command` in the running container `name` within `limit`; the command's exit
    /// code. podman's own failures (exit 125: no such container, 126: cannot be run, 127:
    /// not found) are errors with podman's error line, the command's arguments redacted.
    /// Past `limit` podman is killed; what the command prints is capped like every call's.
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
        match self.run(&call).await {
            Ok(_) => Ok(0),
            Err(Error::Command { code: Some(c), .. }) if !(125..=127).contains(&c) => Ok(c),
            Err(e) => Err(e),
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
