//! fleet-module-api
