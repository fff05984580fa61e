//! The SNTP client against the testkit's SNTP server on a loopback UDP port: real packets,
//! real sockets, the offsets and malformed replies of issue 16's checks.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::time::Duration;

use fleet_mod_time_guard::client::{query, query_all, QueryError};
use fleet_testkit::{SntpBehavior, SntpServer};

const WAIT: Duration = Duration::from_millis(1500);

#[tokio::test]
async fn offsets_of_zero_plus_45_s_and_minus_5_min_are_measured() {
    for (offset, ahead, want) in [
        (Duration::ZERO, true, 0.0),
        (Duration::from_secs(45), true, 45.0),
        (Duration::from_secs(300), false, -300.0),
    ] {
        let server = SntpServer::start(offset, ahead).unwrap();
        let s = query(&server.addr().to_string(), WAIT).await.unwrap();
        assert!(
            (s.offset_secs - want).abs() < 0.25,
            "server at {want:+} s: measured {s:?}"
        );
        assert!(s.delay_secs < 0.5, "{s:?}");
        assert_eq!(s.stratum, 2);
        assert_eq!(server.requests(), 1);
    }
}

#[tokio::test]
async fn malformed_replies_are_rejected_with_the_field_named() {
    let server = SntpServer::start(Duration::ZERO, true).unwrap();
    let addr = server.addr().to_string();
    for (behavior, want) in [
        (SntpBehavior::Short, "length: 40 bytes"),
        (SntpBehavior::WrongMode, "mode: 3"),
        (SntpBehavior::KissOfDeath, "kiss-o'-death \"RATE\""),
        (SntpBehavior::ZeroTransmit, "transmit timestamp: zero"),
    ] {
        server.set_behavior(behavior);
        let err = query(&addr, WAIT).await.unwrap_err();
        assert!(
            matches!(err, QueryError::Rejected { .. }) && err.to_string().contains(want),
            "{behavior:?}: {err}"
        );
    }
    // A reply to some other request is dropped, the wait goes on, and the end says why.
    server.set_behavior(SntpBehavior::WrongOrigin);
    let err = query(&addr, Duration::from_millis(400)).await.unwrap_err();
    assert!(
        matches!(err, QueryError::OnlyForged { .. })
            && err.to_string().contains("originate timestamp"),
        "{err}"
    );
    server.set_behavior(SntpBehavior::Silent);
    let err = query(&addr, Duration::from_millis(300)).await.unwrap_err();
    assert!(matches!(err, QueryError::Timeout { .. }), "{err}");
    // And it recovers: a valid reply is accepted again.
    server.set_behavior(SntpBehavior::Valid);
    query(&addr, WAIT).await.unwrap();
}

#[tokio::test]
async fn the_median_of_the_answering_servers_wins_and_unreachable_ones_are_tolerated() {
    let a = SntpServer::start(Duration::from_secs(40), true).unwrap();
    let b = SntpServer::start(Duration::from_secs(45), true).unwrap();
    let c = SntpServer::start(Duration::from_secs(3600), true).unwrap();
    let silent = SntpServer::start(Duration::ZERO, true).unwrap();
    silent.set_behavior(SntpBehavior::Silent);
    let servers = vec![
        a.addr().to_string(),
        b.addr().to_string(),
        c.addr().to_string(),
        silent.addr().to_string(),
        "nonexistent.invalid".to_owned(),
    ];
    let round = query_all(&servers, Duration::from_millis(800)).await;
    assert_eq!(round.samples.len(), 3, "{round:?}");
    assert_eq!(round.failures.len(), 2, "{round:?}");
    let median = round.offset_secs().unwrap();
    assert!((median - 45.0).abs() < 0.25, "median {median}");
    // Nobody answers: no offset, every failure said.
    drop((a, b, c));
    let round = query_all(&servers[3..], Duration::from_millis(300)).await;
    assert!(round.offset_secs().is_none());
    assert_eq!(round.failures.len(), 2);
}
