//! fleet-contract
