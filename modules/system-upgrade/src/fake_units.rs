//! **A fake of systemd's transient units**, for tests on hosts without systemd (this build
//! host runs none; the real `systemd-run` is exercised in the VM harness). A unit is a real
//! `/bin/sh -c` process in its own process group; its state lives in a directory, so a new
//! engine (an agent restart) over the same directory finds the unit as systemd would:
//! `active/running` while the process lives, `active/exited` after exit 0
//! (`RemainAfterExit=yes`), `failed` with `Result=exit-code|signal` and `ExecMainStatus`
//! otherwise, `not-found` once stopped or released. Output goes to `<unit>.journal` (kept
//! after the unit, as the journal is). Compiled only with the `fake-systemd` feature, which
//! only dev-dependencies enable.
//!
//! Layout of the directory: `<unit>/pid` (the wrapper's pid = its process group),
//! `<unit>/exit` (`<code>` written by the wrapper, or `signal <n>`), `<unit>/stopping`,
//! `<unit>.journal`, and `starts` (one line per start: the runs, for assertions).

use std::io::Write;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;

use crate::units::{UnitError, UnitStatus, Units};

/// Runs the command and records its exit code (the wrapper is the unit's main process).
const WRAPPER: &str = r#"/bin/sh -c "$2"
rc=$?
echo "$rc" > "$1/exit.tmp" && mv "$1/exit.tmp" "$1/exit""#;

/// Transient units as processes plus state files under one directory.
#[derive(Debug, Clone)]
pub struct FakeUnits {
    dir: PathBuf,
    poll: Duration,
}

