//! The `http` probe: a minimal HTTP/1.1 `GET` over a plain TCP stream that reads nothing but
//! the status line. The answer is outside input (whatever runs in the container): at most
//! [`MAX_STATUS_LINE`] bytes are read, the whole exchange is bounded by the probe's timeout,
//! and nothing of the answer but its 3-digit code reaches a status.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::io_text;

/// Most bytes read looking for the status line.
pub const MAX_STATUS_LINE: usize = 1024;

/// The bytes read so far, as far as a status line goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusLine {
    /// No complete line yet; read more.
    Incomplete,
    /// `HTTP/1.x <code> ...`.
    Status(u16),
}

/// Why an answer is not an HTTP/1.x status line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BadStatusLine {
    /// It does not start with `HTTP/1.`.
    #[error("not an HTTP/1.x response")]
    NotHttp,
    /// The version or the status code is malformed.
    #[error("malformed HTTP status line")]
    Malformed,
    /// No line end within [`MAX_STATUS_LINE`] bytes.
    #[error("no HTTP status line within {MAX_STATUS_LINE} bytes")]
    TooLong,
}

const PREFIX: &[u8] = b"HTTP/1.";

/// Parses the start of an HTTP response: `HTTP/1.<digit> SP <3 digits> (SP reason)? CRLF`
/// (a bare LF is accepted too). Anything not starting like `HTTP/1.` is refused as soon as
/// the first differing byte arrives; no line end within [`MAX_STATUS_LINE`] bytes is refused.
pub fn parse_status_line(buf: &[u8]) -> Result<StatusLine, BadStatusLine> {
    let head = buf.len().min(PREFIX.len());
    if buf[..head] != PREFIX[..head] {
        return Err(BadStatusLine::NotHttp);
    }
    let window = &buf[..buf.len().min(MAX_STATUS_LINE)];
    let Some(end) = window.iter().position(|&b| b == b'\n') else {
        return if buf.len() >= MAX_STATUS_LINE {
            Err(BadStatusLine::TooLong)
        } else {
            Ok(StatusLine::Incomplete)
        };
    };
    let line = &window[..end];
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let rest = &line[PREFIX.len().min(line.len())..];
    // `<digit> SP <d><d><d>` and then the end or SP.
    let ok = rest.len() >= 5
        && rest[0].is_ascii_digit()
        && rest[1] == b' '
        && rest[2..5].iter().all(u8::is_ascii_digit)
        && (rest.len() == 5 || rest[5] == b' ');
    if line.len() < PREFIX.len() || !ok {
        return Err(BadStatusLine::Malformed);
    }
    let code = rest[2..5]
        .iter()
        .fold(0u16, |n, d| n * 10 + u16::from(d - b'0'));
    Ok(StatusLine::Status(code))
}

