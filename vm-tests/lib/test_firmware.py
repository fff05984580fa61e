"""Tests of the fake firmware's boot selection on a small real FAT image (mtools).

Run: python3 -m unittest discover -s vm-tests/lib -p 'test_*.py'
"""

from __future__ import annotations

import hashlib
import subprocess
import tempfile
import unittest
from pathlib import Path

from firmware import FatImage, FirmwareError, auto_initramfs_name, parse_config, select_boot

CONFIG = "[all]\nkernel=vmlinuz\ninitramfs initrd.img followkernel\ncmdline=cmdline.txt\n"


def make_disk(d: Path, files: dict[str, str]) -> Path:
    """A 6 MiB raw disk with a 4 MiB FAT at offset 1 MiB holding `files`."""
    disk = d / "disk.img"
    subprocess.run(["truncate", "-s", "6M", str(disk)], check=True)
    subprocess.run(["mkfs.vfat", "-n", "FIRMWARE", "--offset", "2048", str(disk), "4096"],
                   check=True, capture_output=True)
    with FatImage(disk, 1, 4, "raw") as fat:
        for path, text in files.items():
            parts = path.split("/")[:-1]
            for i in range(1, len(parts) + 1):  # parents first (mmd makes one level)
                subprocess.run(["mmd", "-D", "s", "-i", str(fat.raw), "::/" + "/".join(parts[:i])],
                               capture_output=True)
            fat.write_text(path, text)
        fat.commit()
    return disk


class SelectBoot(unittest.TestCase):
    def setUp(self) -> None:
        self.tmp = tempfile.TemporaryDirectory()
        self.d = Path(self.tmp.name)

    def tearDown(self) -> None:
        self.tmp.cleanup()

    def select(self, disk: Path, board: str = "pi4"):
        with FatImage(disk, 1, 4, "raw") as fat:
            try:
                return select_boot(fat, self.d / "boot", board)
            finally:
                fat.commit()

    def base(self) -> dict[str, str]:
        return {"config.txt": CONFIG, "vmlinuz": "K-default", "initrd.img": "I-default",
                "cmdline.txt": "root=/dev/vg0/root\n", "start4.elf": "S-top",
                "fixup4.dat": "F-top"}

    def test_default_set_without_flag(self) -> None:
        disk = make_disk(self.d, self.base())
        b = self.select(disk)
        self.assertEqual((b.mode, b.kernel, b.initramfs, b.cmdline),
                         ("default", "vmlinuz", "initrd.img", "root=/dev/vg0/root"))
        self.assertEqual((self.d / "boot" / "kernel").read_text(), "K-default")

    def test_trial_set_exactly_once_then_default(self) -> None:
        files = self.base() | {
            "tryboot.flag": "", "tryboot.txt": CONFIG + "os_prefix=trial/\n",
            "trial/vmlinuz": "K-trial", "trial/initrd.img": "I-trial",
            "trial/cmdline.txt": "root=/dev/vg0/root trial\n"}
        disk = make_disk(self.d, files)
        first = self.select(disk)
        self.assertEqual((first.mode, first.kernel, first.cmdline),
                         ("trial", "trial/vmlinuz", "root=/dev/vg0/root trial"))
        self.assertEqual((self.d / "boot" / "initrd").read_text(), "I-trial")
        second = self.select(disk)  # the flag was consumed on the disk itself
        self.assertEqual((second.mode, second.kernel), ("default", "vmlinuz"))
        with FatImage(disk, 1, 4, "raw") as fat:
            self.assertFalse(fat.has("tryboot.flag"))

    def test_prefix_without_kernel_is_ignored(self) -> None:
        files = self.base() | {"tryboot.flag": "", "tryboot.txt": CONFIG + "os_prefix=gone/\n"}
        b = self.select(make_disk(self.d, files))
        self.assertEqual((b.mode, b.kernel), ("trial", "vmlinuz"))
        self.assertIn("ignored", b.describe())

    def test_missing_kernel_cannot_boot(self) -> None:
        files = self.base()
        del files["vmlinuz"]
        with self.assertRaises(FirmwareError):
            self.select(make_disk(self.d, files))


    def test_default_blobs_are_checked_and_recorded(self) -> None:
        b = self.select(make_disk(self.d, self.base()))
        self.assertEqual(b.firmware, {"start4.elf": sha("S-top"), "fixup4.dat": sha("F-top")})
        self.assertIn(f"firmware start4.elf (sha256 {sha('S-top')[:12]})", b.describe())

    def test_missing_default_blob_cannot_boot(self) -> None:
        for gone in ("start4.elf", "fixup4.dat"):
            files = self.base()
            del files[gone]
            with self.assertRaisesRegex(FirmwareError, f"{gone} .*default"):
                self.select(make_disk(self.d, files))

    def test_upgrade_default_loads_saved_blobs_trial_loads_new(self) -> None:
        # As the agent writes them during an upgrade: config.txt boots the saved set, its
        # firmware included; tryboot.txt is the plain set (top-level = new blobs).
        saved = "fleet/preupgrade/"
        files = self.base() | {
            "config.txt": CONFIG + f"[all]\nos_prefix={saved}\n[pi3]\nstart_file=nope.elf\n"
                          f"[pi4]\nstart_file={saved}start4.elf\nfixup_file={saved}fixup4.dat\n[all]\n",
            "tryboot.txt": CONFIG, "tryboot.flag": "",
            saved + "vmlinuz": "K-old", saved + "initrd.img": "I-old",
            saved + "cmdline.txt": "root=/dev/vg0/root\n",
            saved + "start4.elf": "S-old", saved + "fixup4.dat": "F-old"}
        disk = make_disk(self.d, files)
        trial = self.select(disk)
        self.assertEqual((trial.mode, trial.kernel, trial.firmware),
                         ("trial", "vmlinuz", {"start4.elf": sha("S-top"), "fixup4.dat": sha("F-top")}))
        default = self.select(disk)
        self.assertEqual((default.mode, default.kernel), ("default", saved + "vmlinuz"))
        self.assertEqual(default.firmware, {saved + "start4.elf": sha("S-old"),
                                            saved + "fixup4.dat": sha("F-old")},
                         "[pi4] applies, [pi3] does not, os_prefix is not put before start_file")

    def test_missing_named_blob_cannot_boot(self) -> None:
        files = self.base() | {"config.txt": CONFIG + "start_file=/gone/start4.elf\n"}
        with self.assertRaisesRegex(FirmwareError, "gone/start4.elf .*start_file=/gone/start4.elf"):
            self.select(make_disk(self.d, files))


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


