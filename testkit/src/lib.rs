//! Test support: real daemons on free loopback ports with temp dirs.
//!
//! Tests never spawn `nats-server`, `mosquitto`, `docker-registry`, `sshd` or `podman` themselves;
//! they ask this crate, which picks a free port, waits for readiness with a deadline and
//! kills/cleans up on drop. Each test gets its own daemon (`STYLE.md` §6).
//!
//! ```no_run
//! use std::time::Duration;
//! use fleet_testkit::{require, NatsServer, NotifySocket, TempRoot};
//!
//! if !require("nats-server") {
//!     return;
//! }
//! let nats = NatsServer::start_jetstream().unwrap();
//! let root = TempRoot::new().unwrap();
//! root.write_config(&format!("[nats]\nurl = \"{}\"\n", nats.url()));
//! let notify = NotifySocket::new().unwrap();
//! // spawn the agent with NOTIFY_SOCKET=notify.path(), then:
//! let lines = notify.wait_for("READY=1", Duration::from_secs(10)).unwrap();
//! # let _ = lines;
//! ```

#![warn(missing_docs)]

mod daemon;
mod error;
mod mosquitto;
mod nats;
mod notify;
mod podman;
mod registry;
mod restart_loop;
mod root;
mod run;
mod sntp;
mod sshd;
mod wait;

pub use error::{Error, Result};
pub use mosquitto::Mosquitto;
pub use nats::NatsServer;
pub use notify::NotifySocket;
pub use podman::{
    busybox_image, container_exists, external_names, find_process, kill_when_running, podman,
    storage_only_container, PodmanScope, BUSYBOX_REPO, SCOPE_LABEL,
};
pub use registry::Registry;
pub use restart_loop::{ArgsFor, Start, SystemdRestartLoop, Unit};
pub use root::{TempRoot, KEEP_TEMP_ENV};
pub use run::{output_within, COMMAND_LIMIT};
pub use sntp::{SntpBehavior, SntpServer};
pub use sshd::{Sshd, SSHD};
pub use wait::{find_on_path, free_port, require, wait_until, POLL_INTERVAL, REQUIRE_DAEMONS_ENV};

/// A process-wide unique id: `<prefix>-<pid>-<counter>-<nanos>`.
pub(crate) fn unique_id(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{prefix}-{}-{n}-{nanos}", std::process::id())
}
