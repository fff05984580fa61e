//! Can this board's firmware load the saved firmware blobs from `fleet/preupgrade/`?
//! (initramfs/CONTRACT.md §7.) During an upgrade `config.txt` names the saved blobs with
//! `start_file=fleet/preupgrade/…` / `fixup_file=…`. That needs two things of the firmware:
//!
//! - a sub-directory path in `start_file`/`fixup_file`: the Pi 4 EEPROM bootloader takes
//!   one since pieeprom-2022-07-14 (raspberrypi/rpi-eeprom pull request #435); nothing says
//!   `bootcode.bin` (Pi 3 and older, Zero 2 W) does;
//! - honouring `[pi4]`: `bootcode.bin` handles `start_file`/`fixup_file` itself and takes
//!   the last one in the file whatever its section (raspberrypi/firmware issue #1076), so a
//!   Pi 3 would pick our `[pi4]` pair and try to boot `start4.elf`.
//!
//! The Pi 5 loads no `start*.elf` at all. So the blobs are pinned on a BCM2711 (Pi 4, Pi 400,
//! CM4) whose bootloader is new enough, and on a machine that is not a Raspberry Pi (the VM
//! harness, whose fake firmware plays a Pi 4). Elsewhere the blobs are still saved and
//! restored by a rollback, but a non-trial boot during the upgrade loads the top-level
//! (possibly new) firmware.

use std::path::Path;

/// 2022-07-14 00:00 UTC: the first Pi 4 bootloader (pieeprom-2022-07-14) that takes
/// sub-directory paths in `start_file`/`fixup_file`.
pub const SUBDIR_BOOTLOADER_SINCE: u32 = 1_657_756_800;

/// The device tree the kernel exposes.
pub const DEVICE_TREE: &str = "/proc/device-tree";

/// How `config.txt` names the saved firmware during an upgrade.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FirmwarePin {
    /// Not a Raspberry Pi (the VM harness): the generic pair under `[all]` and the Pi 4
    /// pair under `[pi4]`, for whatever firmware reads the card.
    AnyBoard,
    /// A Pi 4-series board whose bootloader takes sub-directory paths: the `[pi4]` pair only.
    Pi4,
    /// Nothing pinned, for this reason.
    NotPinned(String),
}

/// The decision for the board whose `/proc/device-tree/compatible` is `compatible` (its
/// bytes: NUL-separated strings; `None` when the file does not exist) and whose
/// `/proc/device-tree/chosen/bootloader/build-timestamp` is `build_timestamp` (a big-endian
/// u32 Unix time on Pi 4 bootloaders; `None` when absent).
///
/// A Pi 4 whose timestamp is absent or not exactly 4 bytes is not pinned: its bootloader's
/// date is unknown (a bootloader too old to export the timestamp is also too old for
/// sub-directories in `start_file=`), and pinning on a bootloader that cannot load `fleet/preupgrade/start4.elf`
/// stops every non-trial boot before a kernel runs (the card no longer boots without a
/// hand), while not pinning only costs the old kernel a boot on the top-level firmware —
/// the same as an upgrade without this pin (the rule of initramfs/CONTRACT.md §7).
pub fn firmware_pin(compatible: Option<&[u8]>, build_timestamp: Option<&[u8]>) -> FirmwarePin {
    let Some(compatible) = compatible else {
        return FirmwarePin::AnyBoard;
    };
    let entries: Vec<String> = compatible
        .split(|b| *b == 0)
        .filter(|e| !e.is_empty())
        .map(|e| String::from_utf8_lossy(e).into_owned())
        .collect();
    let has = |soc: &str| entries.iter().any(|e| e == soc);
    let model = entries
        .iter()
        .find(|e| e.starts_with("raspberrypi,"))
        .map(|m| format!("{m}, "))
        .unwrap_or_default();
    if has("brcm,bcm2712") {
        return FirmwarePin::NotPinned(format!(
            "{model}brcm,bcm2712: a Pi 5 loads no start*.elf, nothing to pin"
        ));
    }
    if has("brcm,bcm2711") {
        let why = match build_timestamp {
            None => "no bootloader build-timestamp in the device tree: date unknown".to_string(),
            Some(b) => match <[u8; 4]>::try_from(b) {
                Ok(t) if u32::from_be_bytes(t) >= SUBDIR_BOOTLOADER_SINCE => {
                    return FirmwarePin::Pi4
                }
                Ok(t) => format!(
                    "bootloader built {}, before {} (sub-directories in start_file=)",
                    date(u32::from_be_bytes(t)),
                    date(SUBDIR_BOOTLOADER_SINCE)
                ),
                Err(_) => format!(
                    "bootloader build-timestamp is {} bytes, not a 4-byte time: date unknown",
                    b.len()
                ),
            },
        };
        return FirmwarePin::NotPinned(format!("{model}brcm,bcm2711: {why}"));
    }
    let pi = entries.iter().any(|e| {
        e.starts_with("raspberrypi,") || e.starts_with("brcm,bcm27") || e.starts_with("brcm,bcm283")
    });
    if pi {
        let soc = entries
            .iter()
            .find(|e| e.starts_with("brcm,"))
            .map_or("no brcm SoC entry", String::as_str);
        let old = [
            "brcm,bcm2835",
            "brcm,bcm2836",
            "brcm,bcm2837",
            "brcm,bcm2710",
        ];
        if old.iter().any(|s| has(s)) {
            return FirmwarePin::NotPinned(format!(
                "{model}{soc}: booted by bootcode.bin (no [pi4] filter, no known sub-directory start_file=)"
            ));
        }
        return FirmwarePin::NotPinned(format!(
            "{model}{soc}: a Raspberry Pi not known to take sub-directory start_file="
        ));
    }
    FirmwarePin::AnyBoard
}

