//! The one place that reads the outside world: `/sys/class/watchdog/watchdog*`.

use std::path::Path;

use serde::Serialize;

/// One watchdog device as the kernel describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Device {
    /// `watchdog0`, ...
    pub name: String,
    /// Driver identity, e.g. `i6300ESB timer`.
    pub identity: Option<String>,
    /// `active` when something (systemd) has it open and is petting it.
    pub state: Option<String>,
    /// Timeout in seconds.
    pub timeout_secs: Option<u32>,
}

/// Lists the watchdog devices under `sysfs`, sorted by name; empty when there are none.
pub fn devices(sysfs: &Path) -> std::io::Result<Vec<Device>> {
    let entries = match std::fs::read_dir(sysfs) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with("watchdog") {
            continue;
        }
        let dir = entry.path();
        let read = |f: &str| {
            std::fs::read_to_string(dir.join(f))
                .ok()
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
        };
        out.push(Device {
            identity: read("identity"),
            state: read("state"),
            timeout_secs: read("timeout").and_then(|t| t.parse().ok()),
            name,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}
