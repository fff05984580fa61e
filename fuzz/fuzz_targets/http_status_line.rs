//! The containers module's HTTP probe reads the status line of whatever answers in the
//! container: decoding must never panic, what it accepts must be an `HTTP/1.x <3 digits>`
//! line ended within the byte cap, and reading more bytes never changes a verdict (an error
//! on a prefix stays an error, a status stays that status).
#![no_main]

use fleet_mod_containers::probe::http::{parse_status_line, StatusLine, MAX_STATUS_LINE};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let full = parse_status_line(data);
    let newline = data[..data.len().min(MAX_STATUS_LINE)]
        .iter()
        .position(|&b| b == b'\n');
    match full {
        Ok(StatusLine::Status(code)) => {
            assert!(data.starts_with(b"HTTP/1."), "accepted a non-HTTP answer");
            let end = newline.expect("accepted without a line end within the cap");
            assert!(end >= 12, "accepted a line too short for a status");
            let digits = &data[9..12];
            assert!(digits.iter().all(u8::is_ascii_digit));
            let n = digits.iter().fold(0u16, |n, d| n * 10 + u16::from(d - b'0'));
            assert_eq!(n, code, "the code is not the line's");
        }
        Ok(StatusLine::Incomplete) => {
            assert!(newline.is_none(), "a complete line left undecided");
            assert!(data.len() < MAX_STATUS_LINE, "read past the cap");
        }
        Err(_) => {}
    }
    // Every prefix agrees with the whole: errors are final, a status does not change.
    for cut in [data.len() / 2, data.len().saturating_sub(1)] {
        let part = parse_status_line(&data[..cut]);
        match part {
            Ok(StatusLine::Incomplete) => {}
            Ok(StatusLine::Status(c)) => assert_eq!(full, Ok(StatusLine::Status(c))),
            Err(e) => assert_eq!(full, Err(e), "an error on a prefix went away"),
        }
    }
});
