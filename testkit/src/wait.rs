//! Polling with a deadline, free ports, and the skip-or-fail rule for missing binaries.

use std::net::{Ipv4Addr, TcpListener};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// Interval between two polls of [`wait_until`].
pub const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Env var that turns a skipped daemon test into a failure (CI sets it to `1`).
pub const REQUIRE_DAEMONS_ENV: &str = "FLEET_REQUIRE_DAEMONS";

/// Polls `f` every ~50 ms until it returns `Some`, or fails with [`Error::Timeout`] naming `what`.
///
/// `f` is always called at least once, even with a zero timeout.
pub fn wait_until<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = f() {
            return Ok(value);
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(Error::Timeout {
                what: what.to_owned(),
                timeout,
            });
        }
        std::thread::sleep(POLL_INTERVAL.min(deadline - now));
    }
}

/// A loopback TCP port that was free a moment ago (bind `127.0.0.1:0`, read it, release it).
///
/// Another process can take it before the caller binds it; daemon starters retry on that race.
pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding 127.0.0.1:0 only fails on a host without loopback")
}

/// True if `binary` is on `PATH` (or is an executable path); else prints why the test skips.
///
/// With `FLEET_REQUIRE_DAEMONS=1` a missing binary panics instead, so CI cannot skip silently.
pub fn require(binary: &str) -> bool {
    if find_on_path(binary).is_some() {
        return true;
    }
    let msg =
        format!("SKIPPING TEST: {binary} not installed (install it with scripts/install-deps)");
    if std::env::var(REQUIRE_DAEMONS_ENV).is_ok_and(|v| v == "1") {
        panic!("{msg} [{REQUIRE_DAEMONS_ENV}=1 forbids skipping]");
    }
    eprintln!("{msg}");
    false
}

/// The full path of `binary` if it is an executable file on `PATH` (or given as a path).
pub fn find_on_path(binary: &str) -> Option<std::path::PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let is_exec = |p: &std::path::Path| {
        p.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if binary.contains('/') {
        let p = std::path::PathBuf::from(binary);
        return is_exec(&p).then_some(p);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(binary))
        .find(|p| is_exec(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_until_returns_first_some() {
        let mut n = 0;
        let got = wait_until(Duration::from_secs(5), "n reaches 3", || {
            n += 1;
            (n >= 3).then_some(n)
        })
        .unwrap();
        assert_eq!(got, 3);
    }

    #[test]
    fn wait_until_times_out_and_names_what() {
        let start = Instant::now();
        let err = wait_until(Duration::from_millis(120), "the moon", || None::<()>).unwrap_err();
        assert!(start.elapsed() >= Duration::from_millis(120));
        let msg = err.to_string();
        assert!(msg.contains("the moon"), "{msg}");
        assert!(msg.contains("120ms"), "{msg}");
    }

    #[test]
    fn free_port_is_bindable() {
        let port = free_port();
        assert_ne!(port, 0);
        TcpListener::bind((Ipv4Addr::LOCALHOST, port)).unwrap();
    }

    #[test]
    fn require_finds_sh_and_skips_unknown() {
        assert!(require("sh"));
        if std::env::var(REQUIRE_DAEMONS_ENV).as_deref() != Ok("1") {
            assert!(!require("fleet-no-such-binary-xyz"));
        }
    }
}
