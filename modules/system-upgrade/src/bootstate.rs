//! The boot-partition state file (initramfs/CONTRACT.md §2): `fleet/state.a` and
//! `fleet/state.b`, POSIX-sh readable `key=value` lines closed by a `crc=` line holding the
//! POSIX `cksum` CRC of everything before it. Newest valid copy wins; a write goes over the
//! other copy, so a torn write leaves the previous state in force.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Largest reason written (bytes).
pub const MAX_REASON: usize = 200;

/// `state=` of the file (CONTRACT §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum State {
    /// No upgrade in progress.
    Idle,
    /// Written before the snapshot; root may change from here on.
    Upgrading,
    /// The trial is armed; probation.
    Trial,
    /// Commit under way.
    Committing,
    /// The new system is the default.
    Committed,
    /// A rollback is requested or under way.
    Rollback,
    /// Root merged back, old boot set restored.
    RolledBack,
    /// Ended without a reboot, or could not be rolled back.
    Failed,
}

impl State {
    /// Every state, in CONTRACT order.
    pub const ALL: [State; 8] = [
        State::Idle,
        State::Upgrading,
        State::Trial,
        State::Committing,
        State::Committed,
        State::Rollback,
        State::RolledBack,
        State::Failed,
    ];

    /// The file's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Idle => "idle",
            State::Upgrading => "upgrading",
            State::Trial => "trial",
            State::Committing => "committing",
            State::Committed => "committed",
            State::Rollback => "rollback",
            State::RolledBack => "rolled-back",
            State::Failed => "failed",
        }
    }

    /// Parses the file's spelling.
    pub fn parse(s: &str) -> Option<State> {
        State::ALL.into_iter().find(|st| st.as_str() == s)
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The contents of one state file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BootState {
    /// Sequence number; the newest valid copy wins.
    pub seq: u64,
    /// Upgrade id; empty when idle.
    pub upgrade: String,
    /// The state.
    pub state: State,
    /// Boots of the trial set that have not (yet) reached userspace.
    pub bootcount: u32,
    /// Trial boots allowed that do not reach userspace, in a row.
    pub max_boots: u32,
    /// Trial boots of this upgrade in all (the good-boot unit never resets it).
    pub trials: u32,
    /// Trial boots allowed in all, whether or not they reached userspace; 0: no limit.
    pub max_trials: u32,
    /// Uptime limit of each trial boot.
    pub deadline_secs: u64,
    /// Boot selector (`vm` | `rpi-tryboot`).
    pub selector: String,
    /// Why (rollback, failure).
    pub reason: String,
    /// Trial boots counted when the rollback was decided.
    pub boots: u32,
}

impl Default for BootState {
    fn default() -> Self {
        Self {
            seq: 0,
            upgrade: String::new(),
            state: State::Idle,
            bootcount: 0,
            max_boots: 0,
            trials: 0,
            max_trials: 0,
            deadline_secs: 0,
            selector: String::new(),
            reason: String::new(),
            boots: 0,
        }
    }
}

/// Why a copy of the state file is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// No `crc=` line.
    #[error("no crc line")]
    NoCrc,
    /// The checksum does not match.
    #[error("crc mismatch: file says {stored}, content has {actual}")]
    CrcMismatch {
        /// What the file says.
        stored: u32,
        /// What the content hashes to.
        actual: u32,
    },
    /// A value does not parse.
    #[error("key `{key}`: {message}")]
    Value {
        /// The key.
        key: String,
        /// What is wrong.
        message: String,
    },
}

/// POSIX `cksum` CRC (CRC-32, polynomial 0x04C11DB7, MSB first, length appended, inverted):
/// the first number `cksum` prints.
pub fn cksum(data: &[u8]) -> u32 {
    fn step(mut crc: u32, byte: u8) -> u32 {
        crc ^= u32::from(byte) << 24;
        for _ in 0..8 {
            crc = if crc & 0x8000_0000 != 0 {
                (crc << 1) ^ 0x04C1_1DB7
            } else {
                crc << 1
            };
        }
        crc
    }
    let mut crc = data.iter().fold(0u32, |c, &b| step(c, b));
    let mut len = data.len() as u64;
    while len > 0 {
        crc = step(crc, (len & 0xff) as u8);
        len >>= 8;
    }
    !crc
}

