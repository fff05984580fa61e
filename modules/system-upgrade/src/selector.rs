//! Boot selection: how the next reboot is made to boot the trial set (`tryboot.txt`) exactly
//! once (initramfs/CONTRACT.md §4). Two implementations: the Raspberry Pi firmware's
//! `tryboot` and the VM harness's file contract (its fake firmware).

use std::path::{Path, PathBuf};

/// Why the trial could not be armed or disarmed.
#[derive(Debug, thiserror::Error)]
pub enum SelectorError {
    /// A file on the boot partition.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The firmware mailbox.
    #[error("firmware mailbox {device}: {message}")]
    Mailbox {
        /// The mailbox device.
        device: PathBuf,
        /// What failed.
        message: String,
    },
}

/// Arms and disarms the one-shot trial boot of `tryboot.txt`. Narrow on purpose: the trial
/// set's files are written by [`crate::bootset::BootDir`], the same for every selector.
pub trait BootSelector: Send + Sync + 'static {
    /// `vm` | `rpi-tryboot`, as written to the state file's `selector=`.
    fn name(&self) -> &'static str;
    /// The next reboot boots `tryboot.txt`, once.
    fn arm(&self) -> Result<(), SelectorError>;
    /// The next reboot boots `config.txt`.
    fn disarm(&self) -> Result<(), SelectorError>;
}

/// Is this boot the trial of `upgrade`? (`/proc/cmdline` carries `fleet.upgrade=<upgrade>`.)
pub fn on_trial(cmdline: &str, upgrade: &str) -> bool {
    !upgrade.is_empty()
        && cmdline
            .split_whitespace()
            .any(|w| w.strip_prefix("fleet.upgrade=") == Some(upgrade))
}

/// The VM harness's fake firmware: `tryboot.flag` present = boot `tryboot.txt` once (the
/// firmware deletes the flag as it boots the trial).
#[derive(Debug, Clone)]
pub struct VmSelector {
    boot: PathBuf,
}

impl VmSelector {
    /// A selector for the boot partition mounted at `boot`.
    pub fn new(boot: impl Into<PathBuf>) -> Self {
        Self { boot: boot.into() }
    }

    fn flag(&self) -> PathBuf {
        self.boot.join("tryboot.flag")
    }
}

impl BootSelector for VmSelector {
    fn name(&self) -> &'static str {
        "vm"
    }

    fn arm(&self) -> Result<(), SelectorError> {
        let path = self.flag();
        let io = |source| SelectorError::Io {
            path: path.clone(),
            source,
        };
        let f = std::fs::File::create(&path).map_err(io)?;
        f.sync_all().map_err(io)?;
        crate::bootstate::sync_dir(&self.boot).map_err(io)
    }

    fn disarm(&self) -> Result<(), SelectorError> {
        let path = self.flag();
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(source) => return Err(SelectorError::Io { path, source }),
        }
        crate::bootstate::sync_dir(&self.boot).map_err(|source| SelectorError::Io {
            path: self.boot.clone(),
            source,
        })
    }
}

/// Raspberry Pi firmware `tryboot`: `tryboot.txt` is used for one boot when the firmware's
/// reboot flag is set. Mainline kernels do not pass `reboot "0 tryboot"` to the firmware,
/// so the flag is set through the mailbox (`/dev/vcio`, tag `SET_REBOOT_FLAGS` 0x00038064).
#[derive(Debug, Clone)]
pub struct RpiTryboot {
    boot: PathBuf,
    vcio: PathBuf,
}

impl RpiTryboot {
    /// A selector for the boot partition at `boot`, using the mailbox device `vcio`.
    pub fn new(boot: impl Into<PathBuf>, vcio: impl Into<PathBuf>) -> Self {
        Self {
            boot: boot.into(),
            vcio: vcio.into(),
        }
    }
}

