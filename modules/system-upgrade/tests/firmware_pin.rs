//! The engine pins the saved firmware only where the board's firmware can take it
//! (initramfs/CONTRACT.md §7): an upgrade run from Checking to the trial reboot over a
//! temp boot partition and a temp device tree, with the LVM and systemd fakes. The upgrade
//! command copies `config.txt` as it stands while the command runs.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fleet_contract::{DeploymentStatus, SystemUpgrade};
use fleet_mod_system_upgrade::engine::{Begin, Engine};
use fleet_mod_system_upgrade::fake_lvm::FakeLvm;
use fleet_mod_system_upgrade::fake_units::FakeUnits;
use fleet_mod_system_upgrade::record::Phase;
use fleet_mod_system_upgrade::selector::VmSelector;
use fleet_mod_system_upgrade::{Config, SelectorKind};
use fleet_module_api::{CancellationToken, Clock, MemStore, StatusSink};

struct NoSink;

impl StatusSink for NoSink {
    fn deployment(&self, _status: DeploymentStatus) {}
    fn deployment_removed(&self, _name: &str) {}
    fn detail(&self, _module: &'static str, _detail: serde_json::Value) {}
}

struct Fixed;

impl Clock for Fixed {
    fn now(&self) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_764_633_600)
    }
    fn trusted(&self) -> bool {
        true
    }
}

/// A Pi boot partition with both firmware pairs and `bootcode.bin`, as Raspberry Pi OS
/// ships it for every board.
fn boot_partition(boot: &Path) {
    std::fs::create_dir_all(boot).unwrap();
    for (f, body) in [
        (
            "config.txt",
            "arm_64bit=1\nkernel=kernel8.img\ninitramfs initramfs8 followkernel\n",
        ),
        (
            "cmdline.txt",
            "console=serial0,115200 root=/dev/vg0/root rootwait\n",
        ),
        ("kernel8.img", "kernel"),
        ("initramfs8", "initramfs"),
        ("bcm2711-rpi-4-b.dtb", "dtb"),
        ("start.elf", "start"),
        ("fixup.dat", "fixup"),
        ("start4.elf", "start4"),
        ("fixup4.dat", "fixup4"),
        ("bootcode.bin", "bootcode"),
    ] {
        std::fs::write(boot.join(f), body).unwrap();
    }
}

struct Outcome {
    /// `config.txt` while the upgrade command ran.
    during: String,
    /// The phase history's messages.
    history: Vec<(Phase, String)>,
    boot_log: String,
}