/// Makes `reason` fit the file: printable ASCII only, at most [`MAX_REASON`] bytes.
pub fn clean_reason(reason: &str) -> String {
    reason
        .chars()
        .map(|c| {
            if c == ' ' || c.is_ascii_graphic() {
                c
            } else {
                '?'
            }
        })
        .take(MAX_REASON)
        .collect()
}

impl BootState {
    /// The file's bytes, `crc=` line included.
    pub fn render(&self) -> Vec<u8> {
        let body = format!(
            "seq={}\nupgrade={}\nstate={}\nbootcount={}\nmax_boots={}\ntrials={}\nmax_trials={}\ndeadline_secs={}\nselector={}\nreason={}\nboots={}\n",
            self.seq,
            self.upgrade,
            self.state,
            self.bootcount,
            self.max_boots,
            self.trials,
            self.max_trials,
            self.deadline_secs,
            self.selector,
            clean_reason(&self.reason),
            self.boots
        );
        let crc = cksum(body.as_bytes());
        format!("{body}crc={crc}\n").into_bytes()
    }

    /// Parses and checks one copy. Unknown keys are ignored; missing keys read as zero.
    pub fn parse(bytes: &[u8]) -> Result<BootState, ParseError> {
        // The crc line is the last line; everything before it (newlines included) is hashed.
        let trimmed = bytes.strip_suffix(b"\n").unwrap_or(bytes);
        let crc_start = match trimmed.iter().rposition(|&b| b == b'\n') {
            Some(i) => i + 1,
            None => 0,
        };
        let crc_line = &trimmed[crc_start..];
        let stored = crc_line.strip_prefix(b"crc=").ok_or(ParseError::NoCrc)?;
        let stored: u32 = std::str::from_utf8(stored)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| ParseError::Value {
                key: "crc".into(),
                message: "not a number".into(),
            })?;
        let body = &bytes[..crc_start];
        let actual = cksum(body);
        if actual != stored {
            return Err(ParseError::CrcMismatch { stored, actual });
        }
        let text = std::str::from_utf8(body).map_err(|_| ParseError::Value {
            key: "-".into(),
            message: "not UTF-8".into(),
        })?;
        let mut st = BootState::default();
        for line in text.lines() {
            let Some((key, value)) = line.split_once('=') else {
                continue;
            };
            let num = |v: &str| -> Result<u64, ParseError> {
                if v.is_empty() {
                    return Ok(0);
                }
                v.parse().map_err(|_| ParseError::Value {
                    key: key.to_owned(),
                    message: format!("{v:?} is not a number"),
                })
            };
            let small = |v: &str| -> Result<u32, ParseError> {
                u32::try_from(num(v)?).map_err(|_| ParseError::Value {
                    key: key.to_owned(),
                    message: format!("{v} is too large"),
                })
            };
            match key {
                "seq" => st.seq = num(value)?,
                "upgrade" => st.upgrade = value.to_owned(),
                "state" => {
                    st.state = if value.is_empty() {
                        State::Idle
                    } else {
                        State::parse(value).ok_or_else(|| ParseError::Value {
                            key: "state".into(),
                            message: format!("unknown state {value:?}"),
                        })?
                    }
                }
                "bootcount" => st.bootcount = small(value)?,
                "max_boots" => st.max_boots = small(value)?,
                "trials" => st.trials = small(value)?,
                "max_trials" => st.max_trials = small(value)?,
                "deadline_secs" => st.deadline_secs = num(value)?,
                "selector" => st.selector = value.to_owned(),
                "reason" => st.reason = value.to_owned(),
                "boots" => st.boots = small(value)?,
                _ => {}
            }
        }
        Ok(st)
    }
}

/// Which copy a state was read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Copy {
    /// `state.a`
    A,
    /// `state.b`
    B,
}

/// The pair of state files in `<boot>/fleet/`.
#[derive(Debug, Clone)]
pub struct StateFiles {
    dir: PathBuf,
}

