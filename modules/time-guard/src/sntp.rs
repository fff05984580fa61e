//! SNTP client packets (RFC 4330; RFC 5905 client mode): the 48-byte request, the reply
//! decoder with every check RFC 4330 §5 asks of a client, and the offset/delay arithmetic.
//!
//! The request's transmit timestamp is a random nonce, not the local time (as chrony does):
//! the server echoes it as the reply's originate timestamp, so an off-path forger has to
//! guess 64 bits, and the local clock is never sent. The local send and receive times are
//! kept by the caller ([`Request::sent_at`]).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Size of an NTP packet without extension fields or a MAC.
pub const PACKET_LEN: usize = 48;
/// Seconds from 1900-01-01 (NTP era 0) to 1970-01-01.
const NTP_UNIX_OFFSET: u64 = 2_208_988_800;

/// A 64-bit NTP timestamp: seconds since 1900 (era-relative) and a binary fraction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timestamp(pub u64);

impl Timestamp {
    /// The wire value zero, which RFC 5905 reserves for "unknown".
    pub const ZERO: Timestamp = Timestamp(0);

    /// The NTP timestamp of `t` (era 0 until 2036, era 1 after: the wire keeps 32 bits).
    pub fn from_system(t: SystemTime) -> Timestamp {
        let since = t.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
        let secs = since.as_secs().wrapping_add(NTP_UNIX_OFFSET) & 0xffff_ffff;
        let frac = (u64::from(since.subsec_nanos()) << 32) / 1_000_000_000;
        Timestamp((secs << 32) | frac)
    }

    /// Nanoseconds since the Unix epoch, resolving the 32-bit era as RFC 4330 §3 does:
    /// with the top bit set the time is in 1968-2036, without it in 2036-2104.
    pub fn unix_nanos(self) -> i128 {
        let secs = self.0 >> 32;
        let era_secs = if secs & 0x8000_0000 != 0 {
            secs
        } else {
            secs + (1 << 32)
        };
        let frac_nanos = ((self.0 & 0xffff_ffff) * 1_000_000_000) >> 32;
        (i128::from(era_secs) - i128::from(NTP_UNIX_OFFSET)) * 1_000_000_000
            + i128::from(frac_nanos)
    }

    fn read(b: &[u8]) -> Timestamp {
        let mut a = [0u8; 8];
        a.copy_from_slice(&b[..8]);
        Timestamp(u64::from_be_bytes(a))
    }
}

/// Nanoseconds since the Unix epoch of a local clock reading (negative before 1970).
pub fn system_nanos(t: SystemTime) -> i128 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_nanos() as i128,
        Err(e) => -(e.duration().as_nanos() as i128),
    }
}

/// One client request: the bytes to send, the nonce the reply must echo, and when it left.
#[derive(Debug, Clone)]
pub struct Request {
    /// The transmit timestamp sent (a nonce), echoed as the reply's originate timestamp.
    pub nonce: Timestamp,
    /// The local clock when the request was built (T1).
    pub sent_at: SystemTime,
}

impl Request {
    /// A request with `nonce` as its transmit timestamp, sent at `sent_at`.
    pub fn new(nonce: u64, sent_at: SystemTime) -> Request {
        // A zero transmit timestamp would make the server's originate zero, which a client
        // cannot tell from "unset"; the top bit keeps the nonce a plausible era-0 time.
        Request {
            nonce: Timestamp(nonce | (1 << 63)),
            sent_at,
        }
    }

    /// The 48 bytes on the wire: LI 0, version 4, mode 3 (client), transmit = nonce.
    pub fn encode(&self) -> [u8; PACKET_LEN] {
        let mut p = [0u8; PACKET_LEN];
        p[0] = (4 << 3) | 3;
        p[40..48].copy_from_slice(&self.nonce.0.to_be_bytes());
        p
    }
}

/// Why a reply was rejected; each names the field that failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    #[error("length: {0} bytes, an NTP reply has at least 48")]
    Short(usize),
    #[error("mode: {0}, want 4 (server)")]
    Mode(u8),
    #[error("version: {0}, want 1 to 4")]
    Version(u8),
    #[error("stratum 0: kiss-o'-death {code:?} (the server asks the client to stop or slow down)")]
    KissOfDeath { code: String },
    #[error("stratum: {0}, want 1 to 15 (16 is unsynchronized)")]
    Stratum(u8),
    #[error("leap indicator: 3 (the server's clock is not synchronized)")]
    Unsynchronized,
    #[error("transmit timestamp: zero")]
    ZeroTransmit,
    #[error("receive timestamp: zero")]
    ZeroReceive,
    #[error(
        "originate timestamp: {got:#018x} is not this request's {want:#018x} (not an answer to it)"
    )]
    Origin { got: u64, want: u64 },
    #[error("transmit timestamp: before the receive timestamp")]
    TransmitBeforeReceive,
}

