//! Logging: the journal's native protocol under systemd (`JOURNAL_STREAM` set), compact
//! human-readable stderr otherwise. `RUST_LOG` overrides the configured level.
//!
//! The filter syntax is a comma-separated list of `level` (the default for every target) and
//! `target=level` (that target and the modules under it), e.g. `info`,
//! `fleet_agent=debug,info`, `warn,fleet_mod_containers=trace`; levels are `off`, `error`,
//! `warn`, `info`, `debug`, `trace`. That is `tracing_subscriber::filter::Targets`, which needs
//! no regex engine (span and field filters, `target[span{field=value}]=level`, are not
//! supported: such a string is not a filter and the next source is used).

use tracing::level_filters::LevelFilter;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, Layer};

/// Installs the global subscriber; safe to call once per process.
pub fn init(level: &str) {
    let filter = filter(std::env::var("RUST_LOG").ok().as_deref(), level);
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

/// The filter: `RUST_LOG` when set, not blank and valid, else the configured `level` when
/// valid, else `info`.
pub fn filter(rust_log: Option<&str>, level: &str) -> Targets {
    [rust_log, Some(level)]
        .into_iter()
        .flatten()
        .filter(|s| !s.trim().is_empty())
        .find_map(|s| s.parse::<Targets>().ok())
        .unwrap_or_else(|| Targets::new().with_default(LevelFilter::INFO))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn level(t: &Targets, target: &str) -> LevelFilter {
        // The most verbose level enabled for `target`.
        [
            LevelFilter::TRACE,
            LevelFilter::DEBUG,
            LevelFilter::INFO,
            LevelFilter::WARN,
            LevelFilter::ERROR,
        ]
        .into_iter()
        .find(|l| {
            l.into_level()
                .is_some_and(|lvl| t.would_enable(target, &lvl))
        })
        .unwrap_or(LevelFilter::OFF)
    }

    #[test]
    fn documented_forms_of_the_level() {
        // config.example.toml: "info", "debug", "fleet_agent=debug,info".
        let t = filter(None, "info");
        assert_eq!(level(&t, "fleet_agent"), LevelFilter::INFO);
        assert_eq!(level(&t, "rumqttc::state"), LevelFilter::INFO);
        let t = filter(None, "debug");
        assert_eq!(level(&t, "async_nats"), LevelFilter::DEBUG);
        let t = filter(None, "fleet_agent=debug,info");
        assert_eq!(level(&t, "fleet_agent"), LevelFilter::DEBUG);
        assert_eq!(level(&t, "fleet_agent::control::nats"), LevelFilter::DEBUG);
        assert_eq!(level(&t, "fleet_mod_containers"), LevelFilter::INFO);
        let t = filter(None, "warn,fleet_mod_containers=trace");
        assert_eq!(
            level(&t, "fleet_mod_containers::engine"),
            LevelFilter::TRACE
        );
        assert_eq!(level(&t, "fleet_agent"), LevelFilter::WARN);
        assert_eq!(level(&filter(None, "off"), "fleet_agent"), LevelFilter::OFF);
        assert_eq!(level(&filter(None, "DEBUG"), "x"), LevelFilter::DEBUG);
    }

    #[test]
    fn rust_log_wins_unless_blank_or_invalid() {
        let t = filter(Some("trace"), "warn");
        assert_eq!(level(&t, "fleet_agent"), LevelFilter::TRACE);
        for unusable in ["", "  ", "fleet_agent=loud", "x[span{a=1}]=debug"] {
            let t = filter(Some(unusable), "warn");
            assert_eq!(level(&t, "fleet_agent"), LevelFilter::WARN, "{unusable:?}");
        }
    }

    #[test]
    fn a_bad_configured_level_falls_back_to_info() {
        let t = filter(None, "fleet_agent=chatty");
        assert_eq!(level(&t, "fleet_agent"), LevelFilter::INFO);
        // A bare word is a target (all its levels), as it was for EnvFilter: not a fallback.
        let t = filter(None, "chatty");
        assert_eq!(level(&t, "chatty::x"), LevelFilter::TRACE);
        assert_eq!(level(&t, "fleet_agent"), LevelFilter::OFF);
        let t = filter(Some("nope=nope"), "");
        assert_eq!(level(&t, "fleet_agent"), LevelFilter::INFO);
    }
}