impl StateFiles {
    /// The files in `fleet_dir` (`<boot>/fleet`).
    pub fn new(fleet_dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: fleet_dir.into(),
        }
    }

    fn path(&self, c: Copy) -> PathBuf {
        self.dir.join(match c {
            Copy::A => "state.a",
            Copy::B => "state.b",
        })
    }

    fn read_copy(&self, c: Copy) -> std::io::Result<Option<BootState>> {
        match std::fs::read(self.path(c)) {
            Ok(b) => Ok(BootState::parse(&b).ok()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The winning copy: the valid one with the higher `seq`; `None` when neither is valid.
    pub fn read(&self) -> std::io::Result<Option<(BootState, Copy)>> {
        let a = self.read_copy(Copy::A)?;
        let b = self.read_copy(Copy::B)?;
        Ok(match (a, b) {
            (Some(a), Some(b)) if b.seq > a.seq => Some((b, Copy::B)),
            (Some(a), _) => Some((a, Copy::A)),
            (None, Some(b)) => Some((b, Copy::B)),
            (None, None) => None,
        })
    }

    /// The current state (`None` when there is no valid copy).
    pub fn current(&self) -> std::io::Result<Option<BootState>> {
        Ok(self.read()?.map(|(s, _)| s))
    }

    /// Writes `state` with `seq` = winner's + 1 over the copy that did not win, then syncs the
    /// file and the directory. Returns what was written.
    pub fn write(&self, state: &BootState) -> std::io::Result<BootState> {
        std::fs::create_dir_all(&self.dir)?;
        let (seq, target) = match self.read()? {
            Some((w, Copy::A)) => (w.seq + 1, Copy::B),
            Some((w, Copy::B)) => (w.seq + 1, Copy::A),
            None => (1, Copy::A),
        };
        let mut out = state.clone();
        out.seq = seq;
        out.reason = clean_reason(&out.reason);
        let path = self.path(target);
        let mut f = std::fs::File::create(&path)?;
        f.write_all(&out.render())?;
        f.sync_all()?;
        sync_dir(&self.dir)?;
        Ok(out)
    }

    /// The directory (`<boot>/fleet`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// fsyncs a directory (its entries), so a created or renamed file survives a power cut.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Renames `from` to `to` so that the rename survives a power cut on the FAT boot partition:
/// Linux vfat writes a renamed entry's directory record only when the renamed file or
/// directory itself is written back, so fsync it first, then its parent (CONTRACT §2; a cut
/// after a plain rename + parent fsync left `config.txt` on a freed cluster in the VM).
pub fn rename_durable(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::rename(from, to)?;
    std::fs::File::open(to)?.sync_all()?;
    match to.parent() {
        Some(parent) => sync_dir(parent),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> BootState {
        BootState {
            seq: 17,
            upgrade: "2026-11-23-a".into(),
            state: State::Trial,
            bootcount: 1,
            max_boots: 3,
            trials: 2,
            max_trials: 5,
            deadline_secs: 600,
            selector: "vm".into(),
            reason: String::new(),
            boots: 0,
        }
    }

    #[test]
    fn cksum_known_values() {
        // `printf '' | cksum` and `printf 'a' | cksum` / `123456789` (coreutils).
        assert_eq!(cksum(b""), 4_294_967_295);
        assert_eq!(cksum(b"a"), 1_220_704_766);
        assert_eq!(cksum(b"123456789"), 930_766_865);
    }

    #[test]
    fn cksum_matches_usr_bin_cksum() {
        let cksum_bin = Path::new("/usr/bin/cksum");
        assert!(
            cksum_bin.exists(),
            "coreutils cksum is needed for this cross-check"
        );
        let inputs: Vec<Vec<u8>> = vec![
            b"".to_vec(),
            sample().render(),
            (0u8..=255).collect(),
            vec![b'x'; 70_000],
        ];
        for input in inputs {
            let mut child = std::process::Command::new(cksum_bin)
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            child.stdin.take().unwrap().write_all(&input).unwrap();
            let out = child.wait_with_output().unwrap();
            let first: u32 = String::from_utf8(out.stdout)
                .unwrap()
                .split_whitespace()
                .next()
                .unwrap()
                .parse()
                .unwrap();
            assert_eq!(cksum(&input), first, "input of {} bytes", input.len());
        }
    }

    #[test]
    fn render_parse_round_trip_and_field_order() {
        let s = sample();
        let bytes = s.render();
        let text = String::from_utf8(bytes.clone()).unwrap();
        let keys: Vec<&str> = text.lines().map(|l| l.split('=').next().unwrap()).collect();
        assert_eq!(
            keys,
            [
                "seq",
                "upgrade",
                "state",
                "bootcount",
                "max_boots",
                "trials",
                "max_trials",
                "deadline_secs",
                "selector",
                "reason",
                "boots",
                "crc"
            ]
        );
        assert_eq!(BootState::parse(&bytes).unwrap(), s);
    }

    #[test]
    fn parse_rejects_bad_copies_and_tolerates_unknown_and_missing_keys() {
        let mut bytes = sample().render();
        bytes[5] ^= 1;
        assert!(matches!(
            BootState::parse(&bytes),
            Err(ParseError::CrcMismatch { .. })
        ));
        assert_eq!(BootState::parse(b"seq=1\n"), Err(ParseError::NoCrc));
        let body = "seq=2\nfuture=1\nstate=committed\n";
        let f = format!("{body}crc={}\n", cksum(body.as_bytes()));
        let st = BootState::parse(f.as_bytes()).unwrap();
        assert_eq!((st.seq, st.state, st.bootcount), (2, State::Committed, 0));
        let body = "seq=2\nstate=exploded\n";
        let f = format!("{body}crc={}", cksum(body.as_bytes()));
        assert!(matches!(
            BootState::parse(f.as_bytes()),
            Err(ParseError::Value { .. })
        ));
        let body = "seq=x\n";
        let f = format!("{body}crc={}\n", cksum(body.as_bytes()));
        assert!(BootState::parse(f.as_bytes()).is_err());
    }

    #[test]
    fn newest_valid_copy_wins_and_writes_alternate() {
        let dir = tempfile::tempdir().unwrap();
        let files = StateFiles::new(dir.path().join("fleet"));
        assert_eq!(files.read().unwrap(), None);
        let w1 = files.write(&sample()).unwrap();
        assert_eq!(w1.seq, 1);
        assert_eq!(files.read().unwrap().unwrap().1, Copy::A);
        let mut next = sample();
        next.state = State::Committing;
        let w2 = files.write(&next).unwrap();
        assert_eq!(w2.seq, 2);
        assert_eq!(files.read().unwrap().unwrap(), (w2.clone(), Copy::B));
        // A torn write of the next copy (over A) leaves B in force.
        let mut torn = w2.render();
        torn.truncate(20);
        std::fs::write(dir.path().join("fleet/state.a"), &torn).unwrap();
        assert_eq!(files.current().unwrap(), Some(w2));
        let w3 = files.write(&sample()).unwrap();
        assert_eq!(w3.seq, 3);
        assert_eq!(files.read().unwrap().unwrap().1, Copy::A);
    }

    /// What a torn write or a flipped bit on the FAT can leave: every prefix (but the one
    /// that only lacks the final newline) and every single-bit flip is refused, never a
    /// panic and never a different state.
    #[test]
    fn every_truncation_and_bit_flip_is_refused() {
        let mut st = sample();
        st.reason = "deadline: not committed within 600 s".into();
        let good = st.render();
        assert_eq!(BootState::parse(&good).unwrap(), st);
        for len in 0..good.len() {
            let r = BootState::parse(&good[..len]);
            if len == good.len() - 1 {
                assert_eq!(r.unwrap(), st, "only the final newline missing");
            } else {
                assert!(r.is_err(), "prefix of {len} bytes accepted: {r:?}");
            }
        }
        for i in 0..good.len() {
            for bit in 0..8 {
                let mut bad = good.clone();
                bad[i] ^= 1 << bit;
                let r = BootState::parse(&bad);
                assert!(r.is_err(), "byte {i} bit {bit} flipped, accepted: {r:?}");
            }
        }
    }

    #[test]
    fn reasons_are_cleaned() {
        let long = "é\nx".repeat(300);
        let c = clean_reason(&long);
        assert!(c.len() <= MAX_REASON);
        assert!(c.bytes().all(|b| b == b' ' || b.is_ascii_graphic()));
    }
}