/// `GET <path>` from `addr`, within `timeout`: the response's status code, or what went
/// wrong in a few words (`connection refused`, `timed out after 1 s`).
pub async fn get(addr: SocketAddr, path: &str, timeout: Duration) -> Result<u16, String> {
    // The manifest's check allows only printable ASCII without spaces; the request line must
    // hold whatever reaches here.
    if path.is_empty() || !path.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("the path is not a request path".into());
    }
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await.map_err(|e| io_text(&e))?;
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: fleet-agent\r\n\
             Accept: */*\r\nConnection: close\r\n\r\n"
        );
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| io_text(&e))?;
        let mut buf = [0u8; MAX_STATUS_LINE];
        let mut len = 0;
        loop {
            match parse_status_line(&buf[..len]) {
                Ok(StatusLine::Status(code)) => return Ok(code),
                Ok(StatusLine::Incomplete) => {}
                Err(e) => return Err(e.to_string()),
            }
            // Incomplete means `len < MAX_STATUS_LINE`: there is room to read into.
            let n = stream
                .read(&mut buf[len..])
                .await
                .map_err(|e| io_text(&e))?;
            if n == 0 {
                return Err(if len == 0 {
                    "connection closed without an answer".into()
                } else {
                    "connection closed within the status line".into()
                });
            }
            len += n;
        }
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(r) => r,
        Err(_) => Err(format!("timed out after {} s", timeout.as_secs_f32())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    #[test]
    fn status_lines() {
        use StatusLine::*;
        for (input, want) in [
            (&b"HTTP/1.1 200 OK\r\n"[..], Ok(Status(200))),
            (b"HTTP/1.0 404 Not Found\r\nServer: x\r\n", Ok(Status(404))),
            (b"HTTP/1.1 503\r\n", Ok(Status(503))),
            (b"HTTP/1.1 204 \n", Ok(Status(204))),
            (b"HTTP/1.1 999 odd but three digits\n", Ok(Status(999))),
            (b"", Ok(Incomplete)),
            (b"HTT", Ok(Incomplete)),
            (b"HTTP/1.1 200 OK", Ok(Incomplete)),
            (b"SSH-2.0-OpenSSH\r\n", Err(BadStatusLine::NotHttp)),
            (b"X", Err(BadStatusLine::NotHttp)),
            (b"HTTP/2 200\r\n", Err(BadStatusLine::NotHttp)),
            (b"HTTP/1.1 20 OK\r\n", Err(BadStatusLine::Malformed)),
            (b"HTTP/1.1 2000 OK\r\n", Err(BadStatusLine::Malformed)),
            (b"HTTP/1.1  200 OK\r\n", Err(BadStatusLine::Malformed)),
            (b"HTTP/1.x 200 OK\r\n", Err(BadStatusLine::Malformed)),
            (b"HTTP/1.1 2a0 OK\r\n", Err(BadStatusLine::Malformed)),
            (b"HTTP/1.\n", Err(BadStatusLine::Malformed)),
            (b"HTTP/\n", Err(BadStatusLine::NotHttp)),
            (b"HTTP/1.1 \xff\xfe\xfd\r\n", Err(BadStatusLine::Malformed)),
        ] {
            assert_eq!(
                parse_status_line(input),
                want,
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn an_oversize_line_is_refused_at_the_cap_not_before() {
        let mut long = b"HTTP/1.1 200 ".to_vec();
        long.resize(MAX_STATUS_LINE - 1, b'a');
        assert_eq!(parse_status_line(&long), Ok(StatusLine::Incomplete));
        long.push(b'a');
        assert_eq!(parse_status_line(&long), Err(BadStatusLine::TooLong));
        // A line end past the cap does not count.
        long.extend_from_slice(b"\r\n");
        assert_eq!(parse_status_line(&long), Err(BadStatusLine::TooLong));
        // Within the cap, a long reason is fine.
        let mut ok = b"HTTP/1.1 200 ".to_vec();
        ok.resize(MAX_STATUS_LINE - 2, b'a');
        ok.extend_from_slice(b"\r\n");
        assert_eq!(parse_status_line(&ok), Ok(StatusLine::Status(200)));
    }

    /// A server answering `answer` in pieces of `chunk` bytes, `gap` apart, then closing.
    async fn server(answer: Vec<u8>, chunk: usize, gap: Duration) -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut req = [0u8; 512];
            let n = s.read(&mut req).await.unwrap();
            let req = String::from_utf8_lossy(&req[..n]).into_owned();
            assert!(req.starts_with("GET /health?x=1 HTTP/1.1\r\n"), "{req}");
            assert!(req.contains(&format!("Host: {addr}\r\n")), "{req}");
            assert!(req.contains("Connection: close\r\n"), "{req}");
            for piece in answer.chunks(chunk.max(1)) {
                if s.write_all(piece).await.is_err() {
                    return;
                }
                tokio::time::sleep(gap).await;
            }
        });
        addr
    }

    #[tokio::test]
    async fn get_reads_the_status_and_bounds_everything() {
        let t = Duration::from_secs(2);
        let addr = server(b"HTTP/1.1 503 Busy\r\n\r\n".to_vec(), 4, Duration::ZERO).await;
        assert_eq!(get(addr, "/health?x=1", t).await, Ok(503));
        // An endless body after the status line is never read.
        let mut big = b"HTTP/1.0 200 OK\r\n".to_vec();
        big.resize(1 << 20, b'x');
        let addr = server(big, 1 << 16, Duration::ZERO).await;
        assert_eq!(get(addr, "/health?x=1", t).await, Ok(200));
        // Garbage and an endless line.
        let addr = server(b"\x16\x03\x01 tls?".to_vec(), 64, Duration::ZERO).await;
        assert_eq!(
            get(addr, "/health?x=1", t).await,
            Err("not an HTTP/1.x response".into())
        );
        let mut endless = b"HTTP/1.1 200 ".to_vec();
        endless.resize(10_000, b'a');
        let addr = server(endless, 512, Duration::ZERO).await;
        let err = get(addr, "/health?x=1", t).await.unwrap_err();
        assert!(err.contains("within 1024 bytes"), "{err}");
        // Closed early.
        let addr = server(b"HTTP/1.1 2".to_vec(), 64, Duration::ZERO).await;
        let err = get(addr, "/health?x=1", t).await.unwrap_err();
        assert!(err.contains("closed within the status line"), "{err}");
    }

    #[tokio::test]
    async fn a_slow_answer_times_out() {
        // One byte every 200 ms: the status line would take 3 s, the timeout is 500 ms.
        let addr = server(
            b"HTTP/1.1 200 OK\r\n".to_vec(),
            1,
            Duration::from_millis(200),
        )
        .await;
        let started = std::time::Instant::now();
        let err = get(addr, "/health?x=1", Duration::from_millis(500))
            .await
            .unwrap_err();
        assert_eq!(err, "timed out after 0.5 s");
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[tokio::test]
    async fn refused_and_bad_paths_are_named() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        let err = get(addr, "/", Duration::from_secs(2)).await.unwrap_err();
        assert_eq!(err, "connection refused");
        for bad in ["", "/a b", "/a\r\nX: y"] {
            let err = get(addr, bad, Duration::from_secs(2)).await.unwrap_err();
            assert!(err.contains("not a request path"), "{err}");
        }
    }
}
