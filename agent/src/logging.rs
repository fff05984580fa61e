//! Logging: the journal's native protocol under systemd (`JOURNAL_STREAM` set), compact
//! human-readable stderr otherwise. `RUST_LOG` overrides the configured level.

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, EnvFilter, Layer};

/// Installs the global subscriber; safe to call once per process.
pub fn init(level: &str) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let journald = std::env::var_os("JOURNAL_STREAM")
        .is_some()
        .then(tracing_journald::layer)
        .and_then(Result::ok);
    let registry = tracing_subscriber::registry().with(filter);
    let result = match journald {
        Some(layer) => registry
            .with(layer.with_syslog_identifier("fleet-agent".into()))
            .try_init(),
        None => {
            // Under systemd (INVOCATION_ID) without a journal, the collector adds timestamps.
            let layer = fmt::layer().with_writer(std::io::stderr).with_target(false);
            let layer = if std::env::var_os("INVOCATION_ID").is_some() {
                layer.without_time().boxed()
            } else {
                layer.boxed()
            };
            registry.with(layer).try_init()
        }
    };
    // Already initialised (e.g. by a test harness): keep the existing subscriber.
    let _ = result;
}
