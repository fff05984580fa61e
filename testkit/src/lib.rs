//! Test support: real daemons on free loopback ports with temp dirs.
