//! The Raspberry Pi firmware files in the boot set (initramfs/CONTRACT.md §4, §7): the
//! VideoCore firmware `start*.elf`, its matched `fixup*.dat` and, before the Pi 4,
//! `bootcode.bin`. They are loaded before any kernel, and `os_prefix` does not apply to
//! them (it covers kernels, initramfs, cmdline.txt, .dtbs and overlays only), so the saved
//! set's copies are only used when `config.txt` names them with `start_file=` /
//! `fixup_file=`. This module says which names those lines must carry; [`crate::board`]
//! says whether this board's firmware can take them at all.

use crate::board::FirmwarePin;

/// Top-level files the firmware (not the kernel) loads from the boot partition.
pub fn is_firmware_file(name: &str) -> bool {
    (name.starts_with("start") && name.ends_with(".elf"))
        || (name.starts_with("fixup") && name.ends_with(".dat"))
        || name == "bootcode.bin"
}

/// Which start/fixup pair `config` selects: an explicit `start_file=` / `fixup_file=`
/// (the last one in the file, whatever its section), else the `start_x=1` /
/// `start_debug=1` shortcuts, else the defaults. `None` for the pair means "by board":
/// (`start.elf`, `fixup.dat`) for all boards and (`start4.elf`, `fixup4.dat`) under `[pi4]`.
#[derive(Debug, PartialEq, Eq)]
enum Selection {
    Explicit {
        start: Option<String>,
        fixup: Option<String>,
    },
    ByBoard {
        all: (&'static str, &'static str),
        pi4: (&'static str, &'static str),
    },
}

fn selection(config: &str) -> Selection {
    let (mut start, mut fixup) = (None, None);
    let (mut x, mut debug) = (false, false);
    for line in config.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        let v = v.trim();
        match k.trim() {
            "start_file" => start = Some(v.trim_start_matches('/').to_owned()),
            "fixup_file" => fixup = Some(v.trim_start_matches('/').to_owned()),
            "start_x" => x = v == "1",
            "start_debug" => debug = v == "1",
            _ => {}
        }
    }
    if start.is_some() || fixup.is_some() {
        return Selection::Explicit { start, fixup };
    }
    if debug {
        Selection::ByBoard {
            all: ("start_db.elf", "fixup_db.dat"),
            pi4: ("start4db.elf", "fixup4db.dat"),
        }
    } else if x {
        Selection::ByBoard {
            all: ("start_x.elf", "fixup_x.dat"),
            pi4: ("start4x.elf", "fixup4x.dat"),
        }
    } else {
        Selection::ByBoard {
            all: ("start.elf", "fixup.dat"),
            pi4: ("start4.elf", "fixup4.dat"),
        }
    }
}

