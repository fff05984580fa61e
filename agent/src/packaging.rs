//! What the Debian package needs from the binary besides its man pages and completions
//! (generated from `cli::Cli` by `packaging/clidocs`): the cutover to a packaged version
//! (`package-cutover`, see `fleet_mod_self_upgrade::package`).

#[cfg(feature = "self-upgrade")]
pub use cutover::package_cutover;

#[cfg(feature = "self-upgrade")]
mod cutover {
    use std::time::Duration;

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
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(Error::io(bin))?;
            rt.block_on(fleet_mod_self_upgrade::verify_binary(
                bin,
                VERSION,
                &su.config_path,
                timeout,
            ))
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
}
