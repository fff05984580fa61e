"""A fake of the Raspberry Pi firmware's boot selection (`tryboot`), for the VM harness.

This is a FAKE: it is not the Pi firmware and does not emulate it beyond the file contract
below. It runs on the host before every guest boot, reads the FAT "firmware" partition
with mtools (never mounting it) and decides which kernel, initramfs and command line QEMU
boots, the way the Pi firmware would:

* `tryboot.flag` present at the FAT root -> this boot is the one-shot trial: the flag is
  deleted (the firmware clears the mailbox reboot flag as it boots) and `tryboot.txt` is
  read instead of `config.txt` (falling back to `config.txt` if there is no tryboot.txt).
* otherwise `config.txt` is read: the default set.
* In the file, `os_prefix=` is prepended to `kernel=`, to the `initramfs <file>` and to
  `cmdline=` (default `cmdline.txt`). A prefix whose kernel does not exist is ignored,
  as the real firmware does.
* Sections: `[all]` always applies, `[tryboot]` only during the trial boot, the board's
  own filter (`[pi4]`: the fake is a Raspberry Pi 4 Model B as far as file names go)
  applies; `[none]` and every other filter (`[pi3]`, `[cm4]`, `[pi400]`, ...) never apply.
* Firmware blobs: before any kernel a Pi loads the VideoCore firmware `start_file=` and its
  matched `fixup_file=` (default per board: `start4.elf` / `fixup4.dat` on a Pi 4,
  `start.elf` / `fixup.dat` on earlier boards, none on a Pi 5, whose firmware is in its
  bootloader). `os_prefix` does not apply to them. The fake checks that both exist (a
  missing one means no boot: FirmwareError, the machine stays off) and records their
  sha256 in `BootSet.firmware` (and a note), so a scenario can tell which blobs a boot
  "loaded". It loads nothing from them.
* Kernel defaults, as the config.txt documentation gives them: without `kernel=` a Pi 4
  boots `kernel8.img` (`arm_64bit` defaults to 1 there; `kernel7l.img` with `arm_64bit=0`),
  a Pi 5 `kernel_2712.img`; `auto_initramfs=1` without an `initramfs` line loads the
  initramfs named after the kernel (`kernel8.img` -> `initramfs8`, `kernel_2712.img` ->
  `initramfs_2712`, `kernelN.img` -> `initramfsN`) if it exists (a missing one boots the
  kernel alone). `os_prefix` applies to that name too. (The x86 image names its files
  explicitly: `kernel=vmlinuz`, `initramfs initrd.img followkernel`.)

`tryboot.flag` stands in for the mailbox reboot flag (tag 0x00038064, value 1) that a Pi
sets with `reboot '0 tryboot'`; a VM has no mailbox, so the guest writes this file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

TRYBOOT_FLAG = "tryboot.flag"
DEFAULT_CONFIG = "config.txt"
TRIAL_CONFIG = "tryboot.txt"

MIB = 1024 * 1024

# The board the fake firmware is, and each board's default (start_file, fixup_file);
# None: the firmware is not on the boot partition (Pi 5).
BOARD = "pi4"
DEFAULT_BLOBS: dict[str, tuple[str, str] | None] = {
    "pi4": ("start4.elf", "fixup4.dat"),
    "pi3": ("start.elf", "fixup.dat"),
    "pi5": None,
}


class FirmwareError(Exception):
    """The firmware found nothing it could boot (a Pi would show its error screen)."""


@dataclasses.dataclass
class BootSet:
    mode: str  # "default" or "trial"
    config: str  # the file the selection came from
    os_prefix: str
    kernel: str  # paths on the FAT partition
    initramfs: str | None
    cmdline_file: str
    cmdline: str
    notes: list[str]
    # The firmware blobs this boot "loaded": FAT path -> sha256 (hex), start_file first.
    firmware: dict[str, str] = dataclasses.field(default_factory=dict)

    def describe(self) -> str:
        s = f"{self.mode} set from {self.config}: kernel={self.kernel}"
        s += f" initramfs={self.initramfs or '-'} cmdline={self.cmdline_file}"
        if self.os_prefix:
            s += f" (os_prefix={self.os_prefix})"
        for n in self.notes:
            s += f"; {n}"
        return s


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["MTOOLS_SKIP_CHECK"] = "1"
    env["MTOOLS_NO_VFAT"] = "0"
    return env


class FatImage:
    """The FAT partition of a guest disk (raw or qcow2), accessed with mtools.

    The partition is copied out with `qemu-img dd` into a scratch raw file, read or changed
    there with mtools, and written back into the disk only if it changed.
    """

    def __init__(self, disk: Path, offset_mib: int = 1, size_mib: int = 128, fmt: str = "qcow2"):
        self.disk = Path(disk)
        self.offset_mib = offset_mib
        self.size_mib = size_mib
        self.fmt = fmt
        self._dir = tempfile.mkdtemp(prefix="fleet-fat-")
        self.raw = Path(self._dir) / "fat.raw"
        self.dirty = False
        subprocess.run(
            ["qemu-img", "dd", "-f", fmt, "-O", "raw", "bs=1M", f"skip={offset_mib}",
             f"count={size_mib}", f"if={self.disk}", f"of={self.raw}"],
            check=True, capture_output=True,
        )

    def __enter__(self) -> "FatImage":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _m(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(list(args), check=check, capture_output=True, text=True, env=_env())

    def files(self) -> list[str]:
        """Every file on the partition, as paths without a leading slash."""
        out = self._m("mdir", "-i", str(self.raw), "-/", "-b", "::", check=False).stdout
        return sorted(line[3:] if line.startswith("::/") else line
                      for line in out.splitlines() if line and not line.endswith("/"))

    def has(self, path: str) -> bool:
        """Whether `path` exists (FAT names are case-insensitive). Looked up by path, as the
        firmware does: a directory torn by a power cut elsewhere on the partition (a
        recursive listing can loop through it) does not hide config.txt or the kernel."""
        p = self._m("mdir", "-i", str(self.raw), "-b", f"::/{path}", check=False)
        return p.returncode == 0 and bool(p.stdout.strip())

    def read_bytes(self, path: str) -> bytes | None:
        p = subprocess.run(["mtype", "-i", str(self.raw), f"::/{path}"], capture_output=True,
                           env=_env())
        return p.stdout if p.returncode == 0 else None

    def read_text(self, path: str) -> str | None:
        b = self.read_bytes(path)
        return None if b is None else b.decode("utf-8", "replace")

    def copy_out(self, path: str, dest: Path) -> None:
        self._m("mcopy", "-n", "-i", str(self.raw), f"::/{path}", str(dest))

    def write_text(self, path: str, text: str) -> None:
        src = Path(self._dir) / "upload"
        src.write_text(text)
        self._m("mcopy", "-o", "-i", str(self.raw), str(src), f"::/{path}")
        self.dirty = True

    def delete(self, path: str) -> None:
        self._m("mdel", "-i", str(self.raw), f"::/{path}")
        self.dirty = True

    def commit(self) -> None:
        """Write the partition back into the disk if anything changed."""
        if not self.dirty:
            return
        target = (f"driver=raw,offset={self.offset_mib * MIB},size={self.size_mib * MIB},"
                  f"file.driver={self.fmt},file.file.filename={self.disk}")
        subprocess.run(["qemu-img", "convert", "-n", "-f", "raw", str(self.raw),
                        "--target-image-opts", target], check=True, capture_output=True)
        self.dirty = False

    def close(self) -> None:
        shutil.rmtree(self._dir, ignore_errors=True)


def parse_config(text: str, trial: bool, board: str = BOARD) -> dict[str, str]:
    """The subset of config.txt the fake firmware understands (see module docstring)."""
    cfg: dict[str, str] = {}
    active = True
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("[") and line.endswith("]"):
            f = line[1:-1].strip().lower()
            active = f == "all" or (f == "tryboot" and trial) or f == board
            continue
        if not active:
            continue
        if line.startswith("initramfs ") or line.startswith("initramfs\t"):
            parts = line.split()
            if len(parts) >= 2:
                cfg["initramfs"] = parts[1]
            continue
        if "=" in line:
            k, v = line.split("=", 1)
            cfg[k.strip().lower()] = v.strip()
    return cfg


def select_firmware(fat: FatImage, cfg: dict[str, str], config: str,
                    board: str = BOARD) -> dict[str, str]:
    """The start/fixup blobs `cfg` selects on `board` (not prefixed by os_prefix; a leading
    `/` is the partition's root), each checked to exist: path -> sha256."""
    default = DEFAULT_BLOBS.get(board)
    if default is None:
        return {}
    loaded: dict[str, str] = {}
    for key, name in (("start_file", default[0]), ("fixup_file", default[1])):
        path = cfg.get(key, name).lstrip("/")
        data = fat.read_bytes(path) if fat.has(path) else None
        if data is None:
            how = f"{key}={cfg[key]}" if key in cfg else f"the {board} default {key}"
            raise FirmwareError(f"firmware blob {path} ({how} in {config}) does not exist: "
                                f"a {board} stops before any kernel")
        loaded[path] = hashlib.sha256(data).hexdigest()
    return loaded


def default_kernel(cfg: dict[str, str], board: str = BOARD) -> str | None:
    """`kernel=` when the file does not say: on a Pi 4 `kernel8.img` (arm_64bit defaults to
    1 there), `kernel7l.img` with `arm_64bit=0`; on a Pi 5 `kernel_2712.img`."""
    if board == "pi4":
        return "kernel7l.img" if cfg.get("arm_64bit", "1").strip() == "0" else "kernel8.img"
    if board == "pi5":
        return "kernel_2712.img"
    return None


def auto_initramfs_name(kernel: str) -> str | None:
    """The initramfs `auto_initramfs=1` loads for a kernel of the firmware's naming scheme
    (`kernel8.img` -> `initramfs8`, `kernel_2712.img` -> `initramfs_2712`); None for any
    other kernel name."""
    d, _, base = kernel.rpartition("/")
    if base.startswith("kernel") and base.endswith(".img"):
        return (d + "/" if d else "") + "initramfs" + base[len("kernel"):-len(".img")]
    return None


def select_boot(fat: FatImage, bootdir: Path, board: str = BOARD) -> BootSet:
    """Pick this boot's set, consume a pending trial flag, copy the files to `bootdir`.

    The caller must `fat.commit()` afterwards so that a consumed flag stays consumed.
    """
    notes: list[str] = []
    trial = fat.has(TRYBOOT_FLAG)
    config = DEFAULT_CONFIG
    if trial:
        fat.delete(TRYBOOT_FLAG)
        notes.append(f"{TRYBOOT_FLAG} consumed")
        if fat.has(TRIAL_CONFIG):
            config = TRIAL_CONFIG
        else:
            notes.append(f"no {TRIAL_CONFIG}, using {DEFAULT_CONFIG}")
    text = fat.read_text(config)
    if text is None:
        raise FirmwareError(f"no {config} on the firmware partition")
    cfg = parse_config(text, trial, board)
    firmware = select_firmware(fat, cfg, config, board)
    if firmware:
        notes.append("firmware " + " ".join(f"{p} (sha256 {h[:12]})" for p, h in firmware.items()))
    kernel = cfg.get("kernel") or default_kernel(cfg, board)
    if not kernel:
        raise FirmwareError(f"{config} names no kernel= (the fake firmware has no default)")
    prefix = cfg.get("os_prefix", "")
    if prefix and not fat.has(prefix + kernel):
        notes.append(f"os_prefix={prefix} ignored: {prefix}{kernel} missing")
        prefix = ""
    kpath = prefix + kernel
    if not fat.has(kpath):
        raise FirmwareError(f"kernel {kpath} named by {config} does not exist")
    ipath = prefix + cfg["initramfs"] if cfg.get("initramfs") else None
    if ipath and not fat.has(ipath):
        raise FirmwareError(f"initramfs {ipath} named by {config} does not exist")
    if ipath is None and cfg.get("auto_initramfs", "0").strip() == "1":
        auto = auto_initramfs_name(kernel)
        if auto and fat.has(prefix + auto):
            ipath = prefix + auto
            notes.append(f"auto_initramfs: {ipath}")
        elif auto:
            notes.append(f"auto_initramfs: no {prefix}{auto}, kernel alone")
    cpath = prefix + cfg.get("cmdline", "cmdline.txt")
    cmdline = (fat.read_text(cpath) or "").strip()
    if not cmdline:
        notes.append(f"{cpath} missing or empty")
    bootdir.mkdir(parents=True, exist_ok=True)
    for name in ("kernel", "initrd"):
        (bootdir / name).unlink(missing_ok=True)
    fat.copy_out(kpath, bootdir / "kernel")
    if ipath:
        fat.copy_out(ipath, bootdir / "initrd")
    return BootSet("trial" if trial else "default", config, prefix, kpath, ipath, cpath, cmdline,
                   notes, firmware)
