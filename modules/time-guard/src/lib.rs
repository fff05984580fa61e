//! The clock guard's building blocks: the SNTP packet codec ([`sntp`]) and the client that
//! asks several servers and takes the median offset of those that answer ([`client`]).
//! The module itself (start-up refusal, mid-run drift, the `Context` clock) is built on
//! these; see the issue it arrives with.

pub mod client;
pub mod config;
pub mod sntp;
pub mod verdict;
