//! The agent against a real `nats-server -js` and a real `mosquitto` fed hostile input: the
//! cache loses nothing, odd keys and topics are shown as ignored inputs, refused documents are
//! kept as key, length and reason only, and a document the broker refuses never takes the
//! device off the plane (it still answers a signed ping and keeps publishing heartbeats).
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

#[path = "../common/mod.rs"]
mod common;
mod mqtt;
mod nats;
mod support;
