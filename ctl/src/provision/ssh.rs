//! The OpenSSH client wrapper: every remote step is one `ssh` run with a fixed script as
//! its command and any file contents on its stdin, so no secret reaches an argv on the
//! device (`ps` there shows only the script).

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{anyhow, Context as _, Result};
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use super::plan::{classify_ssh_failure, Target};

/// How long a TCP connect to the device may take.
const CONNECT_TIMEOUT_SECS: u32 = 10;
/// Upper bound of one remote step (a dpkg -i on a slow SD card is the longest).
const STEP_LIMIT: Duration = Duration::from_secs(600);

/// How to reach one device.
#[derive(Debug, Clone)]
pub(crate) struct Ssh {
    pub target: Target,
    /// `--ssh-option` values, each passed as `-o OPT`.
    pub options: Vec<String>,
    pub known_hosts: Option<PathBuf>,
}

/// A remote step's result (exit 0).
#[derive(Debug)]
pub(crate) struct Output {
    pub stdout: String,
}

impl Ssh {
    fn command(&self, script: &str) -> Command {
        let mut c = Command::new("ssh");
        c.arg("-T")
            .args(["-o", "BatchMode=yes"])
            .args(["-o", "StrictHostKeyChecking=yes"])
            .args(["-o", &format!("ConnectTimeout={CONNECT_TIMEOUT_SECS}")])
            .args(["-o", "LogLevel=ERROR"]);
        if let Some(k) = &self.known_hosts {
            c.arg("-o")
                .arg(format!("UserKnownHostsFile={}", k.display()))
                .args(["-o", "GlobalKnownHostsFile=/dev/null"]);
        }
        for o in &self.options {
            c.arg("-o").arg(o);
        }
        if let Some(p) = self.target.port {
            c.arg("-p").arg(p.to_string());
        }
        // `--` ends ssh's options; the remote command is the fixed script, run by sh.
        c.arg("--")
            .arg(self.target.login())
            .arg(format!("sh -c {}", shell_quote(script)));
        c.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        c
    }

    /// Runs `script` on the device with `input` on its stdin. A non-zero exit is an error
    /// naming the host; ssh's own failures (exit 255) say unreachable / host key / login.
    pub(crate) async fn run(&self, what: &str, script: &str, input: &[u8]) -> Result<Output> {
        let mut child = self
            .command(script)
            .spawn()
            .context("running ssh (is the OpenSSH client installed?)")?;
        let mut stdin = child
            .stdin
            .take()
            .ok_or_else(|| anyhow!("ssh stdin not piped"))?;
        let input = input.to_vec();
        let writer = tokio::spawn(async move {
            // The remote side may exit before reading everything; its exit status tells.
            let _ = stdin.write_all(&input).await;
            let _ = stdin.shutdown().await;
        });
        let out = tokio::time::timeout(STEP_LIMIT, child.wait_with_output())
            .await
            .map_err(|_| {
                anyhow!(
                    "{}: {what}: no answer within {} s",
                    self.target,
                    STEP_LIMIT.as_secs()
                )
            })?
            .context("waiting for ssh")?;
        let _ = writer.await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        if out.status.success() {
            return Ok(Output {
                stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            });
        }
        let code = out.status.code();
        if code == Some(255) {
            return Err(anyhow!(classify_ssh_failure(&self.target, code, &stderr)));
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        let tail: Vec<&str> = stderr
            .lines()
            .chain(stdout.lines())
            .filter(|l| !l.trim().is_empty())
            .collect();
        let tail = tail[tail.len().saturating_sub(5)..].join(" | ");
        Err(anyhow!(
            "{}: {what} failed (exit {}): {tail}",
            self.target,
            code.map_or("signal".into(), |c| c.to_string())
        ))
    }
}

/// Single-quotes `s` for a POSIX shell.
pub(crate) fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_survives_single_quotes() {
        assert_eq!(shell_quote("a'b"), r"'a'\''b'");
        assert_eq!(shell_quote(""), "''");
    }

    #[test]
    fn the_command_pins_host_key_checking_and_batch_mode() {
        let ssh = Ssh {
            target: Target::parse("pi@10.0.0.7:2222").unwrap(),
            options: vec!["IdentityFile=/k".into()],
            known_hosts: Some("/kh".into()),
        };
        let c = ssh.command("true");
        let args: Vec<String> = c
            .as_std()
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let joined = args.join(" ");
        for want in [
            "BatchMode=yes",
            "StrictHostKeyChecking=yes",
            "UserKnownHostsFile=/kh",
            "IdentityFile=/k",
            "-p 2222",
            "-- pi@10.0.0.7 sh -c 'true'",
        ] {
            assert!(joined.contains(want), "{want} missing in {joined}");
        }
    }
}
