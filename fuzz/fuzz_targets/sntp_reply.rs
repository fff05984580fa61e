//! The time guard's SNTP reply decoder, on whatever arrives on its UDP socket: the first 8
//! bytes are the request's nonce, the rest the datagram. Decoding must never panic, and a
//! reply it accepts must satisfy every RFC 4330 check; the offset arithmetic must not
//! overflow or yield a non-finite number.
#![no_main]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fleet_mod_time_guard::sntp::{Reply, Request, Timestamp};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 8 {
        return;
    }
    let mut n = [0u8; 8];
    n.copy_from_slice(&data[..8]);
    let sent = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let req = Request::new(u64::from_be_bytes(n), sent);
    let pkt = &data[8..];
    let Ok(r) = Reply::decode(pkt, &req) else {
        return;
    };
    assert!(pkt.len() >= 48, "a short packet was accepted");
    assert_eq!(pkt[0] & 7, 4, "a reply not in server mode was accepted");
    assert!((1..=4).contains(&r.version), "version {} accepted", r.version);
    assert!((1..=15).contains(&r.stratum), "stratum {} accepted", r.stratum);
    assert_ne!(r.leap, 3, "an unsynchronized server was accepted");
    assert_eq!(r.originate, req.nonce, "a reply to another request was accepted");
    assert_ne!(r.transmit, Timestamp::ZERO);
    assert_ne!(r.receive, Timestamp::ZERO);
    assert!(r.transmit.unix_nanos() >= r.receive.unix_nanos());
    for back in [Duration::ZERO, Duration::from_secs(1 << 33)] {
        let arrived = SystemTime::now().checked_sub(back).unwrap_or(UNIX_EPOCH);
        let s = r.sample(&req, arrived);
        assert!(s.offset_secs.is_finite() && s.delay_secs.is_finite() && s.delay_secs >= 0.0);
    }
});
