//! `mosquitto` 2.0.x on a free loopback port, anonymous, no persistence.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use tempfile::TempDir;

use crate::daemon::{tcp_accepts, Daemon, Ready};
use crate::error::{Error, Result};

const BINARY: &str = "mosquitto";

/// An MQTT broker with its conf in its own temp dir; killed on drop.
#[derive(Debug)]
pub struct Mosquitto {
    daemon: Daemon,
    port: u16,
    conf: PathBuf,
    // Declared last so the process dies before its directory goes.
    dir: TempDir,
}

impl Mosquitto {
    /// Writes `<tmp>/mosquitto.conf` for a free port, runs `mosquitto -c` and waits until it accepts.
    pub fn start() -> Result<Self> {
        Self::start_with_config("")
    }

    /// As [`start`](Self::start), with `extra` lines appended to the conf (e.g.
    /// `max_packet_size 4096`).
    pub fn start_with_config(extra: &str) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("fleet-mosquitto-")
            .tempdir()
            .map_err(|e| Error::io("creating mosquitto dir", e))?;
        let conf = dir.path().join("mosquitto.conf");
        let mut daemon = Daemon::new(BINARY, dir.path().join("mosquitto.log"));
        let port = daemon.start_on_free_port(
            "TCP accept and the 'running' log line",
            |port| {
                write_conf(&conf, port, extra)?;
                Ok(args(&conf))
            },
            ready,
        )?;
        Ok(Mosquitto {
            daemon,
            port,
            conf,
            dir,
        })
    }

    /// The listener port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The broker URL, `mqtt://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    /// The broker's temp dir (conf and log live here).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Kills the broker (SIGKILL, like a crash).
    pub fn stop(&mut self) {
        self.daemon.stop();
    }

    /// True while the broker process is alive.
    pub fn is_running(&mut self) -> bool {
        self.daemon.is_running()
    }

    /// Stops (if running) and starts again on the same port.
    pub fn restart(&mut self) -> Result<()> {
        self.daemon.stop();
        let args = args(&self.conf);
        self.daemon.start_on_port(
            self.port,
            "TCP accept and the 'running' log line",
            &args,
            ready,
        )
    }

    /// The last lines of the broker's log.
    pub fn log_tail(&self) -> String {
        self.daemon.log_tail()
    }
}

fn write_conf(conf: &Path, port: u16, extra: &str) -> Result<()> {
    let text = format!(
        "# written by fleet-testkit\n\
         listener {port} 127.0.0.1\n\
         allow_anonymous true\n\
         persistence false\n\
         log_dest stderr\n\
         {extra}\n"
    );
    std::fs::write(conf, text).map_err(|e| Error::io(format!("writing {}", conf.display()), e))
}

fn args(conf: &Path) -> Vec<OsString> {
    vec!["-c".into(), conf.as_os_str().to_owned()]
}

/// Ready when our broker logged that it runs (a stranger on the port would not have) and accepts.
fn ready(daemon: &Daemon, port: u16) -> Ready {
    let running = daemon
        .log_text()
        .lines()
        .any(|l| l.contains("mosquitto version") && l.ends_with(" running"));
    if running && tcp_accepts(port) {
        Ready::Yes
    } else {
        Ready::NotYet
    }
}
