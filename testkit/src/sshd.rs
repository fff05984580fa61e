//! OpenSSH `sshd` on a free loopback port with a temp host key and a temp client key that
//! is its only authorized key; logins are as the user running the test.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use tempfile::TempDir;

use crate::daemon::{tcp_accepts, Daemon, Ready};
use crate::error::{Error, Result};

/// sshd must be started by its absolute path (it re-executes itself).
pub const SSHD: &str = "/usr/sbin/sshd";
/// The directory Debian's sshd chroots its unprivileged child into; it refuses to start
/// without it (the packaged service makes it at start, which tests do not run).
const PRIVSEP_DIR: &str = "/run/sshd";

/// An sshd whose keys and config live in its own temp dir; killed on drop.
#[derive(Debug)]
pub struct Sshd {
    daemon: Daemon,
    port: u16,
    // Declared last so the process dies before its directory goes.
    dir: TempDir,
}

impl Sshd {
    /// Generates an ed25519 host key and client key, writes `sshd_config` for a free port
    /// and runs `sshd -D -e` until it accepts connections.
    pub fn start() -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("fleet-sshd-")
            .tempdir()
            .map_err(|e| Error::io("creating sshd dir", e))?;
        keygen(&dir.path().join("host_ed25519"))?;
        keygen(&dir.path().join("client_ed25519"))?;
        std::fs::copy(
            dir.path().join("client_ed25519.pub"),
            dir.path().join("authorized_keys"),
        )
        .map_err(|e| Error::io("writing authorized_keys", e))?;
        if !Path::new(PRIVSEP_DIR).is_dir() {
            std::fs::create_dir_all(PRIVSEP_DIR)
                .map_err(|e| Error::io(format!("creating {PRIVSEP_DIR}"), e))?;
        }
        let conf = dir.path().join("sshd_config");
        let mut daemon = Daemon::new(SSHD, dir.path().join("sshd.log"));
        let port = daemon.start_on_free_port(
            "TCP accept and 'Server listening'",
            |port| {
                write_conf(&conf, dir.path(), port)?;
                Ok(vec![
                    "-D".into(),
                    "-e".into(),
                    "-f".into(),
                    OsString::from(&conf),
                ])
            },
            |d, port| {
                if d.log_text().contains("Server listening") && tcp_accepts(port) {
                    Ready::Yes
                } else {
                    Ready::NotYet
                }
            },
        )?;
        let sshd = Sshd { daemon, port, dir };
        let host_pub = std::fs::read_to_string(sshd.dir.path().join("host_ed25519.pub"))
            .map_err(|e| Error::io("reading the host key", e))?;
        std::fs::write(sshd.known_hosts(), known_hosts_line(port, &host_pub))
            .map_err(|e| Error::io("writing known_hosts", e))?;
        Ok(sshd)
    }

    /// The listener port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The private key the server authorizes (pass as `-o IdentityFile=`).
    pub fn client_key(&self) -> PathBuf {
        self.dir.path().join("client_ed25519")
    }

    /// A known_hosts file holding this server's host key for `[127.0.0.1]:<port>`.
    pub fn known_hosts(&self) -> PathBuf {
        self.dir.path().join("known_hosts")
    }

    /// Writes a known_hosts file at `path` naming a freshly generated, different key for
    /// this server's address: what a client sees after the device was reinstalled (or
    /// someone sits in the middle).
    pub fn write_wrong_known_hosts(&self, path: &Path) -> Result<()> {
        let other = self.dir.path().join("other_host_ed25519");
        if !other.exists() {
            keygen(&other)?;
        }
        let pubkey = std::fs::read_to_string(other.with_extension("pub"))
            .map_err(|e| Error::io("reading the other key", e))?;
        std::fs::write(path, known_hosts_line(self.port, &pubkey))
            .map_err(|e| Error::io("writing known_hosts", e))
    }

    /// The login name for this server: the user running the test (sshd authorizes the
    /// client key for whoever logs in).
    pub fn user(&self) -> String {
        std::env::var("USER")
            .ok()
            .filter(|u| !u.is_empty())
            .or_else(|| {
                let out = Command::new("id").arg("-un").output().ok()?;
                Some(String::from_utf8_lossy(&out.stdout).trim().to_owned())
            })
            .unwrap_or_else(|| "root".to_owned())
    }

    /// `user@127.0.0.1:<port>`.
    pub fn target(&self) -> String {
        format!("{}@127.0.0.1:{}", self.user(), self.port)
    }

    /// The server's log so far (connections, auth decisions), for assertions and errors.
    pub fn log(&self) -> String {
        self.daemon.log_text()
    }

    /// Kills the server (connections then fail with "Connection refused").
    pub fn stop(&mut self) {
        self.daemon.stop();
    }
}

fn known_hosts_line(port: u16, pubkey: &str) -> String {
    // `type base64 [comment]` → `[127.0.0.1]:port type base64`.
    let mut words = pubkey.split_whitespace();
    let kind = words.next().unwrap_or_default();
    let key = words.next().unwrap_or_default();
    format!("[127.0.0.1]:{port} {kind} {key}\n")
}

fn keygen(path: &Path) -> Result<()> {
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "fleet-testkit", "-f"])
        .arg(path)
        .output()
        .map_err(|source| Error::Spawn {
            binary: "ssh-keygen".into(),
            source,
        })?;
    if !out.status.success() {
        return Err(Error::io(
            "ssh-keygen",
            std::io::Error::other(String::from_utf8_lossy(&out.stderr).into_owned()),
        ));
    }
    Ok(())
}

fn write_conf(conf: &Path, dir: &Path, port: u16) -> Result<()> {
    let text = format!(
        "Port {port}\n\
         ListenAddress 127.0.0.1\n\
         HostKey {dir}/host_ed25519\n\
         AuthorizedKeysFile {dir}/authorized_keys\n\
         PidFile none\n\
         StrictModes no\n\
         UsePAM no\n\
         PasswordAuthentication no\n\
         KbdInteractiveAuthentication no\n\
         PermitRootLogin prohibit-password\n\
         PrintMotd no\n\
         LogLevel VERBOSE\n",
        dir = dir.display()
    );
    std::fs::write(conf, text).map_err(|e| Error::io(format!("writing {}", conf.display()), e))
}
