//! The Raspberry Pi side against a directory laid out like a Pi 4 boot partition
//! (Raspberry Pi OS bookworm: `auto_initramfs=1`, no `kernel=` line, board sections): what is
//! saved, how `config.txt` and `tryboot.txt` are written, and how the `tryboot` selector
//! arms the firmware (mailbox) or says why it cannot.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::path::Path;

use fleet_mod_system_upgrade::board::{read_firmware_pin, FirmwarePin};
use fleet_mod_system_upgrade::bootset::BootDir;
use fleet_mod_system_upgrade::selector::{BootSelector, RpiTryboot, SelectorError};

const CONFIG: &str = "\
# For more options and information see http://rptl.io/configtxt
dtparam=audio=on
camera_auto_detect=1
display_auto_detect=1
auto_initramfs=1
dtoverlay=vc4-kms-v3d
max_framebuffers=2
disable_fw_kms_setup=1
arm_64bit=1
disable_overscan=1
arm_boost=1

[cm4]
otg_mode=1

[pi4]
dtoverlay=disable-bt

[all]
";

fn pi_boot(dir: &Path) {
    for (f, body) in [
        ("start4.elf", "firmware"),
        ("fixup4.dat", "fixup"),
        ("bootcode.bin", "bootcode"),
        ("kernel8.img", "kernel-6.6.51"),
        ("initramfs8", "initramfs-6.6.51"),
        ("bcm2711-rpi-4-b.dtb", "dtb"),
        ("bcm2711-rpi-cm4.dtb", "dtb-cm4"),
        ("config.txt", CONFIG),
        (
            "cmdline.txt",
            "console=serial0,115200 console=tty1 root=/dev/mapper/vg0-root rootfstype=ext4 fsck.repair=yes rootwait\n",
        ),
        ("issue.txt", "Raspberry Pi reference 2024-11-19"),
    ] {
        std::fs::write(dir.join(f), body).unwrap();
    }
    std::fs::create_dir(dir.join("overlays")).unwrap();
    std::fs::write(dir.join("overlays/vc4-kms-v3d.dtbo"), "overlay").unwrap();
    std::fs::write(dir.join("overlays/disable-bt.dtbo"), "overlay").unwrap();
    std::fs::write(dir.join("overlays/README"), "readme").unwrap();
}