/// What a valid reply says about the local clock.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// Server time minus local time, in seconds (positive: the local clock is behind).
    pub offset_secs: f64,
    /// Round-trip delay minus the server's processing time, in seconds.
    pub delay_secs: f64,
    /// The server's stratum (1 to 15).
    pub stratum: u8,
}

/// A decoded, checked reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub leap: u8,
    pub version: u8,
    pub stratum: u8,
    pub reference_id: [u8; 4],
    pub originate: Timestamp,
    pub receive: Timestamp,
    pub transmit: Timestamp,
}

impl Reply {
    /// Decodes and checks a reply to `request` (RFC 4330 §5). Never panics on any input.
    pub fn decode(buf: &[u8], request: &Request) -> Result<Reply, ReplyError> {
        if buf.len() < PACKET_LEN {
            return Err(ReplyError::Short(buf.len()));
        }
        let leap = buf[0] >> 6;
        let version = (buf[0] >> 3) & 0x7;
        let mode = buf[0] & 0x7;
        if mode != 4 {
            return Err(ReplyError::Mode(mode));
        }
        if !(1..=4).contains(&version) {
            return Err(ReplyError::Version(version));
        }
        let stratum = buf[1];
        let mut reference_id = [0u8; 4];
        reference_id.copy_from_slice(&buf[12..16]);
        let originate = Timestamp::read(&buf[24..]);
        // The origin check comes before the kiss code: a kiss from someone who does not
        // know the nonce must not make the client stop asking.
        if originate != request.nonce {
            return Err(ReplyError::Origin {
                got: originate.0,
                want: request.nonce.0,
            });
        }
        if stratum == 0 {
            let code = reference_id
                .iter()
                .map(|&c| {
                    if c.is_ascii_graphic() {
                        char::from(c)
                    } else {
                        '?'
                    }
                })
                .collect();
            return Err(ReplyError::KissOfDeath { code });
        }
        if stratum > 15 {
            return Err(ReplyError::Stratum(stratum));
        }
        if leap == 3 {
            return Err(ReplyError::Unsynchronized);
        }
        let receive = Timestamp::read(&buf[32..]);
        let transmit = Timestamp::read(&buf[40..]);
        if transmit == Timestamp::ZERO {
            return Err(ReplyError::ZeroTransmit);
        }
        if receive == Timestamp::ZERO {
            return Err(ReplyError::ZeroReceive);
        }
        if transmit.unix_nanos() < receive.unix_nanos() {
            return Err(ReplyError::TransmitBeforeReceive);
        }
        Ok(Reply {
            leap,
            version,
            stratum,
            reference_id,
            originate,
            receive,
            transmit,
        })
    }

    /// Offset and delay from this reply, the request's send time (T1) and the local time
    /// the reply arrived (T4): offset = ((T2 - T1) + (T3 - T4)) / 2,
    /// delay = (T4 - T1) - (T3 - T2).
    pub fn sample(&self, request: &Request, received_at: SystemTime) -> Sample {
        let t1 = system_nanos(request.sent_at);
        let t2 = self.receive.unix_nanos();
        let t3 = self.transmit.unix_nanos();
        let t4 = system_nanos(received_at);
        let offset = ((t2 - t1) + (t3 - t4)) / 2;
        let delay = (t4 - t1) - (t3 - t2);
        Sample {
            offset_secs: offset as f64 / 1e9,
            delay_secs: delay.max(0) as f64 / 1e9,
            stratum: self.stratum,
        }
    }
}

