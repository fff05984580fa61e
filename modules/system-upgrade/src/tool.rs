//! Runs one of the system tools the module drives (`lvm`, `systemd-run`, `systemctl`,
//! `journalctl`): C locale, no stdin, bounded in time, killed when dropped.

use std::path::Path;
use std::time::Duration;

/// Runs `program args`; stdout on success, else a one-line reason (spawn failure, no answer
/// within `timeout`, or the exit status with the tail of stderr).
pub(crate) async fn run(
    program: &Path,
    args: &[String],
    timeout: Duration,
) -> Result<Vec<u8>, String> {
    let child = tokio::process::Command::new(program)
        .args(args)
        .env("LC_ALL", "C")
        // The service's notify socket is the agent's, not a tool's to write to.
        .env_remove("NOTIFY_SOCKET")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot run: {e}"))?;
    let out = tokio::time::timeout(timeout, child.wait_with_output())
        .await
        .map_err(|_| format!("no answer within {} s", timeout.as_secs()))?
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!(
            "{}: {}",
            out.status,
            crate::tail(String::from_utf8_lossy(&out.stderr).trim(), 400)
        ));
    }
    Ok(out.stdout)
}
