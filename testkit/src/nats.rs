//! `nats-server -js` on a free loopback port (Debian 12 ships 2.9.10; only its flags are used).

use std::ffi::OsString;
use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tempfile::TempDir;

use crate::daemon::{Daemon, Ready};
use crate::error::{Error, Result};
use crate::unique_id;

const BINARY: &str = "nats-server";

/// A JetStream-enabled `nats-server` with storage in its own temp dir; killed on drop.
#[derive(Debug)]
pub struct NatsServer {
    daemon: Daemon,
    port: u16,
    name: String,
    store: PathBuf,
    conf: Option<PathBuf>,
    // Declared last so the process dies before its directory goes.
    dir: TempDir,
}

impl NatsServer {
    /// Starts `nats-server -js -a 127.0.0.1 -p <free port> -sd <tmp>/js` and waits for its `INFO`.
    pub fn start_jetstream() -> Result<Self> {
        Self::start_jetstream_with_config("")
    }

    /// As [`start_jetstream`](Self::start_jetstream), with `config` (nats-server config file
    /// syntax, e.g. `max_payload: 4096`) passed with `-c`; the flags still set the port,
    /// storage and name.
    pub fn start_jetstream_with_config(config: &str) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("fleet-nats-")
            .tempdir()
            .map_err(|e| Error::io("creating nats-server dir", e))?;
        let store = dir.path().join("js");
        // A unique server name lets the readiness check tell our server from a stranger
        // that grabbed the port first.
        let name = unique_id("fleet-test-nats");
        let conf = if config.is_empty() {
            None
        } else {
            let path = dir.path().join("nats-server.conf");
            std::fs::write(&path, config)
                .map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
            Some(path)
        };
        let mut daemon = Daemon::new(BINARY, dir.path().join("nats-server.log"));
        let port = daemon.start_on_free_port(
            "INFO line on the client port",
            |port| Ok(args(port, &name, &store, conf.as_deref())),
            |_, port| info_ready(port, &name),
        )?;
        Ok(NatsServer {
            daemon,
            port,
            name,
            store,
            conf,
            dir,
        })
    }

    /// The client URL, `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The client port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The JetStream storage dir (kept across [`restart`](Self::restart)).
    pub fn store_dir(&self) -> &Path {
        &self.store
    }

    /// The server's temp dir (log file `nats-server.log` lives here).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Kills the server (SIGKILL, like a crash); clients see the connection drop.
    pub fn stop(&mut self) {
        self.daemon.stop();
    }

    /// True while the server process is alive.
    pub fn is_running(&mut self) -> bool {
        self.daemon.is_running()
    }

    /// Stops (if running) and starts again on the same port with the same storage dir.
    pub fn restart(&mut self) -> Result<()> {
        self.daemon.stop();
        let args = args(self.port, &self.name, &self.store, self.conf.as_deref());
        let name = self.name.clone();
        self.daemon.start_on_port(
            self.port,
            "INFO line on the client port",
            &args,
            |_, port| info_ready(port, &name),
        )
    }

    /// The last lines of the server's log.
    pub fn log_tail(&self) -> String {
        self.daemon.log_tail()
    }
}

fn args(port: u16, name: &str, store: &Path, conf: Option<&Path>) -> Vec<OsString> {
    let mut v: Vec<OsString> = Vec::new();
    if let Some(c) = conf {
        v.push("-c".into());
        v.push(c.as_os_str().to_owned());
    }
    v.extend(["-js", "-a", "127.0.0.1", "-p"].iter().map(OsString::from));
    v.push(port.to_string().into());
    v.push("-sd".into());
    v.push(store.as_os_str().to_owned());
    v.push("--server_name".into());
    v.push(name.into());
    v
}

/// Connects and reads the first line; ready when it is our server's `INFO {...}`.
fn info_ready(port: u16, name: &str) -> Ready {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let Ok(stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(500)) else {
        return Ready::NotYet;
    };
    if stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .is_err()
    {
        return Ready::NotYet;
    }
    let mut line = String::new();
    if BufReader::new(stream).read_line(&mut line).is_err() {
        return Ready::NotYet;
    }
    let ours = format!("\"server_name\":\"{name}\"");
    if line.starts_with("INFO {") && line.contains(&ours) {
        Ready::Yes
    } else {
        Ready::NotYet
    }
}