# Raspberry Pi OS style: no kernel= line, auto_initramfs, board sections.
PI_CONFIG = """# Pi OS style
auto_initramfs=1
arm_64bit=1
[pi3]
kernel=pi3.img
[pi4]
arm_boost=1
[pi5]
kernel=kernel_2712.img
[cm4]
kernel=cm4.img
[all]
"""


class SelectBootPiOS(SelectBoot):
    """A Raspberry Pi OS style FAT (the converted image the arm64 machine boots): the Pi 4's
    64-bit defaults, auto_initramfs and board sections."""

    def pi(self, config: str = PI_CONFIG, **extra: str) -> dict[str, str]:
        return {"config.txt": config, "kernel8.img": "K8", "initramfs8": "I8",
                "kernel_2712.img": "K2712", "initramfs_2712": "I2712",
                "start4.elf": "S4", "fixup4.dat": "F4",
                "cmdline.txt": "console=serial0,115200 root=/dev/vg0/root\n"} | extra

    def test_pi_os_defaults_kernel8_and_auto_initramfs8(self) -> None:
        b = self.select(make_disk(self.d, self.pi()))
        self.assertEqual((b.kernel, b.initramfs), ("kernel8.img", "initramfs8"))
        self.assertEqual((self.d / "boot" / "kernel").read_text(), "K8")
        self.assertEqual((self.d / "boot" / "initrd").read_text(), "I8")

    def test_pi4_section_applies_other_boards_do_not(self) -> None:
        cfg = "[pi4]\nkernel=kernel_2712.img\n[pi5]\nkernel=pi5.img\n[pi3]\nkernel=pi3.img\n[all]\nauto_initramfs=1\n"
        b = self.select(make_disk(self.d, self.pi(cfg)))
        self.assertEqual((b.kernel, b.initramfs), ("kernel_2712.img", "initramfs_2712"))
        self.assertEqual((self.d / "boot" / "initrd").read_text(), "I2712")

    def test_without_auto_initramfs_no_initramfs(self) -> None:
        b = self.select(make_disk(self.d, self.pi("arm_64bit=1\n")))
        self.assertEqual((b.kernel, b.initramfs), ("kernel8.img", None))
        self.assertFalse((self.d / "boot" / "initrd").exists())

    def test_explicit_initramfs_line_wins_over_auto(self) -> None:
        cfg = PI_CONFIG + "kernel=kernel8.img\ninitramfs initramfs_2712 followkernel\n"
        b = self.select(make_disk(self.d, self.pi(cfg)))
        self.assertEqual((b.kernel, b.initramfs), ("kernel8.img", "initramfs_2712"))

    def test_missing_auto_initramfs_boots_kernel_alone(self) -> None:
        files = self.pi()
        del files["initramfs8"]
        b = self.select(make_disk(self.d, files))
        self.assertEqual((b.kernel, b.initramfs), ("kernel8.img", None))
        self.assertIn("no initramfs8", b.describe())

    def test_missing_default_kernel8_cannot_boot(self) -> None:
        files = self.pi()
        del files["kernel8.img"]
        with self.assertRaisesRegex(FirmwareError, "kernel8.img"):
            self.select(make_disk(self.d, files))

    def test_arm_64bit_0_selects_kernel7l(self) -> None:
        files = self.pi("arm_64bit=0\n", **{"kernel7l.img": "K7l"})
        b = self.select(make_disk(self.d, files))
        self.assertEqual(b.kernel, "kernel7l.img")

    def test_trial_os_prefix_applies_to_auto_initramfs(self) -> None:
        files = self.pi(**{"tryboot.flag": "", "tryboot.txt": PI_CONFIG + "os_prefix=trial/\n",
                           "trial/kernel8.img": "K8-trial", "trial/initramfs8": "I8-trial",
                           "trial/cmdline.txt": "root=/dev/vg0/root trial\n"})
        disk = make_disk(self.d, files)
        first = self.select(disk)
        self.assertEqual((first.mode, first.kernel, first.initramfs),
                         ("trial", "trial/kernel8.img", "trial/initramfs8"))
        self.assertEqual((self.d / "boot" / "initrd").read_text(), "I8-trial")
        second = self.select(disk)
        self.assertEqual((second.mode, second.kernel, second.initramfs),
                         ("default", "kernel8.img", "initramfs8"))

    def test_pi5_defaults_kernel_2712_and_initramfs_2712(self) -> None:
        b = self.select(make_disk(self.d, self.pi()), board="pi5")
        self.assertEqual((b.kernel, b.initramfs), ("kernel_2712.img", "initramfs_2712"))

    def test_explicit_names_need_no_defaults(self) -> None:
        # The x86 image's config.txt: explicit kernel= and initramfs, no auto_initramfs.
        files = self.base() | {"kernel8.img": "K8", "initramfs8": "I8"}
        b = self.select(make_disk(self.d, files))
        self.assertEqual((b.kernel, b.initramfs), ("vmlinuz", "initrd.img"))


