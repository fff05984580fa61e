//! Pure decision: what the devices found mean for probe and health.

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
}