#[test]
fn saves_the_pi_boot_set_and_writes_config_and_tryboot() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    pi_boot(root);
    let boot = BootDir::new(root);
    let saved = boot.save_boot_set().unwrap();
    assert_eq!(
        saved,
        [
            "bcm2711-rpi-4-b.dtb",
            "bcm2711-rpi-cm4.dtb",
            "bootcode.bin",
            "cmdline.txt",
            "config.txt",
            "fixup4.dat",
            "initramfs8",
            "kernel8.img",
            "start4.elf",
            "overlays/"
        ]
    );
    let s = root.join("fleet/preupgrade");
    assert_eq!(
        std::fs::read_to_string(s.join("kernel8.img")).unwrap(),
        "kernel-6.6.51"
    );
    assert_eq!(
        std::fs::read_to_string(s.join("overlays/disable-bt.dtbo")).unwrap(),
        "overlay"
    );
    for (f, body) in [
        ("start4.elf", "firmware"),
        ("fixup4.dat", "fixup"),
        ("bootcode.bin", "bootcode"),
    ] {
        assert_eq!(
            std::fs::read_to_string(s.join(f)).unwrap(),
            body,
            "{f} saved"
        );
    }
    assert!(!s.join("issue.txt").exists(), "not part of the boot set");
    assert!(!root.join("fleet/preupgrade.tmp").exists());

    // Any boot during the upgrade boots the saved set: the firmware applies os_prefix to
    // kernel, initramfs, dtbs, overlays and cmdline, and loads the saved firmware blobs
    // named by start_file / fixup_file (os_prefix does not cover them) where the board's
    // firmware takes them: a Pi 4 with a 2022-07-14 or later bootloader. Only [pi4] names
    // them (bootcode.bin would take any start_file whatever its section).
    let dt = dir.path().join("device-tree");
    std::fs::create_dir_all(dt.join("chosen/bootloader")).unwrap();
    std::fs::write(
        dt.join("compatible"),
        b"raspberrypi,4-model-b\0brcm,bcm2711\0",
    )
    .unwrap();
    let ts = dt.join("chosen/bootloader/build-timestamp");
    std::fs::write(&ts, 1_705_000_000u32.to_be_bytes()).unwrap(); // 2024-01-11
    let pin = read_firmware_pin(&dt);
    assert_eq!(pin, FirmwarePin::Pi4);
    boot.point_default_at_saved(&pin).unwrap();
    let config = std::fs::read_to_string(root.join("config.txt")).unwrap();
    assert!(config.starts_with(CONFIG.trim_end()));
    assert!(
        config.ends_with(
            "\n[all]\nos_prefix=fleet/preupgrade/\n[pi4]\n\
             start_file=fleet/preupgrade/start4.elf\nfixup_file=fleet/preupgrade/fixup4.dat\n[all]\n"
        ),
        "{config}"
    );
    assert!(boot.default_points_at_saved());
    // The same card on a Pi 4 whose bootloader predates sub-directory paths (or a Pi 3):
    // os_prefix only, no start_file / fixup_file; the blobs stay saved for a rollback.
    std::fs::write(&ts, 1_619_654_400u32.to_be_bytes()).unwrap(); // 2021-04-29
    let pin = read_firmware_pin(&dt);
    assert!(
        matches!(&pin, FirmwarePin::NotPinned(why) if why.contains("built 2021-04-29")),
        "{pin:?}"
    );
    boot.point_default_at_saved(&pin).unwrap();
    let old_bootloader = std::fs::read_to_string(root.join("config.txt")).unwrap();
    assert_eq!(
        old_bootloader,
        format!(
            "{}\n[all]\nos_prefix=fleet/preupgrade/\n",
            CONFIG.trim_end()
        )
    );
    assert!(boot.default_points_at_saved());
    assert!(s.join("start4.elf").is_file() && s.join("fixup4.dat").is_file());
    boot.point_default_at_saved(&FirmwarePin::Pi4).unwrap();

    // The upgrade installs a new kernel and firmware at the top level; the trial set names
    // them (the firmware's defaults: no start_file / fixup_file).
    std::fs::write(root.join("kernel8.img"), "kernel-6.6.62").unwrap();
    std::fs::write(root.join("start4.elf"), "firmware-new").unwrap();
    boot.write_trial("2026-11-23.a").unwrap();
    let tryboot = std::fs::read_to_string(root.join("tryboot.txt")).unwrap();
    assert!(
        tryboot.starts_with(CONFIG.trim_end()),
        "the saved settings, no os_prefix"
    );
    assert!(!tryboot.contains("os_prefix"), "{tryboot}");
    assert!(
        !tryboot.contains("start_file") && !tryboot.contains("fixup_file"),
        "{tryboot}"
    );
    assert!(
        tryboot.ends_with("\n[all]\ncmdline=fleet/cmdline.trial\n"),
        "{tryboot}"
    );
    assert_eq!(
        std::fs::read_to_string(root.join("fleet/cmdline.trial")).unwrap(),
        "console=serial0,115200 console=tty1 root=/dev/mapper/vg0-root rootfstype=ext4 fsck.repair=yes rootwait fleet.upgrade=2026-11-23.a\n"
    );

    // Commit: config.txt back to the saved one (the new kernel is the top-level one).
    assert!(boot.restore_default_config().unwrap());
    assert_eq!(
        std::fs::read_to_string(root.join("config.txt")).unwrap(),
        CONFIG
    );
    assert!(!boot.default_points_at_saved());
    assert_eq!(
        std::fs::read_to_string(root.join("start4.elf")).unwrap(),
        "firmware-new",
        "after the commit the new firmware is the default"
    );
    boot.remove_trial().unwrap();
    boot.remove_saved().unwrap();
    assert!(!root.join("tryboot.txt").exists());
    assert!(!root.join("fleet/preupgrade").exists());
    assert!(
        !boot.restore_default_config().unwrap(),
        "nothing saved any more"
    );
}

#[test]
fn tryboot_selector_needs_the_trial_set_and_the_mailbox() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    pi_boot(root);
    let vcio = root.join("no-vcio");
    let sel = RpiTryboot::new(root, &vcio);
    assert_eq!(sel.name(), "rpi-tryboot");

    // No tryboot.txt: nothing to arm.
    match sel.arm() {
        Err(SelectorError::Io { path, .. }) => assert_eq!(path, root.join("tryboot.txt")),
        other => panic!("{other:?}"),
    }
    // No mailbox device (not a Pi): a clear error, never a silent success.
    std::fs::write(root.join("tryboot.txt"), "[all]\n").unwrap();
    let e = sel.arm().unwrap_err().to_string();
    assert!(
        e.contains("firmware mailbox")
            && e.contains("no-vcio")
            && e.contains("is this a Raspberry Pi?"),
        "{e}"
    );
    // A device that is not vcio: the property ioctl itself fails and says so.
    std::fs::write(&vcio, "").unwrap();
    let e = RpiTryboot::new(root, &vcio).arm().unwrap_err().to_string();
    assert!(e.contains("property ioctl failed"), "{e}");
    // Disarming where no mailbox exists has nothing to undo.
    RpiTryboot::new(root, root.join("still-no-vcio"))
        .disarm()
        .unwrap();
}