impl FakeUnits {
    /// Units kept under `dir` (created when missing), polled every 50 ms.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            poll: Duration::from_millis(50),
        }
    }

    fn unit_dir(&self, unit: &str) -> PathBuf {
        self.dir.join(unit)
    }

    fn journal(&self, unit: &str) -> PathBuf {
        self.dir.join(format!("{unit}.journal"))
    }

    fn err(what: &str, unit: &str, e: impl std::fmt::Display) -> UnitError {
        UnitError {
            command: format!("fake systemd {what} {unit}"),
            message: e.to_string(),
        }
    }

    /// How many units were started in all.
    pub fn starts(&self) -> usize {
        std::fs::read_to_string(self.dir.join("starts"))
            .map(|s| s.lines().count())
            .unwrap_or(0)
    }

    /// Every unit started, oldest first.
    pub fn started_units(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.join("starts"))
            .map(|s| s.lines().map(str::to_owned).collect())
            .unwrap_or_default()
    }

    /// The unit disappears without a result, as after an operator's `systemctl stop` (its
    /// process is killed, the unit collected).
    pub async fn vanish(&self, unit: &str) {
        let _ = self.kill_and_wait(unit).await;
        let _ = std::fs::remove_dir_all(self.unit_dir(unit));
    }

    /// The main process of a running unit.
    fn pid(&self, unit: &str) -> Option<u32> {
        std::fs::read_to_string(self.unit_dir(unit).join("pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    fn alive(pid: u32) -> bool {
        Path::new(&format!("/proc/{pid}")).exists()
    }

    fn exit(&self, unit: &str) -> Option<String> {
        std::fs::read_to_string(self.unit_dir(unit).join("exit"))
            .ok()
            .map(|s| s.trim().to_owned())
    }

    /// SIGTERM to the unit's process group, then waits (10 s at most) until its main process
    /// is gone.
    async fn kill_and_wait(&self, unit: &str) -> Result<(), UnitError> {
        let Some(pid) = self.pid(unit) else {
            return Ok(());
        };
        if Self::alive(pid) {
            std::fs::write(self.unit_dir(unit).join("stopping"), "")
                .map_err(|e| Self::err("stop", unit, e))?;
        }
        // The whole group, as systemd kills the whole cgroup (a main process killed from
        // outside may leave children behind).
        let _ = std::process::Command::new("kill")
            .args(["-TERM", "--", &format!("-{pid}")])
            .stderr(std::process::Stdio::null())
            .status();
        for _ in 0..200 {
            if !Self::alive(pid) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(Self::err("stop", unit, format!("pid {pid} did not end")))
    }
}

fn status(active: &str, sub: &str, result: &str, code: i32, st: i32) -> UnitStatus {
    UnitStatus {
        load_state: "loaded".into(),
        active_state: active.into(),
        sub_state: sub.into(),
        result: result.into(),
        exec_main_code: code,
        exec_main_status: st,
    }
}

#[async_trait]
impl Units for FakeUnits {
    async fn start(&self, unit: &str, _id: &str, command: &str) -> Result<(), UnitError> {
        let d = self.unit_dir(unit);
        if d.exists() {
            // What systemd-run says for a name in use.
            return Err(Self::err(
                "run",
                unit,
                format!("Unit {unit} was already loaded or has a fragment file."),
            ));
        }
        std::fs::create_dir_all(&d).map_err(|e| Self::err("run", unit, e))?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.journal(unit))
            .map_err(|e| Self::err("run", unit, e))?;
        let log2 = log.try_clone().map_err(|e| Self::err("run", unit, e))?;
        let mut child = std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(WRAPPER)
            .arg("fake-unit")
            .arg(&d)
            .arg(command)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(std::process::Stdio::null())
            .stdout(log)
            .stderr(log2)
            .process_group(0)
            .spawn()
            .map_err(|e| Self::err("run", unit, format!("cannot run /bin/sh: {e}")))?;
        std::fs::write(d.join("pid"), child.id().to_string())
            .map_err(|e| Self::err("run", unit, e))?;
        let mut starts = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("starts"))
            .map_err(|e| Self::err("run", unit, e))?;
        writeln!(starts, "{unit}").map_err(|e| Self::err("run", unit, e))?;
        // The service manager reaps its main process: a killed one is `failed/signal`,
        // unless it was being stopped.
        std::thread::spawn(move || {
            if let Ok(st) = child.wait() {
                if let Some(sig) = st.signal() {
                    if !d.join("stopping").exists() && d.is_dir() {
                        // Temp + rename, as the wrapper writes its exit code: `status` must
                        // never read a created but still empty exit file.
                        let tmp = d.join("exit.signal.tmp");
                        if std::fs::write(&tmp, format!("signal {sig}")).is_ok() {
                            let _ = std::fs::rename(&tmp, d.join("exit"));
                        }
                    }
                }
            }
        });
        Ok(())
    }

    async fn status(&self, unit: &str) -> Result<UnitStatus, UnitError> {
        let d = self.unit_dir(unit);
        if !d.is_dir() {
            let mut st = status("inactive", "dead", "success", 0, 0);
            st.load_state = "not-found".into();
            return Ok(st);
        }
        if let Some(exit) = self.exit(unit) {
            if let Some(sig) = exit.strip_prefix("signal ") {
                let sig = sig.parse().unwrap_or(0);
                return Ok(status("failed", "failed", "signal", 2, sig));
            }
            return Ok(match exit.parse::<i32>() {
                Ok(0) => status("active", "exited", "success", 1, 0),
                Ok(n) if n > 128 => status("failed", "failed", "signal", 2, n - 128),
                Ok(n) => status("failed", "failed", "exit-code", 1, n),
                Err(_) => return Err(Self::err("show", unit, format!("exit file {exit:?}"))),
            });
        }
        // Running, or exited a moment ago and the exit file is being written.
        Ok(match self.pid(unit) {
            Some(pid) if Self::alive(pid) => status("active", "running", "success", 0, 0),
            _ => status("activating", "start", "success", 0, 0),
        })
    }

    async fn stop(&self, unit: &str) -> Result<(), UnitError> {
        let failed = self
            .exit(unit)
            .is_some_and(|e| e != "0" && !self.unit_dir(unit).join("stopping").exists());
        self.kill_and_wait(unit).await?;
        // A failed unit stays failed until reset-failed; a stopped one is collected.
        if !failed {
            let _ = std::fs::remove_dir_all(self.unit_dir(unit));
        }
        Ok(())
    }

    async fn journal_tail(&self, unit: &str, lines: usize) -> Result<String, UnitError> {
        let text = std::fs::read_to_string(self.journal(unit)).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        Ok(all[all.len().saturating_sub(lines)..].join("\n"))
    }

    async fn release(&self, unit: &str) -> Result<(), UnitError> {
        self.kill_and_wait(unit).await?;
        match std::fs::remove_dir_all(self.unit_dir(unit)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(Self::err("reset-failed", unit, e))
            }
            _ => Ok(()),
        }
    }

    fn poll_interval(&self) -> Duration {
        self.poll
    }
}
