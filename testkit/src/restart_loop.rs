//! [`SystemdRestartLoop`]: runs a service the way systemd runs a unit with `Restart=always`,
//! `RestartSec=` and `ExecStartPre=`, so the self-upgrade tests exercise the real cutover,
//! guard and revert without a systemd in the test environment.
//!
//! Semantics kept from systemd: every start runs each `ExecStartPre` command in order and
//! waits for it; one failing (non-zero or not runnable) fails the start and the main command
//! is not run; the main command's `argv[0]` is resolved when it is spawned (a symlink swap
//! takes effect at the next start); after any exit the loop waits `RestartSec` and starts
//! again. Left out: start-rate limits (the unit file sets `StartLimitIntervalSec=0`),
//! `RestartPreventExitStatus`, sd-notify readiness.

use std::ffi::OsString;
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Per-start hook: gets the resolved main binary and returns the argv after `argv[0]`.
pub type ArgsFor = Box<dyn Fn(&Path) -> Vec<OsString> + Send>;

/// What to run, like the `[Service]` section of a unit.
pub struct Unit {
    /// `ExecStartPre=` command lines (argv), run in order before every start.
    pub exec_start_pre: Vec<Vec<OsString>>,
    /// `ExecStart=` binary (typically a symlink that a cutover swaps).
    pub exec_start: PathBuf,
    /// Its arguments for a start, given the binary the link resolved to.
    pub args: ArgsFor,
    /// Extra environment for every command.
    pub env: Vec<(OsString, OsString)>,
    /// `RestartSec=`.
    pub restart_sec: Duration,
    /// stdout and stderr of every command are appended here.
    pub log: PathBuf,
}

/// One start of the unit, as recorded by the loop.
#[derive(Debug, Clone)]
pub struct Start {
    /// When the start began (before `ExecStartPre`).
    pub at: Instant,
    /// The binary `exec_start` resolved to (`None` when it did not resolve).
    pub binary: Option<PathBuf>,
    /// False when an `ExecStartPre` command failed (the main command did not run).
    pub pre_ok: bool,
    /// The main command's exit code (`None`: killed by a signal, or still running).
    pub exit_code: Option<i32>,
    /// When the main command ended.
    pub ended: Option<Instant>,
}

/// A service under an emulated `Restart=always` + `ExecStartPre`; stopped on drop.
pub struct SystemdRestartLoop {
    stop: Arc<AtomicBool>,
    starts: Arc<Mutex<Vec<Start>>>,
    main_pid: Arc<Mutex<Option<u32>>>,
    thread: Option<JoinHandle<()>>,
}

impl SystemdRestartLoop {
    /// Starts the loop in a background thread.
    pub fn start(unit: Unit) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let starts = Arc::new(Mutex::new(Vec::new()));
        let main_pid = Arc::new(Mutex::new(None));
        let thread = {
            let (stop, starts, main_pid) = (stop.clone(), starts.clone(), main_pid.clone());
            std::thread::spawn(move || run_loop(&unit, &stop, &starts, &main_pid))
        };
        Self {
            stop,
            starts,
            main_pid,
            thread: Some(thread),
        }
    }

    /// Every start so far.
    pub fn starts(&self) -> Vec<Start> {
        self.starts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Pid of the running main process.
    pub fn main_pid(&self) -> Option<u32> {
        *self.main_pid.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sends `signal` (e.g. `"KILL"`) to the main process; false when none runs.
    pub fn signal_main(&self, signal: &str) -> bool {
        let Some(pid) = self.main_pid() else {
            return false;
        };
        Command::new("kill")
            .args([&format!("-{signal}"), &pid.to_string()])
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Stops restarting, sends SIGTERM to the main process and waits for the loop.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let Some(t) = self.thread.take() else {
            return;
        };
        // Signal until the loop ends: a start may be spawning right now. SIGKILL after 10 s.
        let started = Instant::now();
        while !t.is_finished() {
            let sig = if started.elapsed() < Duration::from_secs(10) {
                "TERM"
            } else {
                "KILL"
            };
            self.signal_main(sig);
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = t.join();
    }
}

impl Drop for SystemdRestartLoop {
    fn drop(&mut self) {
        self.stop();
    }
}

fn run_loop(
    unit: &Unit,
    stop: &AtomicBool,
    starts: &Mutex<Vec<Start>>,
    main_pid: &Mutex<Option<u32>>,
) {
    let log = |name: &str| {
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(&unit.log)
            .map_err(|e| eprintln!("restart loop: {}: {e} ({name})", unit.log.display()))
            .ok()
    };
    while !stop.load(Ordering::SeqCst) {
        let at = Instant::now();
        let pre_ok = unit.exec_start_pre.iter().all(|argv| {
            let Some((bin, args)) = argv.split_first() else {
                return true;
            };
            let mut cmd = Command::new(bin);
            cmd.args(args)
                .envs(unit.env.iter().cloned())
                .stdin(Stdio::null());
            if let (Some(o), Some(e)) = (log("pre"), log("pre")) {
                cmd.stdout(o).stderr(e);
            }
            cmd.status().is_ok_and(|s| s.success())
        });
        let binary = std::fs::canonicalize(&unit.exec_start).ok();
        let idx = {
            let mut s = starts.lock().unwrap_or_else(|p| p.into_inner());
            s.push(Start {
                at,
                binary: binary.clone(),
                pre_ok,
                exit_code: None,
                ended: None,
            });
            s.len() - 1
        };
        if pre_ok {
            let mut cmd = Command::new(&unit.exec_start);
            cmd.args((unit.args)(binary.as_deref().unwrap_or(&unit.exec_start)))
                .envs(unit.env.iter().cloned())
                .stdin(Stdio::null());
            if let (Some(o), Some(e)) = (log("main"), log("main")) {
                cmd.stdout(o).stderr(e);
            }
            match cmd.spawn() {
                Ok(mut child) => {
                    *main_pid.lock().unwrap_or_else(|p| p.into_inner()) = Some(child.id());
                    let status = child.wait();
                    *main_pid.lock().unwrap_or_else(|p| p.into_inner()) = None;
                    let mut s = starts.lock().unwrap_or_else(|p| p.into_inner());
                    s[idx].exit_code = status.ok().and_then(|st| st.code());
                    s[idx].ended = Some(Instant::now());
                }
                Err(e) => {
                    eprintln!(
                        "restart loop: cannot spawn {}: {e}",
                        unit.exec_start.display()
                    );
                    let mut s = starts.lock().unwrap_or_else(|p| p.into_inner());
                    s[idx].ended = Some(Instant::now());
                }
            }
        }
        // RestartSec, interruptible by stop().
        let until = Instant::now() + unit.restart_sec;
        while Instant::now() < until && !stop.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