/// Runs upgrade `pin-1` on a device whose device tree holds `compatible` and, if given, the
/// bootloader's build timestamp.
async fn upgrade(compatible: Option<&[u8]>, timestamp: Option<u32>) -> Outcome {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let boot = root.join("boot");
    boot_partition(&boot);
    let dt = root.join("device-tree");
    std::fs::create_dir_all(dt.join("chosen/bootloader")).unwrap();
    if let Some(c) = compatible {
        std::fs::write(dt.join("compatible"), c).unwrap();
    }
    if let Some(t) = timestamp {
        std::fs::write(
            dt.join("chosen/bootloader/build-timestamp"),
            t.to_be_bytes(),
        )
        .unwrap();
    }
    std::fs::write(root.join("boot_id"), "boot-1\n").unwrap();
    std::fs::write(root.join("uptime"), "42.0 10.0\n").unwrap();
    let during = root.join("during.txt");
    let cfg = Config {
        boot_dir: boot.clone(),
        selector: SelectorKind::Vm,
        command: format!(
            "cp {} {}",
            boot.join("config.txt").display(),
            during.display()
        ),
        reboot_command: "true".into(),
        ..Config::default()
    };
    let store = Arc::new(MemStore::default());
    let mut engine = Engine::new(
        cfg,
        Arc::new(FakeLvm::default()),
        Arc::new(VmSelector::new(&boot)),
        Arc::new(FakeUnits::new(root.join("units"))),
        store,
        Arc::new(NoSink),
        Arc::new(Fixed),
    );
    engine.boot_id_file = root.join("boot_id");
    engine.uptime_file = root.join("uptime");
    engine.device_tree_dir = dt;
    let req: SystemUpgrade =
        serde_json::from_str(r#"{"apiVersion":"fleet/v1","id":"pin-1"}"#).unwrap();
    let Begin::Started(rec) = engine.begin(&req, "test").unwrap() else {
        panic!("not started");
    };
    engine.execute(rec, &CancellationToken::new()).await;
    let rec = engine.record("pin-1").unwrap().unwrap();
    assert_eq!(rec.phase, Phase::Rebooting, "{rec:?}");
    assert!(boot.join("tryboot.txt").is_file(), "trial armed");
    Outcome {
        during: std::fs::read_to_string(&during).unwrap(),
        history: rec
            .history
            .into_iter()
            .map(|s| (s.phase, s.message))
            .collect(),
        boot_log: std::fs::read_to_string(boot.join("fleet/boot.log")).unwrap(),
    }
}

fn not_pinned_note(o: &Outcome) -> Option<&str> {
    o.history
        .iter()
        .find(|(p, m)| *p == Phase::SavingBootSet && m.contains("not pinned"))
        .map(|(_, m)| m.as_str())
}

const APPENDIX: &str = "\n[all]\nos_prefix=fleet/preupgrade/\n";

#[tokio::test]
async fn not_a_pi_names_both_pairs() {
    // The VM harness: no device tree at all (x86), or arm64 virt's.
    for compatible in [None, Some(&b"linux,dummy-virt\0"[..])] {
        let o = upgrade(compatible, None).await;
        assert!(
            o.during.ends_with(&format!(
                "{APPENDIX}start_file=fleet/preupgrade/start.elf\nfixup_file=fleet/preupgrade/fixup.dat\n\
                 [pi4]\nstart_file=fleet/preupgrade/start4.elf\nfixup_file=fleet/preupgrade/fixup4.dat\n[all]\n"
            )),
            "{}",
            o.during
        );
        assert_eq!(not_pinned_note(&o), None, "{:?}", o.history);
        assert!(!o.boot_log.contains("not pinned"), "{}", o.boot_log);
    }
}

#[tokio::test]
async fn a_new_pi4_bootloader_gets_the_pi4_pair_only() {
    let o = upgrade(
        Some(b"raspberrypi,4-model-b\0brcm,bcm2711\0"),
        Some(1_705_000_000),
    )
    .await;
    assert!(
        o.during.ends_with(&format!(
            "{APPENDIX}[pi4]\nstart_file=fleet/preupgrade/start4.elf\nfixup_file=fleet/preupgrade/fixup4.dat\n[all]\n"
        )),
        "{}",
        o.during
    );
    assert!(!o.during.contains("start.elf"), "{}", o.during);
    assert_eq!(not_pinned_note(&o), None, "{:?}", o.history);
}

#[tokio::test]
async fn an_old_pi4_bootloader_or_a_pi3_pins_nothing_and_says_why() {
    for (compatible, timestamp, why) in [
        (
            &b"raspberrypi,4-model-b\0brcm,bcm2711\0"[..],
            Some(1_619_654_400), // 2021-04-29
            "raspberrypi,4-model-b, brcm,bcm2711: bootloader built 2021-04-29, before 2022-07-14",
        ),
        (
            &b"raspberrypi,3-model-b\0brcm,bcm2837\0"[..],
            None,
            "raspberrypi,3-model-b, brcm,bcm2837: booted by bootcode.bin",
        ),
    ] {
        let o = upgrade(Some(compatible), timestamp).await;
        assert!(o.during.ends_with(APPENDIX), "{}", o.during);
        assert!(
            !o.during.contains("start_file") && !o.during.contains("fixup_file"),
            "{}",
            o.during
        );
        let note = not_pinned_note(&o).unwrap_or_else(|| panic!("{:?}", o.history));
        assert!(
            note.starts_with(
                "boot set saved; firmware not pinned (non-trial boots load the top-level blobs): "
            ) && note.contains(why),
            "{note}"
        );
        // boot.log (on the FAT) has it once, whole, after the saved-boot-set line.
        let lines: Vec<&str> = o
            .boot_log
            .lines()
            .filter(|l| l.contains("not pinned"))
            .collect();
        assert_eq!(lines.len(), 1, "{}", o.boot_log);
        assert!(
            lines[0].ends_with(&format!("pin-1 {}", &note["boot set saved; ".len()..]))
                && o.boot_log.contains("pin-1 saved boot set: "),
            "{}",
            lines[0]
        );
    }
}
