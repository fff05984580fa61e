//! Downloading a release into its staging dir: `file://` (resumes a partial download),
//! `nats-object://<name>` (the control plane's object store, through the runtime), with a
//! size cap; the staged file is mode 0600 and becomes executable only after verification.

use std::fs::{self, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use fleet_module_api::AgentSelf;

use crate::error::Error;

/// Where a release comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A local file (tests, USB sticks, pre-seeded images).
    File(PathBuf),
    /// An object in the control plane's `fleet-artifacts` store.
    NatsObject(String),
}

impl Location {
    /// Parses `file:///abs/path` or `nats-object://<name>`; the error names the field.
    pub fn parse(s: &str) -> Result<Self, Error> {
        let bad = |m: String| Error::BadRequest {
            field: "artifact",
            message: m,
        };
        if let Some(p) = s.strip_prefix("file://") {
            let p = PathBuf::from(p);
            if !p.is_absolute() {
                return Err(bad(format!("{s:?}: file:// needs an absolute path")));
            }
            Ok(Location::File(p))
        } else if let Some(n) = s.strip_prefix("nats-object://") {
            if n.is_empty() || n.len() > 255 || n.chars().any(|c| c.is_control()) {
                return Err(bad(format!("{s:?}: bad object name")));
            }
            Ok(Location::NatsObject(n.to_owned()))
        } else if s.starts_with("https://") || s.starts_with("http://") {
            Err(bad(format!(
                "{s:?}: HTTP(S) downloads are not built into this agent; use nats-object:// or file://"
            )))
        } else {
            Err(bad(format!(
                "{s:?}: expected nats-object://<name> or file:///<path>"
            )))
        }
    }
}

/// Downloads `loc` to `part` (at most `max_bytes`); returns the size.
pub async fn fetch(
    loc: &Location,
    part: &Path,
    max_bytes: u64,
    agent: Option<&dyn AgentSelf>,
) -> Result<u64, Error> {
    match loc {
        Location::File(src) => {
            let (src, part) = (src.clone(), part.to_owned());
            tokio::task::spawn_blocking(move || copy_resuming(&src, &part, max_bytes))
                .await
                .map_err(|e| Error::Download(format!("copy task: {e}")))?
        }
        Location::NatsObject(name) => {
            let agent =
                agent.ok_or_else(|| Error::Download("this agent has no artifact store".into()))?;
            agent
                .fetch_artifact(name, part, max_bytes)
                .await
                .map_err(|e| Error::Download(e.to_string()))
        }
    }
}

/// Copies `src` to `part`, continuing after the bytes already in `part`.
fn copy_resuming(src: &Path, part: &Path, max_bytes: u64) -> Result<u64, Error> {
    let mut from = fs::File::open(src).map_err(Error::io(src))?;
    let total = from.metadata().map_err(Error::io(src))?.len();
    if total > max_bytes {
        return Err(Error::Refused(format!(
            "artifact is {total} bytes; the limit (max_artifact_bytes) is {max_bytes}"
        )));
    }
    let mut to = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(part)
        .map_err(Error::io(part))?;
    let mut have = to.metadata().map_err(Error::io(part))?.len();
    if have > total {
        to.set_len(0).map_err(Error::io(part))?;
        have = 0;
    }
    if have > 0 {
        tracing::info!(resumed_at = have, total, "resuming a partial download");
    }
    from.seek(SeekFrom::Start(have)).map_err(Error::io(src))?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut written = have;
    loop {
        let n = from.read(&mut buf).map_err(Error::io(src))?;
        if n == 0 {
            break;
        }
        written += n as u64;
        if written > max_bytes {
            return Err(Error::Refused(format!(
                "artifact exceeds max_artifact_bytes ({max_bytes})"
            )));
        }
        to.write_all(&buf[..n]).map_err(Error::io(part))?;
    }
    to.sync_all().map_err(Error::io(part))?;
    Ok(written)
}

/// Lowercase hex SHA-256 of a file, streamed.
pub fn sha256_file(path: &Path) -> Result<String, Error> {
    let mut f = fs::File::open(path).map_err(Error::io(path))?;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = f.read(&mut buf).map_err(Error::io(path))?;
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
    }
    Ok(fleet_contract::release::hex(ctx.finish().as_ref()))
}
