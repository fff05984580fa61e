//! Pure decision: what the devices found mean for probe and health.

use std::path::Path;

use fleet_module_api::{Health, Probe};

use crate::sysfs::Device;

/// One line describing a device.
pub fn describe(d: &Device) -> String {
    format!(
        "{} ({}): {}, timeout {}",
        d.name,
        d.identity.as_deref().unwrap_or("unknown driver"),
        d.state.as_deref().unwrap_or("state unknown"),
        d.timeout_secs
            .map_or("unknown".to_owned(), |t| format!("{t} s"))
    )
}

/// The armed device, if any.
pub fn armed(devices: &[Device]) -> Option<&Device> {
    devices
        .iter()
        .find(|d| d.state.as_deref() == Some("active"))
}

/// Probe verdict.
pub fn probe(devices: &[Device], require_armed: bool) -> Probe {
    match (devices.first(), armed(devices)) {
        (None, _) => Probe::unavailable("no hardware watchdog (no watchdog device in sysfs)"),
        (Some(_), Some(a)) => Probe::available(format!("{}; armed by systemd", describe(a))),
        (Some(d), None) if require_armed => Probe::unavailable(format!(
            "{} is not armed; set RuntimeWatchdogSec= in systemd's system.conf",
            describe(d)
        )),
        (Some(d), None) => Probe::available(format!("{}; not armed", describe(d))),
    }
}

/// Health verdict on a re-check.
pub fn health(devices: &[Device], require_armed: bool) -> Health {
    match armed(devices) {
        Some(_) => Health::Healthy,
        None if require_armed => Health::unhealthy("hardware watchdog is no longer armed"),
        None => Health::Healthy,
    }
}

/// Probe verdict when the module is to drive `device` itself: it must exist, and systemd
/// must not own the hardware watchdog (`RuntimeWatchdogUSec` of the manager, as
/// `systemctl show` prints it; `None` when that could not be asked).
pub fn device_probe(device: &Path, exists: bool, systemd_runtime: Option<&str>) -> Probe {
    let d = device.display();
    if !exists {
        return Probe::unavailable(format!("{d} does not exist (no watchdog driver loaded?)"));
    }
    match systemd_runtime.map(str::trim) {
        Some(v) if !v.is_empty() && v != "0" && v != "infinity" => Probe::unavailable(format!(
            "{d} is busy: systemd owns the hardware watchdog (RuntimeWatchdogSec={v}); \
             remove that setting for the module to drive it"
        )),
        _ => Probe::available(format!("will own {d}")),
    }
}

/// Why `device` could not be opened, for the operator.
pub fn open_error(device: &Path, e: &std::io::Error) -> String {
    let d = device.display();
    match e.raw_os_error() {
        Some(EBUSY) => format!(
            "{d} is busy (EBUSY): another process owns it (systemd with RuntimeWatchdogSec=, \
             or a watchdog daemon)"
        ),
        _ if e.kind() == std::io::ErrorKind::NotFound => format!("{d} does not exist"),
        _ if e.kind() == std::io::ErrorKind::PermissionDenied => {
            format!("{d}: permission denied (the agent runs as root on a device)")
        }
        _ => format!("cannot open {d}: {e}"),
    }
}

/// errno EBUSY on Linux.
const EBUSY: i32 = 16;

/// What to do with the owned device at each step of the pet loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// The runtime vouches for the agent: pet.
    Pet {
        /// First pet after a time without (log that it resumed).
        resumed: bool,
    },
    /// The runtime does not vouch: do not pet, so the board resets if it lasts.
    Withhold {
        /// First step without (log it once).
        first: bool,
    },
}

/// The pet decisions, stateful only to log transitions once.
#[derive(Debug, Default)]
pub struct Owner {
    withholding: bool,
}

impl Owner {
    /// Pet only while the runtime vouches for the agent (the condition that also gates its
    /// pings to systemd).
    pub fn step(&mut self, agent_healthy: bool) -> Step {
        let was = std::mem::replace(&mut self.withholding, !agent_healthy);
        if agent_healthy {
            Step::Pet { resumed: was }
        } else {
            Step::Withhold { first: !was }
        }
    }
}

/// Stop the hardware watchdog (write the magic close character) when the loop ends? Only on
/// a clean shutdown of the agent: never on an error, a panic or while unhealthy.
pub fn magic_close(clean_shutdown: bool, owner: &Owner) -> bool {
    clean_shutdown && !owner.withholding
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(state: Option<&str>) -> Device {
        Device {
            name: "watchdog0".into(),
            identity: Some("i6300ESB timer".into()),
            state: state.map(Into::into),
            timeout_secs: Some(10),
        }
    }

    #[test]
    fn table() {
        let active = [dev(Some("active"))];
        let idle = [dev(Some("inactive"))];
        for (devices, require, available, healthy) in [
            (&[][..], false, false, true),
            (&[][..], true, false, false),
            (&active[..], false, true, true),
            (&active[..], true, true, true),
            (&idle[..], false, true, true),
            (&idle[..], true, false, false),
        ] {
            assert_eq!(
                probe(devices, require).is_available(),
                available,
                "{devices:?} {require}"
            );
            assert_eq!(
                health(devices, require).is_healthy(),
                healthy,
                "{devices:?} {require}"
            );
        }
        assert!(matches!(probe(&active, false), Probe::Available { detail }
            if detail == "watchdog0 (i6300ESB timer): active, timeout 10 s; armed by systemd"));
    }

    #[test]
    fn device_probe_names_the_reason() {
        let d = Path::new("/dev/watchdog0");
        let missing = device_probe(d, false, None);
        assert!(
            matches!(&missing, Probe::Unavailable { reason } if reason.contains("does not exist")),
            "{missing:?}"
        );
        let busy = device_probe(d, true, Some("30s\n"));
        assert!(
            matches!(&busy, Probe::Unavailable { reason } if reason.contains("busy") && reason.contains("RuntimeWatchdogSec=30s")),
            "{busy:?}"
        );
        for free in [None, Some("0"), Some(""), Some("infinity")] {
            assert!(device_probe(d, true, free).is_available(), "{free:?}");
        }
        let e = std::io::Error::from_raw_os_error(EBUSY);
        assert!(open_error(d, &e).contains("EBUSY"), "{}", open_error(d, &e));
        let e = std::io::Error::from(std::io::ErrorKind::NotFound);
        assert!(open_error(d, &e).contains("does not exist"));
    }

    #[test]
    fn pets_only_while_the_runtime_vouches_and_closes_only_when_clean() {
        let mut o = Owner::default();
        assert_eq!(o.step(true), Step::Pet { resumed: false });
        assert_eq!(o.step(false), Step::Withhold { first: true });
        assert_eq!(o.step(false), Step::Withhold { first: false });
        assert!(!magic_close(true, &o), "never while unhealthy");
        assert_eq!(o.step(true), Step::Pet { resumed: true });
        assert_eq!(o.step(true), Step::Pet { resumed: false });
        assert!(magic_close(true, &o));
        assert!(!magic_close(false, &o), "never on an error or a crash");
    }
}
