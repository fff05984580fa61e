//! `[modules.time-guard]`.

use fleet_module_api::{parse_section, ConfigError};
use serde::Deserialize;

/// The module's name, as in `[modules.time-guard]`.
pub const NAME: &str = "time-guard";

/// What the agent does when the clock is off by more than the limit at start-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnSkew {
    /// Exit with code 4 and the clock-skew message; systemd restarts the agent, which
    /// starts once the clock is fixed. The default: nothing runs on a clock that would make
    /// signature expiry and token checks lie.
    RefuseStart,
    /// Keep reconciling from the cached desired state; refuse only time-bound work
    /// (command expiry checks, secret fetches) until the clock is back within the limit.
    Degrade,
}

/// `[modules.time-guard]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// SNTP servers, `host` or `host:port` (port 123 by default; IPv6 in brackets).
    /// Several are asked at once; the median offset of those that answer wins.
    #[serde(default = "default_servers")]
    pub servers: Vec<String>,
    /// Largest tolerated |offset|, whole seconds.
    #[serde(default = "default_limit", deserialize_with = "whole_secs")]
    pub limit_secs: u64,
    /// `refuse-start` (default) or `degrade`; read with [`Config::on_skew`].
    #[serde(default = "default_on_skew")]
    pub on_skew: String,
    /// Hours between re-checks while running (a kernel clock step also triggers one).
    #[serde(default = "default_recheck")]
    pub recheck_hours: f64,
    /// How long one round of queries may take, milliseconds.
    #[serde(default = "default_query_timeout")]
    pub query_timeout_ms: u64,
    /// Seconds between checks while the clock is skewed or unverified (and while a refused
    /// start holds): how soon a fixed clock is noticed.
    #[serde(default = "default_retry")]
    pub retry_secs: u64,
    /// Under systemd, how long a refused start holds (not READY, re-checking every
    /// `retry_secs`) before exiting with code 4; systemd's restart begins the next hold.
    /// 0: exit at once. Run by hand the agent always exits at once.
    #[serde(default = "default_hold")]
    pub hold_secs: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            servers: default_servers(),
            limit_secs: default_limit(),
            on_skew: default_on_skew(),
            recheck_hours: default_recheck(),
            query_timeout_ms: default_query_timeout(),
            retry_secs: default_retry(),
            hold_secs: default_hold(),
        }
    }
}

impl Config {
    /// Parses and checks the table (absent: the defaults); errors name the key.
    pub fn from_toml(table: Option<&toml::Value>) -> Result<Config, ConfigError> {
        let c: Config = parse_section(NAME, table)?;
        let bad = |message: String| ConfigError {
            module: NAME,
            message,
        };
        if !(1..=86_400).contains(&c.limit_secs) {
            return Err(bad(format!(
                "limit_secs: {} is not 1 to 86400 seconds",
                c.limit_secs
            )));
        }
        // (No float in the message: formatting one would cost the binary ~15 KB.)
        if !(c.recheck_hours.is_finite() && c.recheck_hours > 0.0 && c.recheck_hours <= 168.0) {
            return Err(bad(
                "recheck_hours: must be more than 0 and at most 168 (a week)".to_owned(),
            ));
        }
        if !(100..=60_000).contains(&c.query_timeout_ms) {
            return Err(bad(format!(
                "query_timeout_ms: {} is not 100 to 60000",
                c.query_timeout_ms
            )));
        }
        if !(1..=3600).contains(&c.retry_secs) {
            return Err(bad(format!(
                "retry_secs: {} is not 1 to 3600",
                c.retry_secs
            )));
        }
        if c.hold_secs > 3600 {
            return Err(bad(format!("hold_secs: {} is more than 3600", c.hold_secs)));
        }
        if let Some(s) = c
            .servers
            .iter()
            .find(|s| s.trim().is_empty() || s.chars().any(char::is_whitespace))
        {
            return Err(bad(format!("servers: {s:?} is empty or has whitespace")));
        }
        c.on_skew().map_err(bad)?;
        Ok(c)
    }

    /// `on_skew` as the enum.
    pub fn on_skew(&self) -> Result<OnSkew, String> {
        match self.on_skew.as_str() {
            "refuse-start" => Ok(OnSkew::RefuseStart),
            "degrade" => Ok(OnSkew::Degrade),
            other => Err(format!(
                "on_skew: {other:?} is not \"refuse-start\" or \"degrade\""
            )),
        }
    }
}

fn default_servers() -> Vec<String> {
    // The NTP pool's Debian zone, as systemd-timesyncd's Debian build uses.
    (0..4).map(|i| format!("{i}.debian.pool.ntp.org")).collect()
}
/// `limit_secs` as a whole number, with the key in the message (a type error from a TOML
/// value does not name its key by itself).
fn whole_secs<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    u64::deserialize(d)
        .map_err(|e| serde::de::Error::custom(format!("limit_secs: {e} (whole seconds)")))
}

fn default_limit() -> u64 {
    30
}
fn default_on_skew() -> String {
    "refuse-start".to_owned()
}
fn default_recheck() -> f64 {
    6.0
}
fn default_query_timeout() -> u64 {
    2000
}
fn default_retry() -> u64 {
    30
}
fn default_hold() -> u64 {
    600
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Config, ConfigError> {
        let v: toml::Value = toml::from_str(s).unwrap();
        Config::from_toml(Some(&v))
    }

    #[test]
    fn defaults_and_overrides() {
        let d = Config::from_toml(None).unwrap();
        assert_eq!(d.limit_secs, 30);
        assert_eq!(d.on_skew(), Ok(OnSkew::RefuseStart));
        assert_eq!(d.servers.len(), 4);
        let c =
            parse("servers = [\"127.0.0.1:1123\"]\non_skew = \"degrade\"\nlimit_secs = 5").unwrap();
        assert_eq!(c.servers, ["127.0.0.1:1123"]);
        assert_eq!(c.on_skew(), Ok(OnSkew::Degrade));
        assert_eq!(c.limit_secs, 5);
    }

    #[test]
    fn bad_values_name_their_key() {
        for (s, want) in [
            ("limit_secs = 0", "limit_secs"),
            ("limit_secs = 2.5", "limit_secs"),
            ("recheck_hours = nan", "recheck_hours"),
            ("recheck_hours = 0", "recheck_hours"),
            ("query_timeout_ms = 5", "query_timeout_ms"),
            ("servers = [\"\"]", "servers"),
            ("on_skew = \"panic\"", "on_skew"),
            ("retry_secs = 0", "retry_secs"),
            ("hold_secs = 4000", "hold_secs"),
            ("limit = 3", "limit"),
        ] {
            let e = parse(s).unwrap_err().to_string();
            assert!(e.contains(want), "{s}: {e}");
        }
    }
}
