//! The one place that drives a watchdog device (`/dev/watchdogN`) through the Linux
//! watchdog API (linux/watchdog.h). Opening the device arms it; only
//! [`Device::close_cleanly`] writes the magic close character `V`, which stops it. Dropping a
//! [`Device`] (an error, a panic, a restart) closes it without `V`: the timer keeps running,
//! and the board resets unless someone opens and pets it again in time.
#![allow(unsafe_code)] // ioctl(2) on our own open fd; each call has a SAFETY note

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::raw::c_int;
use std::path::Path;

/// `struct watchdog_info` from linux/watchdog.h.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct WatchdogInfo {
    /// `WDIOF_*` options the driver supports.
    pub options: u32,
    /// Firmware version of the card.
    pub firmware_version: u32,
    /// NUL-padded identity string.
    pub identity: [u8; 32],
}

// WDIOC_GETSUPPORT = _IOR('W', 0, struct watchdog_info)
nix::ioctl_read!(wdioc_getsupport, b'W', 0, WatchdogInfo);
// WDIOC_KEEPALIVE = _IOR('W', 5, int)
nix::ioctl_read!(wdioc_keepalive, b'W', 5, c_int);
// WDIOC_SETTIMEOUT = _IOWR('W', 6, int)
nix::ioctl_readwrite!(wdioc_settimeout, b'W', 6, c_int);
// WDIOC_GETTIMEOUT = _IOR('W', 7, int)
nix::ioctl_read!(wdioc_gettimeout, b'W', 7, c_int);

/// An open (so armed) watchdog device.
#[derive(Debug)]
pub struct Device {
    file: File,
}

impl Device {
    /// Opens `path` for writing, which arms the watchdog. `EBUSY` when another process
    /// (systemd with `RuntimeWatchdogSec=`) holds it.
    pub fn open(path: &Path) -> std::io::Result<Self> {
        let file = OpenOptions::new().write(true).open(path)?;
        Ok(Self { file })
    }

    /// The driver's identity (`WDIOC_GETSUPPORT`).
    pub fn identity(&self) -> std::io::Result<String> {
        let mut info = WatchdogInfo::default();
        // SAFETY: the fd is open for the lifetime of `self`; `info` is a valid, writable
        // `struct watchdog_info` the kernel fills.
        unsafe { wdioc_getsupport(self.file.as_raw_fd(), &mut info) }?;
        let end = info.identity.iter().position(|b| *b == 0).unwrap_or(32);
        Ok(String::from_utf8_lossy(&info.identity[..end]).into_owned())
    }

    /// Sets the timeout (`WDIOC_SETTIMEOUT`); returns the one the driver applied (it may
    /// round), read back with `WDIOC_GETTIMEOUT`.
    pub fn set_timeout(&self, secs: u32) -> std::io::Result<u32> {
        let mut t = c_int::try_from(secs).map_err(|_| std::io::ErrorKind::InvalidInput)?;
        // SAFETY: as above; `t` is a valid, writable int (the kernel writes the applied
        // timeout back).
        unsafe { wdioc_settimeout(self.file.as_raw_fd(), &mut t) }?;
        let mut applied: c_int = 0;
        // SAFETY: as above.
        unsafe { wdioc_gettimeout(self.file.as_raw_fd(), &mut applied) }?;
        u32::try_from(applied).map_err(|_| std::io::ErrorKind::InvalidData.into())
    }

    /// Pets the watchdog (`WDIOC_KEEPALIVE`).
    pub fn keepalive(&self) -> std::io::Result<()> {
        let mut dummy: c_int = 0;
        // SAFETY: as above; the kernel ignores the argument.
        unsafe { wdioc_keepalive(self.file.as_raw_fd(), &mut dummy) }?;
        Ok(())
    }

    /// Writes the magic close character and closes: the watchdog stops (unless the kernel
    /// was built with `nowayout`). Only on a clean shutdown.
    pub fn close_cleanly(mut self) -> std::io::Result<()> {
        self.file.write_all(b"V")?;
        self.file.flush()
    }
}
