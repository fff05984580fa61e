//! Runs a shell command as a child of the agent (the reboot command).

use std::time::Duration;

use fleet_module_api::CancellationToken;

use crate::tail;

/// Why a shell command did not succeed.
#[derive(Debug)]
pub(super) enum ShellError {
    /// Non-zero exit, signal, timeout or spawn failure, with the output's tail.
    Failed(String),
    /// The agent is shutting down; the command was killed.
    Shutdown,
}

/// Runs `command` with `/bin/sh -c` (non-interactive apt), capturing its output.
pub(super) async fn run_shell(
    command: &str,
    timeout: Duration,
    shutdown: &CancellationToken,
) -> Result<String, ShellError> {
    let child = tokio::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(command)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| ShellError::Failed(format!("cannot run /bin/sh: {e}")))?;
    let out = tokio::select! {
        r = tokio::time::timeout(timeout, child.wait_with_output()) => match r {
            Err(_) => return Err(ShellError::Failed(format!("timed out after {} s", timeout.as_secs()))),
            Ok(Err(e)) => return Err(ShellError::Failed(e.to_string())),
            Ok(Ok(out)) => out,
        },
        () = shutdown.cancelled() => return Err(ShellError::Shutdown),
    };
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    if out.status.success() {
        Ok(text)
    } else {
        Err(ShellError::Failed(format!(
            "{}: {}",
            out.status,
            tail(text.trim(), 300)
        )))
    }
}
