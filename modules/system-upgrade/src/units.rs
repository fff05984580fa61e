//! The one place that talks to systemd about the upgrade command. The command runs in its own
//! transient service, `fleet-os-upgrade-<id>.service`, not as a child of the agent: a package
//! postinst that restarts `fleet-agent.service` (an `apt-get full-upgrade` that upgrades the
//! agent itself) then restarts only the agent, and the agent follows the unit again after its
//! start. Behind the narrow [`Units`] trait so the engine is tested on hosts without systemd
//! (see `fake_units`).
//!
//! The real argv ([`SystemdUnits`]):
//!
//! ```text
//! systemd-run --unit=fleet-os-upgrade-<id>.service --description=fleet-agent OS upgrade <id>
//!     --quiet --service-type=exec --property=RemainAfterExit=yes
//!     --setenv=DEBIAN_FRONTEND=noninteractive -- /bin/sh -c <command>
//! systemctl show --property=LoadState,ActiveState,SubState,Result,ExecMainCode,ExecMainStatus <unit>
//! journalctl --unit=<unit> --output=cat --lines=20 --no-pager --quiet
//! systemctl stop <unit>            (the command timeout; and before the unit is released)
//! systemctl reset-failed <unit>    (after the result is taken, so the name is free again)
//! ```
//!
//! `Type=exec`: `systemd-run` returns once `/bin/sh` was executed (and fails when it cannot
//! be). `RemainAfterExit=yes` and no `--collect`: after a success the unit stays
//! `active/exited`, after a failure `failed` with `Result=` and `ExecMainStatus=`, until the
//! agent took the result and released it, however long the agent was away. Output goes to
//! the journal (the default of a transient service).

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;

/// Prefix of the upgrade command's unit.
pub const UNIT_PREFIX: &str = "fleet-os-upgrade-";
/// Lines of the journal kept in the phase history.
pub const JOURNAL_LINES: usize = 20;
/// How long one `systemctl`/`journalctl`/`systemd-run` call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(120);

/// The unit of upgrade `id`: `fleet-os-upgrade-<id>.service`. Upgrade ids are
/// `[A-Za-z0-9._-]{1,64}` (fleet_contract), all valid in a unit name; anything else (an id
/// adopted from elsewhere) is replaced by `_` and a hash of the id is appended, so two ids
/// never share a unit.
pub fn unit_name(id: &str) -> String {
    let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-');
    if !id.is_empty() && id.len() <= 64 && id.chars().all(ok) {
        return format!("{UNIT_PREFIX}{id}.service");
    }
    let clean: String = id
        .chars()
        .map(|c| if ok(c) { c } else { '_' })
        .take(64)
        .collect();
    // FNV-1a, 32 bits: stable across builds and versions (the name is persisted).
    let hash = id.bytes().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    format!("{UNIT_PREFIX}{clean}-{hash:08x}.service")
}

/// A failed systemd call, naming the command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{command}` failed: {message}")]
pub struct UnitError {
    /// The command line (or what the fake did).
    pub command: String,
    /// Exit status and the tail of stderr, or why it could not run.
    pub message: String,
}

/// The properties of a unit the engine reads (`systemctl show`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UnitStatus {
    /// `loaded`, `not-found`, ...
    pub load_state: String,
    /// `active`, `activating`, `deactivating`, `inactive`, `failed`, ...
    pub active_state: String,
    /// `running`, `exited`, `failed`, `dead`, ...
    pub sub_state: String,
    /// `success`, `exit-code`, `signal`, `core-dump`, `timeout`, ...
    pub result: String,
    /// How the main process ended: 0 not yet, 1 exited, 2 killed, 3 dumped (`CLD_*`).
    pub exec_main_code: i32,
    /// Its exit status, or the signal number.
    pub exec_main_status: i32,
}

/// Where the command stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Still running (or being stopped).
    Running,
    /// Exited 0.
    Succeeded,
    /// Ended otherwise; what happened.
    Failed(String),
    /// No result is kept (the unit is unknown or inactive); what was found.
    Gone(String),
}

/// The `--property=` list of [`UnitStatus`].
pub const SHOW_PROPERTIES: &str =
    "LoadState,ActiveState,SubState,Result,ExecMainCode,ExecMainStatus";

