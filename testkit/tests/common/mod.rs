//! Tiny raw-protocol clients so testkit's own tests need no client crates.
// Test-only helpers outside #[test] fns: panicking on failure is the point.
#![allow(dead_code, clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

pub const T: Duration = Duration::from_secs(10);

pub fn connect(port: u16) -> std::io::Result<TcpStream> {
    let s = TcpStream::connect_timeout(&SocketAddr::from(([127, 0, 0, 1], port)), T)?;
    s.set_read_timeout(Some(T))?;
    s.set_write_timeout(Some(T))?;
    Ok(s)
}

/// True when nothing listens on the port any more.
pub fn refuses(port: u16) -> bool {
    connect(port).is_err()
}

/// NATS: read INFO, CONNECT, ask JetStream for account info, expect a reply and PONG.
pub fn nats_jetstream_roundtrip(port: u16) -> String {
    let mut s = connect(port).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut info = String::new();
    r.read_line(&mut info).unwrap();
    assert!(info.starts_with("INFO {"), "{info}");
    s.write_all(
        b"CONNECT {\"verbose\":false,\"pedantic\":false}\r\nSUB _INBOX.t 1\r\nPUB $JS.API.INFO _INBOX.t 0\r\n\r\nPING\r\n",
    )
    .unwrap();
    let mut reply = String::new();
    loop {
        let mut line = String::new();
        assert_ne!(r.read_line(&mut line).unwrap(), 0, "eof; so far: {reply}");
        reply.push_str(&line);
        // The server may answer PING before or after the JetStream reply.
        if reply.contains("PONG\r\n") && reply.contains("account_info_response") {
            return reply;
        }
        assert!(!line.starts_with("-ERR"), "{reply}");
    }
}

/// MQTT 3.1.1: CONNECT with a clean session, expect CONNACK "accepted".
pub fn mqtt_connack(port: u16) -> [u8; 4] {
    let mut s = connect(port).unwrap();
    let client_id = b"fleet-testkit";
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 60];
    body.extend_from_slice(&(client_id.len() as u16).to_be_bytes());
    body.extend_from_slice(client_id);
    let mut pkt = vec![0x10, body.len() as u8];
    pkt.extend_from_slice(&body);
    s.write_all(&pkt).unwrap();
    let mut ack = [0u8; 4];
    s.read_exact(&mut ack).unwrap();
    ack
}

/// HTTP/1.0 GET; returns (status, body).
pub fn http_get(port: u16, path: &str) -> (u16, String) {
    let mut s = connect(port).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let status = text.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}
