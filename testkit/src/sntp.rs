//! A test SNTP server on a loopback UDP port: it answers every client request with real
//! NTP packets (RFC 5905 server mode, stratum 2) whose clock is the host's shifted by a
//! chosen offset, or with one of the malformed replies a client must reject. It is a test
//! peer speaking the wire format, not a model of the time-guard module.

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::{Error, Result};

/// What the server sends back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum SntpBehavior {
    /// A valid reply at the host's time plus the offset.
    Valid = 0,
    /// 40 bytes of a valid reply.
    Short = 1,
    /// Mode 3 (client) instead of 4.
    WrongMode = 2,
    /// Stratum 0 with the kiss code RATE.
    KissOfDeath = 3,
    /// A zero transmit timestamp.
    ZeroTransmit = 4,
    /// An originate timestamp that is not the request's transmit timestamp.
    WrongOrigin = 5,
    /// No reply at all.
    Silent = 6,
}

impl SntpBehavior {
    fn from_u8(v: u8) -> SntpBehavior {
        match v {
            1 => SntpBehavior::Short,
            2 => SntpBehavior::WrongMode,
            3 => SntpBehavior::KissOfDeath,
            4 => SntpBehavior::ZeroTransmit,
            5 => SntpBehavior::WrongOrigin,
            6 => SntpBehavior::Silent,
            _ => SntpBehavior::Valid,
        }
    }
}

struct Shared {
    offset_ms: AtomicI64,
    behavior: AtomicU8,
    requests: AtomicUsize,
    stop: AtomicBool,
}

/// The running server; stopped when dropped.
pub struct SntpServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

const NTP_UNIX_OFFSET: i128 = 2_208_988_800;

fn ntp_timestamp(unix_nanos: i128) -> u64 {
    let secs = (unix_nanos.div_euclid(1_000_000_000) + NTP_UNIX_OFFSET) as u64 & 0xffff_ffff;
    let nanos = unix_nanos.rem_euclid(1_000_000_000) as u64;
    (secs << 32) | ((nanos << 32) / 1_000_000_000)
}

impl SntpServer {
    /// Starts a server on 127.0.0.1 (a free port) whose clock is the host's plus `offset`
    /// (negative: behind), answering validly.
    pub fn start(offset: Duration, ahead: bool) -> Result<SntpServer> {
        let io = |e| Error::io("SNTP test server: UDP socket on 127.0.0.1", e);
        let sock = UdpSocket::bind("127.0.0.1:0").map_err(io)?;
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .map_err(io)?;
        let addr = sock.local_addr().map_err(io)?;
        let ms = offset.as_millis() as i64;
        let shared = Arc::new(Shared {
            offset_ms: AtomicI64::new(if ahead { ms } else { -ms }),
            behavior: AtomicU8::new(SntpBehavior::Valid as u8),
            requests: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
        });
        let s = shared.clone();
        let thread = std::thread::spawn(move || serve(&sock, &s));
        Ok(SntpServer {
            addr,
            shared,
            thread: Some(thread),
        })
    }

    /// `127.0.0.1:<port>`, as a client's server entry.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Moves the served clock to the host's plus `offset_ms` milliseconds.
    pub fn set_offset_ms(&self, offset_ms: i64) {
        self.shared.offset_ms.store(offset_ms, Ordering::SeqCst);
    }

    /// Changes what the next replies look like.
    pub fn set_behavior(&self, b: SntpBehavior) {
        self.shared.behavior.store(b as u8, Ordering::SeqCst);
    }

    /// Client requests received so far.
    pub fn requests(&self) -> usize {
        self.shared.requests.load(Ordering::SeqCst)
    }
}

impl Drop for SntpServer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(sock: &UdpSocket, s: &Shared) {
    let mut buf = [0u8; 512];
    while !s.stop.load(Ordering::SeqCst) {
        let (n, peer) = match sock.recv_from(&mut buf) {
            Ok(v) => v,
            Err(_) => continue, // read timeout: look at `stop` again
        };
        // Only client-mode packets of at least 48 bytes are requests.
        if n < 48 || buf[0] & 0x7 != 3 {
            continue;
        }
        s.requests.fetch_add(1, Ordering::SeqCst);
        let behavior = SntpBehavior::from_u8(s.behavior.load(Ordering::SeqCst));
        if behavior == SntpBehavior::Silent {
            continue;
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as i128)
            .unwrap_or(0);
        let t = ntp_timestamp(now + i128::from(s.offset_ms.load(Ordering::SeqCst)) * 1_000_000);
        let mut p = [0u8; 48];
        p[0] = (4 << 3) | 4; // LI 0, version 4, mode 4 (server)
        p[1] = 2;
        p[2] = buf[2]; // poll, echoed
        p[3] = 0xe9; // precision 2^-23 s
        p[12..16].copy_from_slice(&[127, 0, 0, 1]);
        p[16..24].copy_from_slice(&t.to_be_bytes());
        p[24..32].copy_from_slice(&buf[40..48]); // originate = the request's transmit
        p[32..40].copy_from_slice(&t.to_be_bytes());
        p[40..48].copy_from_slice(&t.to_be_bytes());
        let mut len = 48;
        match behavior {
            SntpBehavior::Valid | SntpBehavior::Silent => {}
            SntpBehavior::Short => len = 40,
            SntpBehavior::WrongMode => p[0] = (4 << 3) | 3,
            SntpBehavior::KissOfDeath => {
                p[1] = 0;
                p[12..16].copy_from_slice(b"RATE");
            }
            SntpBehavior::ZeroTransmit => p[40..48].fill(0),
            SntpBehavior::WrongOrigin => p[31] ^= 0x5a,
        }
        let _ = sock.send_to(&p[..len], peer);
    }
}
