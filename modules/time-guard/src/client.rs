//! Asking SNTP servers over UDP: one request per server, replies checked by
//! [`crate::sntp::Reply::decode`], answers bounded in time, the median offset of those
//! that answered.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use tokio::net::UdpSocket;

use crate::sntp::{median_offset, Reply, ReplyError, Request, Sample};

/// Why one server gave no sample.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("{server}: cannot resolve: {source}")]
    Resolve {
        server: String,
        source: std::io::Error,
    },
    #[error("{server}: no address")]
    NoAddress { server: String },
    #[error("{server}: {source}")]
    Io {
        server: String,
        source: std::io::Error,
    },
    #[error("{server}: no answer within {timeout_ms} ms")]
    Timeout { server: String, timeout_ms: u128 },
    #[error(
        "{server}: no valid answer within {timeout_ms} ms; the last datagram was rejected: {last}"
    )]
    OnlyForged {
        server: String,
        timeout_ms: u128,
        last: ReplyError,
    },
    #[error("{server}: reply rejected: {source}")]
    Rejected { server: String, source: ReplyError },
}

/// What a round of queries found.
#[derive(Debug, Default)]
pub struct Round {
    /// One per server that answered validly, in the order of the server list.
    pub samples: Vec<(String, Sample)>,
    /// One per server that did not.
    pub failures: Vec<QueryError>,
}

impl Round {
    /// The median offset of the servers that answered, in seconds.
    pub fn offset_secs(&self) -> Option<f64> {
        let s: Vec<Sample> = self.samples.iter().map(|(_, s)| *s).collect();
        median_offset(&s)
    }
}

/// A random 64-bit nonce from the OS (getrandom through `ring`).
fn nonce() -> u64 {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 8];
    // An RNG failure only weakens the nonce; the local clock's nanoseconds stand in.
    if ring::rand::SystemRandom::new().fill(&mut b).is_err() {
        let n = crate::sntp::system_nanos(SystemTime::now());
        return n as u64;
    }
    u64::from_be_bytes(b)
}

/// Asks one server (`host:port`, port 123 if none is given) and waits at most `timeout`.
/// Datagrams that do not answer this request (wrong originate timestamp) are dropped and
/// the wait goes on; any other bad reply ends the query with the reason.
pub async fn query(server: &str, timeout: Duration) -> Result<Sample, QueryError> {
    let name = server.to_owned();
    let target = if server
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        && !server.ends_with(']')
    {
        server.to_owned()
    } else {
        format!("{server}:123")
    };
    let deadline = tokio::time::Instant::now() + timeout;
    let timeout_ms = timeout.as_millis();
    let addrs: Vec<SocketAddr> =
        tokio::time::timeout_at(deadline, tokio::net::lookup_host(&target))
            .await
            .map_err(|_| QueryError::Timeout {
                server: name.clone(),
                timeout_ms,
            })?
            .map_err(|source| QueryError::Resolve {
                server: name.clone(),
                source,
            })?
            .collect();
    let addr = *addrs.first().ok_or_else(|| QueryError::NoAddress {
        server: name.clone(),
    })?;
    let io = |source| QueryError::Io {
        server: name.clone(),
        source,
    };
    let bind: SocketAddr = if addr.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let sock = UdpSocket::bind(bind).await.map_err(io)?;
    sock.connect(addr).await.map_err(io)?;
    let req = Request::new(nonce(), SystemTime::now());
    sock.send(&req.encode()).await.map_err(io)?;
    let mut buf = [0u8; 512];
    let mut last_forged = None;
    loop {
        let n = match tokio::time::timeout_at(deadline, sock.recv(&mut buf)).await {
            Err(_) => {
                return Err(match last_forged {
                    Some(last) => QueryError::OnlyForged {
                        server: name,
                        timeout_ms,
                        last,
                    },
                    None => QueryError::Timeout {
                        server: name,
                        timeout_ms,
                    },
                })
            }
            // ICMP port unreachable surfaces here on a connected socket.
            Ok(Err(e)) => return Err(io(e)),
            Ok(Ok(n)) => n,
        };
        let received_at = SystemTime::now();
        match Reply::decode(&buf[..n.min(buf.len())], &req) {
            Ok(reply) => return Ok(reply.sample(&req, received_at)),
            Err(e @ ReplyError::Origin { .. }) => last_forged = Some(e),
            Err(source) => {
                return Err(QueryError::Rejected {
                    server: name,
                    source,
                })
            }
        }
    }
}

/// Asks every server at once, each bounded by `timeout`.
pub async fn query_all(servers: &[String], timeout: Duration) -> Round {
    // Concurrently inside the caller's task (no task per server: smaller, and a round
    // never outlives its caller).
    let results = futures::future::join_all(
        servers
            .iter()
            .map(|s| async move { (s, query(s, timeout).await) }),
    )
    .await;
    let mut round = Round::default();
    for (server, r) in results {
        let server = server.clone();
        match r {
            Ok(s) => round.samples.push((server, s)),
            Err(e) => round.failures.push(e),
        }
    }
    round
}