impl UnitStatus {
    /// Parses `systemctl show --property=...` output (`Key=value` lines).
    pub fn parse(text: &str) -> Result<UnitStatus, String> {
        let mut st = UnitStatus::default();
        let num = |k: &str, v: &str| {
            v.trim()
                .parse::<i32>()
                .map_err(|_| format!("{k}={v:?} is not a number"))
        };
        for line in text.lines() {
            let Some((k, v)) = line.split_once('=') else {
                continue;
            };
            match k {
                "LoadState" => st.load_state = v.to_owned(),
                "ActiveState" => st.active_state = v.to_owned(),
                "SubState" => st.sub_state = v.to_owned(),
                "Result" => st.result = v.to_owned(),
                "ExecMainCode" => st.exec_main_code = num(k, v)?,
                "ExecMainStatus" => st.exec_main_status = num(k, v)?,
                _ => {}
            }
        }
        if st.load_state.is_empty() || st.active_state.is_empty() {
            return Err(format!(
                "no LoadState/ActiveState in the output: {:?}",
                crate::tail(text, 200)
            ));
        }
        Ok(st)
    }

    /// How the main process ended, in words.
    pub fn exit_text(&self) -> String {
        match self.exec_main_code {
            1 => format!("exit status {}", self.exec_main_status),
            2 => format!("killed by signal {}", self.exec_main_status),
            3 => format!("killed by signal {} (core dumped)", self.exec_main_status),
            _ => "the command never ran".to_owned(),
        }
    }

    /// What the properties mean for a `Type=exec`, `RemainAfterExit=yes` service.
    pub fn outcome(&self) -> Outcome {
        let state = format!(
            "{}/{} (Result={}, {})",
            self.active_state,
            self.sub_state,
            self.result,
            self.exit_text()
        );
        match self.active_state.as_str() {
            _ if self.load_state == "not-found" => Outcome::Gone("the unit does not exist".into()),
            "active" if self.sub_state == "exited" => {
                if self.exec_main_code == 1 && self.exec_main_status == 0 {
                    Outcome::Succeeded
                } else {
                    Outcome::Failed(format!("the unit is {state}"))
                }
            }
            "active" | "activating" | "deactivating" | "reloading" | "refreshing" => {
                Outcome::Running
            }
            "failed" => Outcome::Failed(format!("{} (Result={})", self.exit_text(), self.result)),
            _ => Outcome::Gone(format!("the unit is {state}, with no result kept")),
        }
    }
}

/// What the engine needs from the service manager.
#[async_trait]
pub trait Units: Send + Sync + 'static {
    /// Starts `/bin/sh -c command` in the transient service `unit` (upgrade `id`).
    async fn start(&self, unit: &str, id: &str, command: &str) -> Result<(), UnitError>;
    /// The unit's state; an unknown unit is `LoadState=not-found`, not an error.
    async fn status(&self, unit: &str) -> Result<UnitStatus, UnitError>;
    /// Stops the unit (kills the command), waiting until it is stopped.
    async fn stop(&self, unit: &str) -> Result<(), UnitError>;
    /// The last `lines` lines the command printed.
    async fn journal_tail(&self, unit: &str, lines: usize) -> Result<String, UnitError>;
    /// Forgets a finished unit (`stop`, `reset-failed`), so its name is free again.
    async fn release(&self, unit: &str) -> Result<(), UnitError>;
    /// Why no unit can be started here (`None`: the service manager is there); the probe
    /// reports it, so an upgrade is not accepted only to fail at `Upgrading`.
    fn unavailable(&self) -> Option<String> {
        None
    }
    /// How often the engine polls [`Units::status`] while the command runs.
    fn poll_interval(&self) -> Duration {
        Duration::from_secs(2)
    }
}

/// `systemd-run` arguments (the module docs show them).
pub fn run_args(unit: &str, id: &str, command: &str) -> Vec<String> {
    vec![
        format!("--unit={unit}"),
        format!("--description=fleet-agent OS upgrade {id}"),
        "--quiet".into(),
        "--service-type=exec".into(),
        "--property=RemainAfterExit=yes".into(),
        "--setenv=DEBIAN_FRONTEND=noninteractive".into(),
        "--".into(),
        "/bin/sh".into(),
        "-c".into(),
        command.into(),
    ]
}

