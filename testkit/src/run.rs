//! One-shot commands with a time limit, so a command that hangs fails its test with what it
//! printed instead of stalling the whole test run.

use std::io::Read;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::error::{tail, Error, Result};

/// Time limit for one command-line client call in tests (`fleetctl`, `fleet-agent status`).
pub const COMMAND_LIMIT: Duration = Duration::from_secs(60);

/// Runs `cmd` (stdin closed) and collects its output like [`Command::output`], but kills it
/// and returns [`Error::Hung`] with the tail of its stdout/stderr once `limit` passes.
pub fn output_within(cmd: &mut Command, limit: Duration) -> Result<Output> {
    let line = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| Error::Spawn {
            binary: format!("{:?}", cmd.get_program()),
            source,
        })?;
    let reader = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut buf);
            }
            buf
        })
    };
    let out = reader(child.stdout.take().map(|p| Box::new(p) as _));
    let err = reader(child.stderr.take().map(|p| Box::new(p) as _));
    let deadline = Instant::now() + limit;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                let stdout = out.join().unwrap_or_default();
                let stderr = err.join().unwrap_or_default();
                return Err(Error::Hung {
                    command: line,
                    limit,
                    output_tail: tail(
                        &format!(
                            "{}{}",
                            String::from_utf8_lossy(&stdout),
                            String::from_utf8_lossy(&stderr)
                        ),
                        20,
                    ),
                });
            }
            Err(e) => return Err(Error::io(format!("wait for {line}"), e)),
        }
    };
    Ok(Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collects_output_and_status() {
        let out = output_within(
            Command::new("sh").args(["-c", "echo out; echo err >&2; exit 3"]),
            Duration::from_secs(10),
        )
        .unwrap();
        assert_eq!(out.status.code(), Some(3));
        assert_eq!(out.stdout, b"out\n");
        assert_eq!(out.stderr, b"err\n");
    }

    #[test]
    fn a_hung_command_is_killed_and_named_with_its_output() {
        let started = Instant::now();
        let e = output_within(
            Command::new("sh").args(["-c", "echo before-hang; exec sleep 30"]),
            Duration::from_millis(300),
        )
        .unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(10), "{e}");
        let msg = e.to_string();
        assert!(
            msg.contains("sleep 30") && msg.contains("before-hang"),
            "{msg}"
        );
    }
}
