//! Debian's `docker-registry` (distribution 2.8) on a free loopback port, filesystem storage.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tempfile::TempDir;

use crate::daemon::{Daemon, Ready};
use crate::error::{Error, Result};

const BINARY: &str = "docker-registry";

/// An OCI registry without auth or TLS, storing blobs in its own temp dir; killed on drop.
#[derive(Debug)]
pub struct Registry {
    daemon: Daemon,
    port: u16,
    config: PathBuf,
    // Declared last so the process dies before its directory goes.
    dir: TempDir,
}

impl Registry {
    /// Writes `<tmp>/config.yml`, runs `docker-registry serve` and waits for `GET /v2/` → 200.
    pub fn start() -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("fleet-registry-")
            .tempdir()
            .map_err(|e| Error::io("creating docker-registry dir", e))?;
        let config = dir.path().join("config.yml");
        let storage = dir.path().join("storage");
        let mut daemon = Daemon::new(BINARY, dir.path().join("registry.log"));
        let port = daemon.start_on_free_port(
            "HTTP 200 from GET /v2/",
            |port| {
                write_config(&config, &storage, port)?;
                Ok(args(&config))
            },
            ready,
        )?;
        Ok(Registry {
            daemon,
            port,
            config,
            dir,
        })
    }

    /// `127.0.0.1:<port>`, the host part of image references pushed here.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The listening port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The registry's temp dir (config, log and `storage/` live here).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Writes a `registries.conf` marking this registry insecure (plain HTTP) and returns its path.
    ///
    /// Point `CONTAINERS_REGISTRIES_CONF` at it for a process that pulls from this registry.
    pub fn registries_conf(&self) -> Result<PathBuf> {
        let path = self.dir.path().join("registries.conf");
        let text = format!(
            "# written by fleet-testkit\n\
             [[registry]]\n\
             location = \"{}\"\n\
             insecure = true\n",
            self.addr()
        );
        std::fs::write(&path, text)
            .map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
        Ok(path)
    }

    /// Kills the registry (SIGKILL, like a crash).
    pub fn stop(&mut self) {
        self.daemon.stop();
    }

    /// True while the registry process is alive.
    pub fn is_running(&mut self) -> bool {
        self.daemon.is_running()
    }

    /// Stops (if running) and starts again on the same port with the same storage.
    pub fn restart(&mut self) -> Result<()> {
        self.daemon.stop();
        let args = args(&self.config);
        self.daemon
            .start_on_port(self.port, "HTTP 200 from GET /v2/", &args, ready)
    }

    /// The last lines of the registry's log.
    pub fn log_tail(&self) -> String {
        self.daemon.log_tail()
    }
}

fn write_config(config: &Path, storage: &Path, port: u16) -> Result<()> {
    let text = format!(
        "# written by fleet-testkit\n\
         version: 0.1\n\
         log:\n  level: info\n  accesslog:\n    disabled: true\n\
         storage:\n  filesystem:\n    rootdirectory: {storage}\n  delete:\n    enabled: true\n\
         http:\n  addr: 127.0.0.1:{port}\n  secret: fleet-testkit-not-a-secret\n",
        storage = storage.display()
    );
    std::fs::write(config, text).map_err(|e| Error::io(format!("writing {}", config.display()), e))
}

fn args(config: &Path) -> Vec<OsString> {
    vec!["serve".into(), config.as_os_str().to_owned()]
}

/// Ready when our registry logged its listener (a stranger would not have) and `/v2/` answers 200.
fn ready(daemon: &Daemon, port: u16) -> Ready {
    let ours = format!("listening on 127.0.0.1:{port}");
    if daemon.log_text().contains(&ours) && http_status(port, "/v2/") == Some(200) {
        Ready::Yes
    } else {
        Ready::NotYet
    }
}

/// Status code of a plain `GET <path>` (HTTP/1.0) to `127.0.0.1:port`, or `None` on any failure.
pub(crate) fn http_status(port: u16, path: &str) -> Option<u16> {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    stream
        .set_write_timeout(Some(Duration::from_secs(2)))
        .ok()?;
    let req = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n");
    stream.write_all(req.as_bytes()).ok()?;
    let mut head = [0u8; 64];
    let mut got = 0;
    // The status line fits in the first bytes; read until we have it or the peer closes.
    while got < head.len() {
        match stream.read(&mut head[got..]) {
            Ok(0) => break,
            Ok(n) => {
                got += n;
                if head[..got].contains(&b'\n') {
                    break;
                }
            }
            Err(_) => return None,
        }
    }
    let line = std::str::from_utf8(&head[..got]).ok()?;
    // "HTTP/1.1 200 OK"
    line.split_whitespace().nth(1)?.parse().ok()
}