/// `systemctl show` arguments.
pub fn show_args(unit: &str) -> Vec<String> {
    vec![
        "show".into(),
        format!("--property={SHOW_PROPERTIES}"),
        unit.into(),
    ]
}

/// `journalctl` arguments.
pub fn journal_args(unit: &str, lines: usize) -> Vec<String> {
    vec![
        format!("--unit={unit}"),
        "--output=cat".into(),
        format!("--lines={lines}"),
        "--no-pager".into(),
        "--quiet".into(),
    ]
}

/// The real thing: `systemd-run`, `systemctl`, `journalctl`.
#[derive(Debug, Clone)]
pub struct SystemdUnits {
    systemd_run: PathBuf,
    systemctl: PathBuf,
    journalctl: PathBuf,
    /// Exists iff systemd is the running service manager (`sd_booted(3)`).
    booted_marker: PathBuf,
}

impl Default for SystemdUnits {
    fn default() -> Self {
        Self {
            systemd_run: "systemd-run".into(),
            systemctl: "systemctl".into(),
            journalctl: "journalctl".into(),
            booted_marker: "/run/systemd/system".into(),
        }
    }
}

impl SystemdUnits {
    /// Runs `program args`; stdout on success. The argv of `systemd-run` holds the upgrade
    /// command, so an error names only the program and its first argument.
    async fn run(&self, program: &Path, args: &[String]) -> Result<String, UnitError> {
        let command = format!(
            "{} {}",
            program.display(),
            args.first().map_or("", String::as_str)
        );
        let out = crate::tool::run(program, args, CALL_TIMEOUT)
            .await
            .map_err(|message| UnitError { command, message })?;
        Ok(String::from_utf8_lossy(&out).into_owned())
    }
}

#[async_trait]
impl Units for SystemdUnits {
    fn unavailable(&self) -> Option<String> {
        (!self.booted_marker.is_dir()).then(|| {
            "systemd is not the running service manager (the upgrade command runs in a \
             transient systemd unit)"
                .to_owned()
        })
    }

    async fn start(&self, unit: &str, id: &str, command: &str) -> Result<(), UnitError> {
        self.run(&self.systemd_run, &run_args(unit, id, command))
            .await
            .map(drop)
    }

    async fn status(&self, unit: &str) -> Result<UnitStatus, UnitError> {
        let out = self.run(&self.systemctl, &show_args(unit)).await?;
        UnitStatus::parse(&out).map_err(|message| UnitError {
            command: format!("{} show {unit}", self.systemctl.display()),
            message,
        })
    }

    async fn stop(&self, unit: &str) -> Result<(), UnitError> {
        self.run(&self.systemctl, &["stop".into(), unit.into()])
            .await
            .map(drop)
    }

    async fn journal_tail(&self, unit: &str, lines: usize) -> Result<String, UnitError> {
        self.run(&self.journalctl, &journal_args(unit, lines)).await
    }

