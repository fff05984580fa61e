//! Test support: real daemons on free loopback ports with temp dirs.
//!
//! Tests never spawn `nats-server`, `mosquitto`, `docker-registry` or `podman` themselves;
//! they ask this crate, which picks a free port, waits for readiness with a deadline and
//! kills/cleans up on drop. See `STYLE.md` §6.
//!
//! ```no_run
//! use std::time::Duration;
//! use fleet_testkit::{require, TempRoot, NotifySocket};
//!
//! if !require("nats-server") { return; }
//! let root = TempRoot::new().unwrap();
//! root.write_config("[agent]\n");
//! let notify = NotifySocket::new().unwrap();
//! // spawn the agent with NOTIFY_SOCKET=notify.path(), then:
//! let lines = notify.wait_for("READY=1", Duration::from_secs(10)).unwrap();
//! # let _ = lines;
//! ```

mod error;
mod notify;
mod root;
mod wait;

pub use error::{Error, Result};
pub use notify::NotifySocket;
pub use root::{TempRoot, KEEP_TEMP_ENV};
pub use wait::{find_on_path, free_port, require, wait_until, POLL_INTERVAL, REQUIRE_DAEMONS_ENV};