impl BootSelector for RpiTryboot {
    fn name(&self) -> &'static str {
        "rpi-tryboot"
    }

    fn arm(&self) -> Result<(), SelectorError> {
        let tryboot = self.boot.join("tryboot.txt");
        if !tryboot.is_file() {
            return Err(SelectorError::Io {
                path: tryboot,
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no trial set to arm (tryboot.txt missing)",
                ),
            });
        }
        mailbox::set_reboot_flags(&self.vcio, 1)
    }

    fn disarm(&self) -> Result<(), SelectorError> {
        if !self.vcio.exists() {
            // Nothing can have armed it on this boot without the mailbox.
            return Ok(());
        }
        mailbox::set_reboot_flags(&self.vcio, 0)
    }
}

/// The VideoCore mailbox property interface (`/dev/vcio`, as `vcmailbox` uses it).
pub mod mailbox {
    use super::*;

    /// `SET_REBOOT_FLAGS`: bit 0 = boot `tryboot.txt` on the next reboot.
    pub const TAG_SET_REBOOT_FLAGS: u32 = 0x0003_8064;
    const REQUEST: u32 = 0;
    const RESPONSE_OK: u32 = 0x8000_0000;

    /// `_IOWR(100, 0, char *)`: the property ioctl of the `vcio` driver.
    pub const fn property_ioctl() -> u64 {
        const IOC_READ_WRITE: u64 = 3;
        let size = std::mem::size_of::<*mut u8>() as u64;
        (IOC_READ_WRITE << 30) | (size << 16) | (100 << 8)
    }

    /// The property buffer for one tag with a 4-byte value.
    pub fn request(tag: u32, value: u32) -> [u32; 7] {
        [7 * 4, REQUEST, tag, 4, 4, value, 0]
    }

    /// Sets the firmware reboot flags to `value`.
    pub fn set_reboot_flags(device: &Path, value: u32) -> Result<(), SelectorError> {
        use std::os::fd::AsRawFd;
        let err = |message: String| SelectorError::Mailbox {
            device: device.to_owned(),
            message,
        };
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(device)
            .map_err(|e| err(format!("cannot open: {e} (is this a Raspberry Pi?)")))?;
        let mut buf = request(TAG_SET_REBOOT_FLAGS, value);
        let rc = ioctl(f.as_raw_fd(), &mut buf);
        if rc < 0 {
            return Err(err(format!(
                "property ioctl failed: {}",
                std::io::Error::last_os_error()
            )));
        }
        if buf[1] != RESPONSE_OK {
            return Err(err(format!("firmware answered {:#010x}", buf[1])));
        }
        Ok(())
    }

    #[allow(unsafe_code)]
    fn ioctl(fd: std::os::fd::RawFd, buf: &mut [u32; 7]) -> i32 {
        // SAFETY: `buf` is an exclusively borrowed, 4-byte aligned mailbox property buffer
        // whose first word is its own size in bytes; the vcio driver reads and writes only
        // within that size. `fd` is open for the duration of the call.
        unsafe { libc::ioctl(fd, property_ioctl() as _, buf.as_mut_ptr()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trial_is_read_from_the_command_line() {
        let c = "console=ttyS0 root=/dev/vg0/root fleet.upgrade=u-1 quiet";
        assert!(on_trial(c, "u-1"));
        assert!(!on_trial(c, "u-10"));
        assert!(!on_trial(c, ""));
        assert!(!on_trial("fleet.upgrade=u-1x", "u-1"));
    }

    #[test]
    fn vm_selector_flag() {
        let dir = tempfile::tempdir().unwrap();
        let s = VmSelector::new(dir.path());
        s.arm().unwrap();
        assert!(dir.path().join("tryboot.flag").is_file());
        s.disarm().unwrap();
        s.disarm().unwrap();
        assert!(!dir.path().join("tryboot.flag").exists());
    }

    #[test]
    fn mailbox_request_layout() {
        // What `vcmailbox 0x00038064 4 4 1` sends, and vcio's ioctl number on 64-bit.
        assert_eq!(
            mailbox::request(mailbox::TAG_SET_REBOOT_FLAGS, 1),
            [28, 0, 0x0003_8064, 4, 4, 1, 0]
        );
        if std::mem::size_of::<*mut u8>() == 8 {
            assert_eq!(mailbox::property_ioctl(), 0xc008_6400);
        }
    }
}