/// The `config.txt` lines (after the `[all]` + `os_prefix=` appendix) that make the
/// firmware load the blobs saved under `prefix` (e.g. `fleet/preupgrade/`) instead of the
/// top-level ones. `config` is the saved `config.txt`, `saved` the file names in the saved
/// set, `pin` what this board's firmware can take ([`crate::board::firmware_pin`]):
/// [`FirmwarePin::AnyBoard`] names the generic pair and the `[pi4]` pair,
/// [`FirmwarePin::Pi4`] the `[pi4]` pair only (an explicit `start_file=` selection goes under
/// `[pi4]` too), [`FirmwarePin::NotPinned`] nothing. Only blobs that were saved are named (a
/// missing `start_file` would not boot), and nothing when none was (a Pi 5: its firmware is
/// in the bootloader EEPROM).
pub fn saved_firmware_lines(
    config: &str,
    saved: &[String],
    prefix: &str,
    pin: &FirmwarePin,
) -> String {
    if matches!(pin, FirmwarePin::NotPinned(_)) {
        return String::new();
    }
    let any_board = *pin == FirmwarePin::AnyBoard;
    let has = |f: &str| saved.iter().any(|s| s == f);
    let mut out = String::new();
    let pair = |out: &mut String, start: &str, fixup: &str| {
        if has(start) {
            out.push_str(&format!("start_file={prefix}{start}\n"));
        }
        if has(fixup) {
            out.push_str(&format!("fixup_file={prefix}{fixup}\n"));
        }
    };
    let mut board = String::new();
    match selection(config) {
        Selection::Explicit { start, fixup } => {
            let target = if any_board { &mut out } else { &mut board };
            pair(
                target,
                start.as_deref().unwrap_or(""),
                fixup.as_deref().unwrap_or(""),
            );
        }
        Selection::ByBoard { all, pi4 } => {
            if any_board {
                pair(&mut out, all.0, all.1);
            }
            pair(&mut board, pi4.0, pi4.1);
        }
    }
    if !board.is_empty() {
        out.push_str("[pi4]\n");
        out.push_str(&board);
        out.push_str("[all]\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const ANY: FirmwarePin = FirmwarePin::AnyBoard;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn firmware_file_names() {
        for f in [
            "start4.elf",
            "start.elf",
            "start_x.elf",
            "start4cd.elf",
            "fixup4.dat",
            "fixup_db.dat",
            "bootcode.bin",
        ] {
            assert!(is_firmware_file(f), "{f}");
        }
        for f in [
            "kernel8.img",
            "startup.sh",
            "fixup.txt",
            "config.txt",
            "bootcode.img",
        ] {
            assert!(!is_firmware_file(f), "{f}");
        }
    }

    #[test]
    fn defaults_per_board_only_for_what_was_saved() {
        let saved = names(&[
            "start.elf",
            "fixup.dat",
            "start4.elf",
            "fixup4.dat",
            "config.txt",
        ]);
        assert_eq!(
            saved_firmware_lines("arm_64bit=1\n", &saved, "fleet/preupgrade/", &ANY),
            "start_file=fleet/preupgrade/start.elf\nfixup_file=fleet/preupgrade/fixup.dat\n\
             [pi4]\nstart_file=fleet/preupgrade/start4.elf\nfixup_file=fleet/preupgrade/fixup4.dat\n[all]\n"
        );
        // A Pi 4 only card (the VM harness's FAT): the [pi4] pair alone.
        let saved = names(&["start4.elf", "fixup4.dat"]);
        assert_eq!(
            saved_firmware_lines("", &saved, "p/", &ANY),
            "[pi4]\nstart_file=p/start4.elf\nfixup_file=p/fixup4.dat\n[all]\n"
        );
        // No blobs saved (a Pi 5, or a card without them): nothing.
        assert_eq!(
            saved_firmware_lines("", &names(&["kernel8.img"]), "p/", &ANY),
            ""
        );
    }

    #[test]
    fn shortcuts_and_explicit_names() {
        let saved = names(&["start_x.elf", "fixup_x.dat", "start4x.elf", "fixup4x.dat"]);
        assert_eq!(
            saved_firmware_lines("start_x=1 # camera\n", &saved, "p/", &ANY),
            "start_file=p/start_x.elf\nfixup_file=p/fixup_x.dat\n\
             [pi4]\nstart_file=p/start4x.elf\nfixup_file=p/fixup4x.dat\n[all]\n"
        );
        let saved = names(&["start4db.elf", "fixup4db.dat"]);
        assert_eq!(
            saved_firmware_lines("start_debug=1\n", &saved, "p/", &ANY),
            "[pi4]\nstart_file=p/start4db.elf\nfixup_file=p/fixup4db.dat\n[all]\n"
        );
        // Explicit names win over shortcuts and defaults; the last line counts; a leading
        // `/` (absolute on the boot partition) is the same top-level file.
        let saved = names(&["start4cd.elf", "fixup4cd.dat", "start4.elf"]);
        let c = "start_x=1\nstart_file=start4.elf\n[pi4]\nstart_file=/start4cd.elf\nfixup_file=fixup4cd.dat\n[all]\n";
        assert_eq!(
            saved_firmware_lines(c, &saved, "p/", &ANY),
            "start_file=p/start4cd.elf\nfixup_file=p/fixup4cd.dat\n"
        );
        // #start_file=... is a comment, not a selection.
        assert_eq!(
            selection("#start_file=x.elf\n"),
            selection(""),
            "comments are ignored"
        );
    }

    #[test]
    fn a_pi4_gets_the_pi4_pair_only_and_an_unpinned_board_nothing() {
        let pi4 = FirmwarePin::Pi4;
        let saved = names(&["start.elf", "fixup.dat", "start4.elf", "fixup4.dat"]);
        // Not the generic pair: only a Pi 4-series board reads this config.txt.
        assert_eq!(
            saved_firmware_lines("arm_64bit=1\n", &saved, "fleet/preupgrade/", &pi4),
            "[pi4]\nstart_file=fleet/preupgrade/start4.elf\nfixup_file=fleet/preupgrade/fixup4.dat\n[all]\n"
        );
        let saved = names(&["start4x.elf", "fixup4x.dat", "start_x.elf"]);
        assert_eq!(
            saved_firmware_lines("start_x=1\n", &saved, "p/", &pi4),
            "[pi4]\nstart_file=p/start4x.elf\nfixup_file=p/fixup4x.dat\n[all]\n"
        );
        // An explicit selection goes under [pi4] as well.
        let saved = names(&["start4cd.elf", "fixup4cd.dat"]);
        assert_eq!(
            saved_firmware_lines(
                "start_file=start4cd.elf\nfixup_file=fixup4cd.dat\n",
                &saved,
                "p/",
                &pi4
            ),
            "[pi4]\nstart_file=p/start4cd.elf\nfixup_file=p/fixup4cd.dat\n[all]\n"
        );
        // Only the generic pair saved (not a Pi 4 card): nothing to name on a Pi 4.
        assert_eq!(
            saved_firmware_lines("", &names(&["start.elf", "fixup.dat"]), "p/", &pi4),
            ""
        );
        // Not pinned (a Pi 3, a Pi 4 with an old bootloader, a Pi 5): no line at all.
        let not = FirmwarePin::NotPinned("a bootcode.bin board".into());
        let saved = names(&[
            "start.elf",
            "fixup.dat",
            "start4.elf",
            "fixup4.dat",
            "bootcode.bin",
        ]);
        assert_eq!(saved_firmware_lines("", &saved, "p/", &not), "");
        assert_eq!(
            saved_firmware_lines("start_file=start.elf\n", &saved, "p/", &not),
            ""
        );
    }
}