class ParseConfig(unittest.TestCase):
    def test_board_sections(self) -> None:
        text = "a=1\n[pi4]\nb=2\n[pi5]\nc=3\n[pi400]\nd=4\n[none]\ne=5\n[all]\nf=6\n"
        self.assertEqual(parse_config(text, False), {"a": "1", "b": "2", "f": "6"})
        self.assertEqual(parse_config(text, False, "pi5"), {"a": "1", "c": "3", "f": "6"})

    def test_auto_initramfs_names(self) -> None:
        self.assertEqual(auto_initramfs_name("kernel8.img"), "initramfs8")
        self.assertEqual(auto_initramfs_name("kernel_2712.img"), "initramfs_2712")
        self.assertEqual(auto_initramfs_name("kernel.img"), "initramfs")
        self.assertEqual(auto_initramfs_name("vmlinuz"), None)

    def test_sections(self) -> None:
        text = ("kernel=a\n[pi3]\nkernel=b\n[cm4]\nkernel=c\n[tryboot]\nos_prefix=t/\n"
                "[all]\ncmdline=c.txt # note\n[none]\nkernel=n\n")
        self.assertEqual(parse_config(text, trial=False), {"kernel": "a", "cmdline": "c.txt"})
        self.assertEqual(parse_config(text, trial=True),
                         {"kernel": "a", "os_prefix": "t/", "cmdline": "c.txt"})

    def test_board_filter(self) -> None:
        text = "start_file=start.elf\n[pi4]\nstart_file=start4x.elf\n[all]\n"
        self.assertEqual(parse_config(text, trial=False)["start_file"], "start4x.elf")
        self.assertEqual(parse_config(text, trial=False, board="pi3")["start_file"], "start.elf")


if __name__ == "__main__":
    unittest.main()