    async fn release(&self, unit: &str) -> Result<(), UnitError> {
        let stopped = self.stop(unit).await;
        // Fails when the unit is not failed or already gone: what counts is the state after.
        let _ = self
            .run(&self.systemctl, &["reset-failed".into(), unit.into()])
            .await;
        let st = self.status(unit).await?;
        match st.load_state.as_str() {
            "not-found" => Ok(()),
            _ if st.active_state == "inactive" => Ok(()),
            _ => Err(stopped.err().unwrap_or_else(|| UnitError {
                command: format!("{} reset-failed {unit}", self.systemctl.display()),
                message: format!("the unit is still {}/{}", st.active_state, st.sub_state),
            })),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn show(active: &str, sub: &str, result: &str, code: i32, status: i32) -> String {
        format!(
            "LoadState=loaded\nActiveState={active}\nSubState={sub}\nResult={result}\nExecMainCode={code}\nExecMainStatus={status}\n"
        )
    }

    #[test]
    fn unit_names_are_valid_and_distinct() {
        assert_eq!(unit_name("u-1"), "fleet-os-upgrade-u-1.service");
        assert_eq!(
            unit_name("2026-11-23.a_b"),
            "fleet-os-upgrade-2026-11-23.a_b.service"
        );
        let odd = unit_name("a b/c");
        assert!(odd.starts_with("fleet-os-upgrade-a_b_c-"), "{odd}");
        assert_ne!(odd, unit_name("a_b_c"));
        assert_ne!(unit_name("a b"), unit_name("a/b"));
        let long = unit_name(&"x".repeat(300));
        assert!(long.len() < 256, "{}", long.len());
        assert!(unit_name("").starts_with("fleet-os-upgrade--"));
        for n in [odd, long, unit_name("é\n\0")] {
            assert!(
                n.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')),
                "{n}"
            );
        }
    }

    /// The states systemd documents for a `Type=exec`, `RemainAfterExit=yes` service.
    #[test]
    fn outcomes_of_documented_states() {
        let o = |s: &str| UnitStatus::parse(s).unwrap().outcome();
        assert_eq!(
            o(&show("active", "running", "success", 0, 0)),
            Outcome::Running
        );
        assert_eq!(
            o(&show("activating", "start", "success", 0, 0)),
            Outcome::Running
        );
        assert_eq!(
            o(&show("deactivating", "stop-sigterm", "success", 0, 0)),
            Outcome::Running
        );
        assert_eq!(
            o(&show("active", "exited", "success", 1, 0)),
            Outcome::Succeeded
        );
        assert_eq!(
            o(&show("failed", "failed", "exit-code", 1, 100)),
            Outcome::Failed("exit status 100 (Result=exit-code)".into())
        );
        assert_eq!(
            o(&show("failed", "failed", "signal", 2, 9)),
            Outcome::Failed("killed by signal 9 (Result=signal)".into())
        );
        assert!(matches!(
            o("LoadState=not-found\nActiveState=inactive\nSubState=dead\nResult=success\nExecMainCode=0\nExecMainStatus=0\n"),
            Outcome::Gone(_)
        ));
        let Outcome::Gone(why) = o(&show("inactive", "dead", "success", 2, 15)) else {
            panic!("inactive is gone");
        };
        assert!(
            why.contains("inactive/dead") && why.contains("signal 15"),
            "{why}"
        );
    }

    #[test]
    fn unavailable_without_a_running_systemd() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut u = SystemdUnits {
            booted_marker: dir.path().join("run/systemd/system"),
            ..SystemdUnits::default()
        };
        let reason = u.unavailable().expect("no marker: unavailable");
        assert!(
            reason.contains("systemd is not the running service manager"),
            "{reason}"
        );
        std::fs::create_dir_all(&u.booted_marker).expect("mkdir");
        assert_eq!(u.unavailable(), None);
        u.booted_marker = dir.path().join("file");
        std::fs::write(&u.booted_marker, "").expect("write");
        assert!(u.unavailable().is_some(), "a plain file is no marker");
    }

    #[test]
    fn bad_show_output_is_an_error_not_a_panic() {
        assert!(UnitStatus::parse("").is_err());
        assert!(UnitStatus::parse("garbage\n").is_err());
        let e =
            UnitStatus::parse(&show("active", "exited", "success", 1, 0).replace("=0\n", "=x\n"))
                .unwrap_err();
        assert!(e.contains("ExecMainStatus"), "{e}");
    }

    #[test]
    fn command_lines() {
        assert_eq!(
            run_args("fleet-os-upgrade-u.service", "u", "apt-get -y full-upgrade").join(" "),
            "--unit=fleet-os-upgrade-u.service --description=fleet-agent OS upgrade u --quiet \
             --service-type=exec --property=RemainAfterExit=yes \
             --setenv=DEBIAN_FRONTEND=noninteractive -- /bin/sh -c apt-get -y full-upgrade"
        );
        assert_eq!(
            show_args("x.service").join(" "),
            "show --property=LoadState,ActiveState,SubState,Result,ExecMainCode,ExecMainStatus x.service"
        );
        assert_eq!(
            journal_args("x.service", 20).join(" "),
            "--unit=x.service --output=cat --lines=20 --no-pager --quiet"
        );
    }

    #[tokio::test]
    async fn a_missing_systemctl_is_a_clear_error() {
        let u = SystemdUnits {
            systemctl: "/nonexistent/systemctl".into(),
            ..SystemdUnits::default()
        };
        let e = u.status("x.service").await.unwrap_err();
        assert!(e.to_string().contains("/nonexistent/systemctl show"), "{e}");
        assert!(e.to_string().contains("cannot run"), "{e}");
    }
}
