//! What the Debian package needs from the binary besides its man pages and completions
//! (`internals docs`, written by `fleet_clidocs`): the cutover to a packaged version
//! (`package-cutover`, see `fleet_mod_self_upgrade::package`).

#[cfg(feature = "self-upgrade")]
pub use cutover::package_cutover;

#[cfg(feature = "self-upgrade")]
mod cutover {
    use std::path::Path;
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    use fleet_mod_self_upgrade::package::{self, Done, Mode, Request};
    use fleet_mod_self_upgrade::{guard, Error, Layout};

    use crate::config::Config;
    use crate::VERSION;

    /// Cuts over to this binary's version (see `fleet_mod_self_upgrade::package`); returns
    /// the line the postinst prints.
    pub fn package_cutover(
        cfg: &Config,
        su: &fleet_mod_self_upgrade::Config,
        from: Option<&str>,
        restart: bool,
    ) -> Result<String, Error> {
        let layout = Layout::new(su, &cfg.state_dir);
        let unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let req = Request {
            to: VERSION,
            from,
            mode: if restart {
                Mode::Probation
            } else {
                Mode::Direct
            },
            deadline_secs: su.probation_deadline_secs,
            max_attempts: su.max_attempts,
        };
        let timeout = Duration::from_secs(su.self_test_timeout_secs);
        let done = package::package_cutover(&layout, &req, &guard::Now::read(unix), |bin| {
            self_test(bin, &su.config_path, timeout)
        })?;
        Ok(match done {
            Done::Unchanged(v) => format!("{v} is already current and confirmed"),
            Done::Direct { from: None, to } => format!("{to} installed as current and confirmed"),
            Done::Direct { from: Some(f), to } => {
                format!("{f} -> {to}: current and confirmed (no running service, no probation)")
            }
            Done::Probation { from, to } => format!(
                "{from} -> {to}: self-test passed, on probation (the guard reverts to {from} unless {to} checks in within {} s)",
                su.probation_deadline_secs
            ),
        })
    }

    /// `<bin> version --json` must name this version and `<bin> --config <c> self-test`
    /// must pass, each within `timeout`.
    fn self_test(bin: &Path, config: &Path, timeout: Duration) -> Result<(), Error> {
        let fail = |detail: String| Error::SelfTest {
            version: VERSION.to_owned(),
            detail,
        };
        let (ok, out) = run(bin, &["version", "--json"], timeout)?;
        let reported = serde_json::from_slice::<serde_json::Value>(&out)
            .ok()
            .and_then(|j| j["version"].as_str().map(ToOwned::to_owned));
        if !ok || reported.as_deref() != Some(VERSION) {
            return Err(fail(format!(
                "the binary reports version {reported:?}, not {VERSION:?}"
            )));
        }
        let config = config.to_string_lossy();
        let (ok, out) = run(bin, &["--config", &config, "self-test"], timeout)?;
        if ok {
            return Ok(());
        }
        let text = String::from_utf8_lossy(&out);
        let failed: Vec<&str> = text.lines().filter(|l| l.starts_with("FAIL")).collect();
        Err(fail(if failed.is_empty() {
            text.lines().rev().take(5).collect::<Vec<_>>().join("; ")
        } else {
            failed.join("; ")
        }))
    }

    fn run(bin: &Path, args: &[&str], timeout: Duration) -> Result<(bool, Vec<u8>), Error> {
        let out_file = tempfile_in_run()?;
        let mut child = Command::new(bin)
            .args(args)
            .env_remove("NOTIFY_SOCKET")
            .stdin(Stdio::null())
            .stdout(out_file.try_clone().map_err(Error::io(bin))?)
            .stderr(Stdio::null())
            .spawn()
            .map_err(Error::io(bin))?;
        let start = Instant::now();
        let status = loop {
            if let Some(s) = child.try_wait().map_err(Error::io(bin))? {
                break s;
            }
            if start.elapsed() >= timeout {
                let _ = child.kill();
                let _ = child.wait();
                return Err(Error::SelfTest {
                    version: VERSION.to_owned(),
                    detail: format!(
                        "{} {} did not finish within {} s",
                        bin.display(),
                        args.join(" "),
                        timeout.as_secs()
                    ),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let mut out = Vec::new();
        use std::io::{Read, Seek};
        let mut f = out_file;
        f.rewind()
            .and_then(|()| f.read_to_end(&mut out))
            .map_err(Error::io(bin))?;
        Ok((status.success(), out))
    }

    /// An anonymous file for the child's stdout (a pipe could fill up while we poll).
    fn tempfile_in_run() -> Result<std::fs::File, Error> {
        let dir = std::env::temp_dir();
        let path = dir.join(format!("fleet-agent-cutover-{}.out", std::process::id()));
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(Error::io(&path))?;
        let _ = std::fs::remove_file(&path);
        Ok(f)
    }
}
