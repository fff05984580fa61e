//! The one list of compiled-in modules, in start order. Each line sits behind the cargo
//! feature of the same name, so `--no-default-features --features a,b` builds a smaller agent.

use fleet_module_api::Descriptor;

/// Every module compiled into this build, in start order.
pub fn compiled_in() -> Vec<Descriptor> {
    // Module crates are added here as they land, one line each, e.g.
    // #[cfg(feature = "containers")] fleet_mod_containers::DESCRIPTOR,
    vec![]
}

/// Names of the compiled-in modules (for `fleet-agent version`).
pub fn compiled_in_names() -> Vec<&'static str> {
    compiled_in().iter().map(|d| d.name).collect()
}