/// [`firmware_pin`] for the device tree under `dir` (`/proc/device-tree`). A file that
/// exists but cannot be read pins nothing (the reason names it).
pub fn read_firmware_pin(dir: &Path) -> FirmwarePin {
    let read = |rel: &str| {
        let path = dir.join(rel);
        match std::fs::read(&path) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("cannot read {}: {e}", path.display())),
        }
    };
    match (
        read("compatible"),
        read("chosen/bootloader/build-timestamp"),
    ) {
        (Ok(c), Ok(t)) => firmware_pin(c.as_deref(), t.as_deref()),
        (Err(e), _) | (_, Err(e)) => FirmwarePin::NotPinned(format!("{e}: board unknown")),
    }
}

/// `YYYY-MM-DD` (UTC) of a Unix time.
fn date(unix: u32) -> String {
    let leap = |y: u32| (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let mut days = unix / 86_400;
    let mut year = 1970;
    loop {
        let len = if leap(year) { 366 } else { 365 };
        if days < len {
            break;
        }
        days -= len;
        year += 1;
    }
    let feb = if leap(year) { 29 } else { 28 };
    let mut month = 1;
    for len in [31, feb, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31] {
        if days < len {
            break;
        }
        days -= len;
        month += 1;
    }
    format!("{year:04}-{month:02}-{:02}", days + 1)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test
    use super::*;

    const PI4: &[u8] = b"raspberrypi,4-model-b\0brcm,bcm2711\0";
    const PI400: &[u8] = b"raspberrypi,400\0brcm,bcm2711\0";
    const CM4: &[u8] = b"raspberrypi,4-compute-module\0brcm,bcm2711\0";
    const PI3: &[u8] = b"raspberrypi,3-model-b\0brcm,bcm2837\0";
    const ZERO2W: &[u8] = b"raspberrypi,model-zero-2-w\0brcm,bcm2837\0";
    const PI3_DOWNSTREAM: &[u8] = b"raspberrypi,3-model-b-plus\0brcm,bcm2710\0";
    const PI1: &[u8] = b"raspberrypi,model-b-plus\0brcm,bcm2835\0";
    const PI5: &[u8] = b"raspberrypi,5-model-b\0brcm,bcm2712\0";
    const VIRT: &[u8] = b"linux,dummy-virt\0";

    fn not_pinned(p: FirmwarePin) -> String {
        match p {
            FirmwarePin::NotPinned(why) => why,
            other => panic!("pinned: {other:?}"),
        }
    }

    #[test]
    fn not_a_pi_pins_for_any_board() {
        assert_eq!(firmware_pin(None, None), FirmwarePin::AnyBoard);
        assert_eq!(firmware_pin(Some(VIRT), None), FirmwarePin::AnyBoard);
        // Another vendor's board with a device tree.
        let rk = b"radxa,rock-5b\0rockchip,rk3588\0";
        assert_eq!(firmware_pin(Some(rk), None), FirmwarePin::AnyBoard);
    }

    #[test]
    fn pi4_pins_only_with_a_new_bootloader_timestamp() {
        // 0x62cf5c80 = 2022-07-14 00:00:00 UTC, big-endian as the firmware writes it.
        let at = [0x62, 0xcf, 0x5c, 0x80];
        assert_eq!(u32::from_be_bytes(at), SUBDIR_BOOTLOADER_SINCE);
        let later = 1_705_000_000u32.to_be_bytes(); // 2024-01-11
        for board in [PI4, PI400, CM4] {
            let why = not_pinned(firmware_pin(Some(board), None));
            assert!(
                why.ends_with("no bootloader build-timestamp in the device tree: date unknown"),
                "{why}"
            );
            assert_eq!(firmware_pin(Some(board), Some(&at)), FirmwarePin::Pi4);
            assert_eq!(firmware_pin(Some(board), Some(&later)), FirmwarePin::Pi4);
        }
    }

    #[test]
    fn pi4_with_an_older_or_unreadable_bootloader_is_not_pinned() {
        let before = (SUBDIR_BOOTLOADER_SINCE - 1).to_be_bytes(); // 2022-07-13 23:59:59
        let why = not_pinned(firmware_pin(Some(PI4), Some(&before)));
        assert!(
            why == "raspberrypi,4-model-b, brcm,bcm2711: bootloader built 2022-07-13, before 2022-07-14 (sub-directories in start_file=)",
            "{why}"
        );
        // 2021-04-29 big-endian (read little-endian these bytes would be in 1970).
        let why = not_pinned(firmware_pin(Some(CM4), Some(&[0x60, 0x8a, 0x1f, 0x00])));
        assert!(why.contains("built 2021-04-29"), "{why}");
        // Truncated (or too long): the date is unknown, not pinned.
        for bad in [
            &[0x62, 0xcf, 0x5c][..],
            &[][..],
            &[0x62, 0xcf, 0x5c, 0x80, 0][..],
        ] {
            let why = not_pinned(firmware_pin(Some(PI4), Some(bad)));
            assert!(
                why.contains(&format!("build-timestamp is {} bytes", bad.len()))
                    && why.contains("date unknown"),
                "{why}"
            );
        }
    }

    #[test]
    fn pi5_and_bootcode_bin_boards_are_not_pinned() {
        let why = not_pinned(firmware_pin(Some(PI5), None));
        assert_eq!(
            why,
            "raspberrypi,5-model-b, brcm,bcm2712: a Pi 5 loads no start*.elf, nothing to pin"
        );
        for (board, soc) in [
            (PI3, "brcm,bcm2837"),
            (ZERO2W, "brcm,bcm2837"),
            (PI3_DOWNSTREAM, "brcm,bcm2710"),
            (PI1, "brcm,bcm2835"),
        ] {
            // A timestamp does not make an older board a Pi 4.
            let ts = 1_705_000_000u32.to_be_bytes();
            let why = not_pinned(firmware_pin(Some(board), Some(&ts)));
            assert!(
                why.contains(&format!("{soc}: booted by bootcode.bin")),
                "{why}"
            );
        }
        // A Pi this module does not know (a later SoC): not pinned either.
        let why = not_pinned(firmware_pin(
            Some(b"raspberrypi,6-model-b\0brcm,bcm2713\0"),
            None,
        ));
        assert_eq!(
            why,
            "raspberrypi,6-model-b, brcm,bcm2713: a Raspberry Pi not known to take sub-directory start_file="
        );
        // A bcm27xx SoC entry without a raspberrypi, model is still a Pi.
        let why = not_pinned(firmware_pin(Some(b"brcm,bcm2836\0"), None));
        assert!(
            why.starts_with("brcm,bcm2836: booted by bootcode.bin"),
            "{why}"
        );
    }

    #[test]
    fn reads_the_device_tree_files() {
        let dir = tempfile::tempdir().unwrap();
        let dt = dir.path();
        assert_eq!(
            read_firmware_pin(dt),
            FirmwarePin::AnyBoard,
            "no compatible"
        );
        std::fs::write(dt.join("compatible"), PI4).unwrap();
        let why = not_pinned(read_firmware_pin(dt));
        assert!(why.ends_with("date unknown"), "no timestamp: {why}");
        std::fs::create_dir_all(dt.join("chosen/bootloader")).unwrap();
        let ts = dt.join("chosen/bootloader/build-timestamp");
        std::fs::write(&ts, 1_600_000_000u32.to_be_bytes()).unwrap(); // 2020-09-13
        assert!(not_pinned(read_firmware_pin(dt)).contains("built 2020-09-13"));
        std::fs::write(&ts, 1_700_000_000u32.to_be_bytes()).unwrap();
        assert_eq!(read_firmware_pin(dt), FirmwarePin::Pi4);
        // A timestamp that cannot be read (here: a directory) pins nothing.
        std::fs::remove_file(&ts).unwrap();
        std::fs::create_dir(&ts).unwrap();
        let why = not_pinned(read_firmware_pin(dt));
        assert!(
            why.starts_with("cannot read ") && why.contains("build-timestamp"),
            "{why}"
        );
    }

    #[test]
    fn dates() {
        assert_eq!(date(0), "1970-01-01");
        assert_eq!(date(SUBDIR_BOOTLOADER_SINCE), "2022-07-14");
        assert_eq!(date(SUBDIR_BOOTLOADER_SINCE - 1), "2022-07-13");
        assert_eq!(date(951_782_400), "2000-02-29");
        assert_eq!(date(951_868_800), "2000-03-01");
        assert_eq!(date(1_709_164_800), "2024-02-29");
        assert_eq!(date(u32::MAX), "2106-02-07");
    }
}
