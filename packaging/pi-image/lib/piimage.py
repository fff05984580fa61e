#!/usr/bin/env python3
"""Raspberry Pi OS image checks and boot-file edits for packaging/pi-image/convert.

Usage:
  piimage.py inspect IN.img [--size BYTES] [--extra BYTES]
      Check that IN.img has the Raspberry Pi OS shape (MBR; p1 FAT32, type 0x0c/0x0b, boot
      sector "FAT32"; p2 Linux 0x83 holding ext4, superblock magic 0xEF53) and, with --size,
      that its root fits an output image of BYTES. Prints the layout as JSON on stdout;
      on a mismatch prints what is wrong (naming the partition and field) on stderr, exit 1.
  piimage.py cmdline < cmdline.txt      the converted cmdline.txt on stdout
  piimage.py config  < config.txt       the converted config.txt on stdout
  piimage.py size SIZE                  SIZE (bytes, or with K/M/G/T suffix, or KiB/MiB/GiB)
                                        as bytes

Standard library only. Reads the image; never writes it.
"""

import json
import re
import struct
import sys

SECTOR = 512
MIB = 1 << 20
# What the output image needs beside the root's used blocks (see convert --help):
# 4 MiB LVM metadata area + alignment, the agent-state LV, the thin pool's metadata LV
# and its spare, and room for the packages convert adds (lvm2, thin-provisioning-tools,
# fleet-agent, a new initramfs in /boot).
AGENT_STATE = 128 * MIB
POOL_META = 32 * MIB
PV_OVERHEAD = 8 * MIB
ADDED = 192 * MIB


class Refused(Exception):
    """The input is not a Raspberry Pi OS style image; the message says why."""


def parse_size(text):
    m = re.fullmatch(r"\s*(\d+)\s*([KMGT]?)(i?B)?\s*", text, re.IGNORECASE)
    if not m:
        raise ValueError(f"not a size: {text!r} (use bytes or a K/M/G/T suffix, e.g. 4G)")
    mult = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}[m.group(2).upper()]
    return int(m.group(1)) * mult


def mbr_partitions(img, path, size):
    img.seek(0)
    mbr = img.read(SECTOR)
    if len(mbr) < SECTOR:
        raise Refused(f"{path}: {size} bytes, too small for a partition table (MBR needs 512)")
    if mbr[510:512] != b"\x55\xaa":
        raise Refused(f"{path}: no MBR partition table (bytes 510-511 are {mbr[510:512].hex()}, not 55aa)")
    parts = []
    for i in range(4):
        e = mbr[446 + 16 * i : 446 + 16 * (i + 1)]
        ptype = e[4]
        start, count = struct.unpack("<II", e[8:16])
        if ptype == 0 and count == 0:
            continue
        parts.append({"number": i + 1, "type": ptype, "start": start, "sectors": count,
                      "bootable": e[0] == 0x80})
    if any(p["type"] == 0xEE for p in parts):
        raise Refused(f"{path}: GPT partition table (protective MBR, type 0xee): "
                      "Raspberry Pi OS images use an MBR (dos) table")
    disk_id = struct.unpack("<I", mbr[440:444])[0]
    return parts, disk_id


def read_at(img, offset, length):
    img.seek(offset)
    return img.read(length)


