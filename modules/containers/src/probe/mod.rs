//! Health probes of a deployment's main container: one check of an `http`, `tcp` or `exec`
//! probe ([`check`]), the HTTP status-line decoder ([`http`]) and the pure state machine
//! that turns checks into the deployment's phase ([`state`]). The engine runs them
//! (`engine/probes.rs`).
//!
//! `http` and `tcp` reach the container at its address on podman's bridge network (from
//! `podman container inspect`, looked up once per container start; a rootful bridge is
//! routed from the host), or at 127.0.0.1 with the host network. `exec` runs the command in
//! the container with `podman exec`. Every check is bounded by the probe's `timeoutSecs`.

pub mod http;
pub mod state;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use fleet_contract::{NetworkMode, Probe, ProbeCheck};

use crate::podman::Podman;

/// One check's outcome: passed, and what it saw (`HTTP 200`, `connection refused`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Did the check pass?
    pub passed: bool,
    /// What it saw, in a few words.
    pub result: String,
}

impl Outcome {
    fn pass(result: impl Into<String>) -> Self {
        Self {
            passed: true,
            result: result.into(),
        }
    }

    fn fail(result: impl Into<String>) -> Self {
        Self {
            passed: false,
            result: result.into(),
        }
    }
}

/// Where the probes of one container start reach it.
#[derive(Debug)]
pub struct Target<'a> {
    /// The podman CLI (address lookup, `exec`).
    pub podman: &'a Podman,
    /// The container's name.
    pub container: &'a str,
    /// Its network mode.
    pub network: NetworkMode,
    /// Its address, once looked up.
    pub address: Option<IpAddr>,
}

impl Target<'_> {
    /// The container's address: 127.0.0.1 on the host network, else its bridge address
    /// (looked up on first use, again after a failed lookup).
    async fn address(&mut self) -> Result<IpAddr, String> {
        if let Some(ip) = self.address {
            return Ok(ip);
        }
        let ip = match self.network {
            NetworkMode::Host => IpAddr::V4(Ipv4Addr::LOCALHOST),
            NetworkMode::None => return Err("the container has no network".into()),
            NetworkMode::Bridge => match self.podman.address(self.container).await {
                Ok(Some(ip)) => ip,
                Ok(None) => return Err("the container has no network address".into()),
                Err(e) => return Err(format!("no address: {e}")),
            },
        };
        self.address = Some(ip);
        Ok(ip)
    }

    /// Runs one check of `probe`.
    pub async fn check(&mut self, probe: &Probe) -> Outcome {
        let timeout = Duration::from_secs(u64::from(probe.timeout_secs.max(1)));
        let Some(check) = probe.check() else {
            return Outcome::fail("the probe sets none or several of http, tcp, exec");
        };
        match check {
            ProbeCheck::Exec(e) => {
                match self.podman.exec(self.container, &e.command, timeout).await {
                    Ok(0) => Outcome::pass("exit 0"),
                    Ok(code) => Outcome::fail(format!("exit {code}")),
                    Err(e) => Outcome::fail(e.to_string()),
                }
            }
            ProbeCheck::Tcp(t) => {
                let ip = match self.address().await {
                    Ok(ip) => ip,
                    Err(e) => return Outcome::fail(e),
                };
                let addr = SocketAddr::new(ip, t.port);
                match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await {
                    Ok(Ok(_)) => Outcome::pass(format!("connected to port {}", t.port)),
                    Ok(Err(e)) => Outcome::fail(io_text(&e)),
                    Err(_) => Outcome::fail(format!("timed out after {} s", timeout.as_secs())),
                }
            }
            ProbeCheck::Http(h) => {
                let ip = match self.address().await {
                    Ok(ip) => ip,
                    Err(e) => return Outcome::fail(e),
                };
                match http::get(SocketAddr::new(ip, h.port), &h.path, timeout).await {
                    Ok(code) if code == h.status => Outcome::pass(format!("HTTP {code}")),
                    Ok(code) => Outcome::fail(format!("HTTP {code}, expected {}", h.status)),
                    Err(e) => Outcome::fail(e),
                }
            }
        }
    }
}

/// An I/O error in a few words: its kind (`connection refused`), or its text when the kind
/// says nothing.
pub(crate) fn io_text(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::Other => e.to_string(),
        kind => {
            let text = kind.to_string();
            if text == "uncategorized error" || text == "other error" {
                e.to_string()
            } else {
                text
            }
        }
    }
}
