//! The boot partition's state file (`fleet/state.{a,b}`, CONTRACT §2), which the agent reads
//! off a FAT that power cuts and flash wear can leave in any shape: any bytes must parse or be
//! refused, never panic; whatever parses must render to bytes that parse to the same state.
#![no_main]

use fleet_mod_system_upgrade::bootstate::BootState;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(st) = BootState::parse(data) else {
        return;
    };
    match BootState::parse(&st.render()) {
        Ok(back) => assert_eq!(back, st, "rendering changed the state"),
        Err(e) => panic!("a parsed state does not parse after rendering: {e}"),
    }
});