def inspect(path, out_size=None, extra=0):
    with open(path, "rb") as img:
        img.seek(0, 2)
        size = img.tell()
        parts, disk_id = mbr_partitions(img, path, size)
        if not parts:
            raise Refused(f"{path}: the MBR has no partitions")
        if len(parts) < 2:
            raise Refused(f"{path}: only {len(parts)} partition (p{parts[0]['number']}); "
                          "a Raspberry Pi OS image has p1 FAT32 (bootfs) and p2 ext4 (rootfs)")
        if len(parts) > 2:
            raise Refused(f"{path}: {len(parts)} partitions; a Raspberry Pi OS image has exactly two "
                          "(p1 FAT32 bootfs, p2 ext4 rootfs)")
        p1, p2 = parts
        if (p1["number"], p2["number"]) != (1, 2):
            raise Refused(f"{path}: partitions are p{p1['number']} and p{p2['number']}, not p1 and p2")
        for p in parts:
            end = (p["start"] + p["sectors"]) * SECTOR
            if p["start"] == 0 or end > size:
                raise Refused(f"{path}: p{p['number']} (start sector {p['start']}, {p['sectors']} sectors) "
                              f"lies outside the {size}-byte image")
        if p1["type"] not in (0x0B, 0x0C):
            raise Refused(f"{path}: p1 has partition type 0x{p1['type']:02x}, not FAT32 (0x0c or 0x0b)")
        if p2["type"] != 0x83:
            raise Refused(f"{path}: p2 has partition type 0x{p2['type']:02x}, not Linux (0x83)")
        if p2["start"] < p1["start"] + p1["sectors"]:
            raise Refused(f"{path}: p2 (start sector {p2['start']}) overlaps p1 or lies before it")
        boot = read_at(img, p1["start"] * SECTOR, SECTOR)
        if boot[82:90] != b"FAT32   " or boot[510:512] != b"\x55\xaa":
            raise Refused(f"{path}: p1 is not a FAT32 filesystem (boot sector file system type "
                          f"{boot[82:90]!r}, expected b'FAT32   ')")
        label = boot[71:82].decode("ascii", "replace").strip()
        sb = read_at(img, p2["start"] * SECTOR + 1024, 1024)
        magic = struct.unpack("<H", sb[56:58])[0] if len(sb) >= 58 else 0
        if magic != 0xEF53:
            raise Refused(f"{path}: p2 holds no ext4 filesystem (superblock magic at byte 1080 of p2 is "
                          f"0x{magic:04x}, not 0xef53)")
        blocks_lo, _, free_lo = struct.unpack("<III", sb[4:16])
        log_block = struct.unpack("<I", sb[24:28])[0]
        incompat = struct.unpack("<I", sb[96:100])[0]
        blocks_hi = free_hi = 0
        if incompat & 0x80:  # INCOMPAT_64BIT
            blocks_hi, _, free_hi = struct.unpack("<III", sb[336:348])
        bsize = 1024 << log_block
        blocks = blocks_lo | (blocks_hi << 32)
        free = free_lo | (free_hi << 32)
        fs_bytes = blocks * bsize
        used_bytes = (blocks - free) * bsize
        vol = sb[120:136].split(b"\0")[0].decode("utf-8", "replace")
        if fs_bytes > p2["sectors"] * SECTOR:
            raise Refused(f"{path}: the ext4 in p2 says {fs_bytes} bytes (s_blocks_count {blocks} x {bsize}), "
                          f"larger than p2 ({p2['sectors'] * SECTOR} bytes)")
        p2_end = (p2["start"] + p2["sectors"]) * SECTOR
        layout = {
            "image_bytes": size, "disk_id": f"{disk_id:08x}",
            "p1": {"start": p1["start"], "sectors": p1["sectors"], "type": p1["type"], "label": label},
            "p2": {"start": p2["start"], "sectors": p2["sectors"], "type": p2["type"], "label": vol,
                   "block_size": bsize, "fs_bytes": fs_bytes, "used_bytes": used_bytes},
        }
        # Output: p1 as is, p2 from the same start to the end; the PV must hold agent-state,
        # the pool metadata and its spare, and the root's used blocks plus what convert adds.
        need = p2["start"] * SECTOR + PV_OVERHEAD + AGENT_STATE + 2 * POOL_META + used_bytes + ADDED + extra
        need = -(-need // MIB) * MIB
        layout["min_out_bytes"] = need
        layout["default_out_bytes"] = max(need, -(-p2_end // MIB) * MIB + AGENT_STATE + ADDED)
        if out_size is not None:
            if out_size % SECTOR:
                raise Refused(f"--size {out_size} is not a multiple of {SECTOR} bytes")
            if out_size < need:
                raise Refused(
                    f"{path}: the root does not fit --size {out_size} bytes ({out_size // MIB} MiB): p2's ext4 uses "
                    f"{used_bytes // MIB} MiB (s_blocks_count - s_free_blocks_count = {blocks - free} blocks of "
                    f"{bsize}); with p1 ending at {p2['start'] * SECTOR // MIB} MiB, agent-state "
                    f"{AGENT_STATE // MIB} MiB, LVM and thin-pool metadata {(PV_OVERHEAD + 2 * POOL_META) // MIB} MiB "
                    f"and {ADDED // MIB} MiB for the added packages the output needs at least {need // MIB} MiB")
            layout["out_bytes"] = out_size
        return layout


def convert_cmdline(text):
    """One line: drop root=, rootfstype's partition, the Pi OS first-boot init and resize
    hooks; root=/dev/vg0/root. Other words are kept in order; `panic=10` is added when the
    input has no `panic=`: a trial kernel that panics (say, on a broken initramfs) must
    reboot, so that the firmware falls back to the default set and its initramfs rolls back;
    without it the board waits forever, since nothing arms the watchdog before systemd."""
    words = text.split()
    if not words:
        raise Refused("cmdline.txt is empty")
    drop = ("root=", "init=/usr/lib/raspberrypi-sys-mods/firstboot", "init=/usr/lib/raspi-config/init_resize.sh")
    kept = [w for w in words if not w.startswith(drop) and w not in ("resize", "quiet_resize")]
    kept = [w for w in kept if not (w.startswith("init=") and "firstboot" in w)]
    out = []
    for w in kept:
        out.append(w)
        if w.startswith("rootfstype="):
            out[-1] = "rootfstype=ext4"
    if not any(w.startswith("rootfstype=") for w in out):
        out.append("rootfstype=ext4")
    if not any(w.startswith("panic=") for w in out):
        out.append("panic=10")
    out.insert(0, "root=/dev/vg0/root")
    line = " ".join(out)
    if "PARTUUID" in line:
        raise Refused(f"cmdline.txt still names a PARTUUID after conversion: {line}")
    return line + "\n"


def convert_config(text):
    """Keep every input line; append an [all] section with the explicit kernel and
    initramfs lines (so boot sets and the firmware do not depend on auto_initramfs)."""
    if not text.endswith("\n") and text:
        text += "\n"
    marker = "# fleet pi-image convert: explicit boot files (the agent's boot set names them)"
    if marker in text:
        text = text[: text.index(marker)].rstrip("\n") + "\n"
    return (text + "\n" + marker + "\n[all]\nkernel=kernel8.img\ninitramfs initramfs8 followkernel\n")


def main(argv):
    if len(argv) < 2 or argv[1] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if len(argv) >= 2 else 2
    cmd = argv[1]
    try:
        if cmd == "inspect":
            args = argv[2:]
            path, out_size, extra = None, None, 0
            while args:
                a = args.pop(0)
                if a == "--size" and args:
                    out_size = parse_size(args.pop(0))
                elif a == "--extra" and args:
                    extra = parse_size(args.pop(0))
                elif path is None and not a.startswith("--"):
                    path = a
                else:
                    print(f"piimage.py inspect: bad argument {a!r}", file=sys.stderr)
                    return 2
            if path is None:
                print("piimage.py inspect: missing IN.img", file=sys.stderr)
                return 2
            print(json.dumps(inspect(path, out_size, extra)))
        elif cmd == "cmdline":
            sys.stdout.write(convert_cmdline(sys.stdin.read()))
        elif cmd == "config":
            sys.stdout.write(convert_config(sys.stdin.read()))
        elif cmd == "size" and len(argv) == 3:
            print(parse_size(argv[2]))
        else:
            print(f"piimage.py: unknown command {cmd!r} (see --help)", file=sys.stderr)
            return 2
    except Refused as e:
        print(str(e), file=sys.stderr)
        return 1
    except (ValueError, OSError) as e:
        print(str(e), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