/// The median of the offsets (the mean of the middle two for an even count); `None` for none.
pub fn median_offset(samples: &[Sample]) -> Option<f64> {
    let mut v: Vec<f64> = samples
        .iter()
        .map(|s| s.offset_secs)
        .filter(|o| o.is_finite())
        .collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(unix_secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(unix_secs)
    }

    /// A server's reply to `req`: received and sent at `server_time`.
    fn reply(req: &Request, server_time: SystemTime) -> [u8; PACKET_LEN] {
        let mut p = [0u8; PACKET_LEN];
        p[0] = (4 << 3) | 4;
        p[1] = 2;
        p[12..16].copy_from_slice(b"GPS\0");
        p[24..32].copy_from_slice(&req.nonce.0.to_be_bytes());
        let t = Timestamp::from_system(server_time).0.to_be_bytes();
        p[32..40].copy_from_slice(&t);
        p[40..48].copy_from_slice(&t);
        p
    }

    #[test]
    fn timestamps_round_trip_across_the_2036_era_boundary() {
        for unix in [
            0u64,
            1_700_000_000,
            2_085_978_495,
            2_085_978_496,
            3_000_000_000,
        ] {
            let t = at(unix) + Duration::from_millis(250);
            let n = Timestamp::from_system(t).unix_nanos();
            let want = system_nanos(t);
            assert!((n - want).abs() < 2, "{unix}: {n} vs {want}");
        }
    }

    #[test]
    fn the_request_is_a_version_4_client_packet_carrying_the_nonce() {
        let r = Request::new(0x1234, at(1_700_000_000));
        let p = r.encode();
        assert_eq!(p[0], 0b00_100_011);
        assert_eq!(&p[1..40], &[0u8; 39][..]);
        assert_eq!(u64::from_be_bytes(p[40..48].try_into().unwrap()), r.nonce.0);
        assert_ne!(r.nonce, Timestamp::ZERO);
    }

    #[test]
    fn offset_and_delay_follow_rfc_4330() {
        let req = Request::new(7, at(1_700_000_000));
        // The server is 45 s ahead; the reply arrives 200 ms after the request left.
        let p = reply(&req, at(1_700_000_045) + Duration::from_millis(100));
        let r = Reply::decode(&p, &req).unwrap();
        let s = r.sample(&req, at(1_700_000_000) + Duration::from_millis(200));
        assert!((s.offset_secs - 45.0).abs() < 1e-6, "{s:?}");
        assert!((s.delay_secs - 0.2).abs() < 1e-6, "{s:?}");
        assert_eq!(s.stratum, 2);
        // And 5 minutes behind.
        let p = reply(&req, at(1_699_999_700) + Duration::from_millis(100));
        let s = Reply::decode(&p, &req)
            .unwrap()
            .sample(&req, at(1_700_000_000) + Duration::from_millis(200));
        assert!((s.offset_secs + 300.0).abs() < 1e-6, "{s:?}");
    }

    #[test]
    fn malformed_replies_are_rejected_naming_the_field() {
        let req = Request::new(99, at(1_700_000_000));
        let good = reply(&req, at(1_700_000_001));
        assert!(Reply::decode(&good, &req).is_ok());
        type Mangle = Box<dyn Fn(&mut Vec<u8>)>;
        let cases: Vec<(Mangle, &str)> = vec![
            (Box::new(|p| p.truncate(47)), "length: 47 bytes"),
            (Box::new(|p| p.clear()), "length: 0 bytes"),
            (Box::new(|p| p[0] = (4 << 3) | 3), "mode: 3"),
            (Box::new(|p| p[0] = (4 << 3) | 5), "mode: 5"),
            (Box::new(|p| p[0] = 4), "version: 0"),
            (Box::new(|p| p[0] = (7 << 3) | 4), "version: 7"),
            (
                Box::new(|p| {
                    p[1] = 0;
                    p[12..16].copy_from_slice(b"RATE");
                }),
                "kiss-o'-death \"RATE\"",
            ),
            (Box::new(|p| p[1] = 16), "stratum: 16"),
            (Box::new(|p| p[0] |= 0xc0), "leap indicator: 3"),
            (Box::new(|p| p[40..48].fill(0)), "transmit timestamp: zero"),
            (Box::new(|p| p[32..40].fill(0)), "receive timestamp: zero"),
            (Box::new(|p| p[31] ^= 1), "originate timestamp:"),
            (
                Box::new(|p| {
                    p[24..32].fill(0);
                    p[1] = 0;
                }),
                "originate timestamp:",
            ),
            (
                Box::new(|p| p[40] = p[40].wrapping_sub(1)),
                "before the receive",
            ),
        ];
        for (mangle, want) in cases {
            let mut p = good.to_vec();
            mangle(&mut p);
            let err = Reply::decode(&p, &req).unwrap_err().to_string();
            assert!(err.contains(want), "{err:?} lacks {want:?}");
        }
    }

    #[test]
    fn extension_fields_after_48_bytes_are_ignored() {
        let req = Request::new(5, at(1_700_000_000));
        let mut p = reply(&req, at(1_700_000_000)).to_vec();
        p.extend_from_slice(&[0xff; 20]);
        assert!(Reply::decode(&p, &req).is_ok());
    }

    #[test]
    fn the_median_of_answering_servers_wins() {
        let s = |o: f64| Sample {
            offset_secs: o,
            delay_secs: 0.0,
            stratum: 1,
        };
        assert_eq!(median_offset(&[]), None);
        assert_eq!(median_offset(&[s(3.0)]), Some(3.0));
        assert_eq!(median_offset(&[s(300.0), s(0.5), s(0.1)]), Some(0.5));
        assert_eq!(
            median_offset(&[s(1.0), s(-1.0), s(2.0), s(100.0)]),
            Some(1.5)
        );
        assert_eq!(median_offset(&[s(f64::NAN), s(2.0)]), Some(2.0));
    }
}
