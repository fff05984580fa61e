//! The one list of compiled-in modules, in start order. Each line sits behind the cargo
//! feature of the same name, so `--no-default-features --features a,b` builds a smaller agent.

use fleet_module_api::Descriptor;

/// Every module compiled into this build, in start order.
pub fn compiled_in() -> Vec<Descriptor> {
    vec![
        // First: its start gate and clock measurement come before anything time-bound.
        #[cfg(feature = "time-guard")]
        fleet_mod_time_guard::DESCRIPTOR,
        #[cfg(feature = "watchdog")]
        fleet_mod_watchdog::DESCRIPTOR,
        #[cfg(feature = "containers")]
        fleet_mod_containers::DESCRIPTOR,
        #[cfg(feature = "init-containers")]
        fleet_mod_init_containers::DESCRIPTOR,
        #[cfg(feature = "system-upgrade")]
        fleet_mod_system_upgrade::DESCRIPTOR,
        #[cfg(feature = "self-upgrade")]
        fleet_mod_self_upgrade::DESCRIPTOR,
    ]
}

/// Names of the compiled-in modules (for `fleet-agent version`).
pub fn compiled_in_names() -> Vec<&'static str> {
    compiled_in().iter().map(|d| d.name).collect()
}
