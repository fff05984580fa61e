"""A local apt repository for the OS-upgrade scenarios, built and served by the harness.

Real packages (`dpkg-deb --build`), a flat repository (`Packages` + `Release`, written
here: no dpkg-dev needed) served over HTTP from the host's loopback. QEMU user-mode
networking shows the host's loopback to the guest as 10.0.2.2, so the guest's only apt
source is `deb [trusted=yes] http://10.0.2.2:<port>/ ./`.

The package is `fleet-canary`: 1.0 is in the image (build-image installs it), and each
scenario's repository holds one 2.0 variant (`[services] apt = "hang"`), or several
candidate versions of different variants (`apt = { "2.0" = "hang", "2.1" = "late-hang" }`)
so one guest can run several upgrades, each naming its version
(`apt-get install -y fleet-canary=2.1`):

| variant     | what 2.0 does to the new system                                              |
|-------------|------------------------------------------------------------------------------|
| `clean`     | /usr/share/fleet-canary/version = 2.0                                        |
| `soft-fail` | as clean; postinst points the agent's NATS servers at a closed port (no check-in) |
| `hard-fail` | as clean; postinst truncates /boot/firmware/initrd.img (x86) or initramfs8 (Pi image), as a broken kernel postinst would, and writes new start4.elf / fixup4.dat (as a raspi-firmware update would) |
| `hang`      | as clean; a unit freezes early userspace (before multi-user) once the watchdog is armed |
| `late-hang` | as soft-fail (no check-in, so no commit); a unit freezes userspace after fleet-boot-good marked the boot |

`late-hang` shortens systemd's runtime watchdog to 10 s (`RuntimeWatchdogUSec` over D-Bus)
right before it freezes: the reset still comes only from the i6300esb, about 20 s sooner.
The 30 s the image sets (clean-boot asserts it) covers boots under TCG load; a frozen guest
needs no margin. `hang` freezes in sysinit, before the system bus, and keeps 30 s.

A scenario may also serve a newer fleet-agent (`[services] apt_agent = "0.1.1"`): the real
package of this tree at that version (`bin/fleet-deb`, cached by source hash), so an
`apt-get full-upgrade` upgrades the agent's own package in the middle of an OS upgrade.

CLI (used by build-image): `aptrepo.py deb VARIANT VERSION OUTDIR` builds one .deb.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import stop_child

NAME = "fleet-canary"
VERSION_FILE = "usr/share/fleet-canary/version"

# Freeze userspace like vm-tests/scenarios/power-cut-hang.toml (SCHED_FIFO 99 busy loop on the only
# vCPU, RT throttling off), but early: in sysinit, before multi-user.target and so before
# fleet-boot-good. It waits until systemd has armed the hardware watchdog first, or the
# freeze would never be reset.
# systemd's runtime watchdog down to 10 s right before the late freeze (shell text inside
# the unit's ExecStart), over the system bus. A failure leaves the image's 30 s: slower,
# same outcome. The early (sysinit) freeze keeps 30 s: there is no system bus yet, and
# busctl over systemd's private socket was tried and fails (it is no bus, no Hello).
SHORT_WATCHDOG = ("busctl set-property org.freedesktop.systemd1 /org/freedesktop/systemd1 "
                  "org.freedesktop.systemd1.Manager RuntimeWatchdogUSec t 10000000 2>/dev/null;")

HANG_UNIT = """[Unit]
Description=fleet-canary 2.0 (hang variant): freeze early userspace
DefaultDependencies=no
After=systemd-udev-trigger.service
Before=sysinit.target

[Service]
# oneshot that never finishes: sysinit.target (and so multi-user.target and fleet-boot-good)
# is never reached, whatever the timing of the freeze.
Type=oneshot
TimeoutStartSec=infinity
ExecStart=/bin/sh -c 'i=0; until grep -qs active /sys/class/watchdog/watchdog0/state || [ $i -ge 300 ]; do sleep 1; i=$((i+1)); done; echo "fleet-canary: freezing userspace (watchdog $(cat /sys/class/watchdog/watchdog0/state 2>/dev/null), timeout $(cat /sys/class/watchdog/watchdog0/timeout 2>/dev/null) s)" >/dev/ttyS0; sysctl -qw kernel.sched_rt_runtime_us=-1; exec chrt -f 99 sh -c "while :; do :; done"'

[Install]
WantedBy=sysinit.target
"""

# Freeze the same way, but late: after fleet-boot-good has marked the trial boot good (so
# `bootcount` is back to 0 at every hang). Wanted by fleet-boot-good.service rather than
# multi-user.target, which would make an ordering cycle (the unit runs after
# multi-user.target). The agent cannot commit first: the soft-fail postinst took its control
# plane away, and the freeze comes long before the deadline.
LATE_HANG_UNIT = """[Unit]
Description=fleet-canary 2.0 (late-hang variant): freeze userspace after the good-boot mark
After=fleet-boot-good.service

[Service]
Type=simple
ExecStart=/bin/sh -c 'sleep 5; %s echo "fleet-canary: freezing userspace after the good-boot mark (watchdog $(cat /sys/class/watchdog/watchdog0/state 2>/dev/null), timeout $(cat /sys/class/watchdog/watchdog0/timeout 2>/dev/null) s)" >/dev/ttyS0; sysctl -qw kernel.sched_rt_runtime_us=-1; exec chrt -f 99 sh -c "while :; do :; done"'

[Install]
WantedBy=fleet-boot-good.service
""" % SHORT_WATCHDOG

SOFT_FAIL_POSTINST = r"""#!/bin/sh
set -e
# A broken upgrade that still boots: the agent can no longer reach its control plane.
cfg=/etc/fleet-agent/config.toml
if [ "$1" = configure ] && [ -f "$cfg" ]; then
    sed -i 's|^servers = .*|servers = ["nats://10.0.2.2:9"]|' "$cfg"
    echo "fleet-canary: agent control plane now nats://10.0.2.2:9 (closed)"
fi
"""

HARD_FAIL_POSTINST = r"""#!/bin/sh
set -e
# A broken kernel/initramfs postinst: the new top-level initramfs cannot boot
# (initrd.img on the x86 VM image, initramfs8 on the converted Raspberry Pi image).
for f in /boot/firmware/initrd.img /boot/firmware/initramfs8; do
    if [ "$1" = configure ] && [ -f "$f" ]; then
        head -c 1000000 "$f" >"$f.fleet-canary" && mv "$f.fleet-canary" "$f" && sync
        echo "fleet-canary: truncated $f to 1000000 bytes"
    fi
done
# A firmware update in the same upgrade: new VideoCore blobs at the top level, which only
# the trial may use (the upgrade's config.txt names the saved ones).
if [ "$1" = configure ]; then
    for b in start4.elf fixup4.dat; do
        [ -f "/boot/firmware/$b" ] || continue
        echo "vm-tests fake Raspberry Pi 4 firmware $b 2.0 (fleet-canary hard-fail)" >"/boot/firmware/$b.fleet-canary"
        mv "/boot/firmware/$b.fleet-canary" "/boot/firmware/$b"
        echo "fleet-canary: new /boot/firmware/$b"
    done
    sync
fi
"""


def variant_files(variant: str, version: str) -> tuple[dict[str, tuple[str, int]], dict[str, str], str | None]:
    """(files path->(content, mode), symlinks path->target, postinst) of one variant."""
    files = {VERSION_FILE: (f"{version}\n", 0o644)}
    links: dict[str, str] = {}
    postinst = None
    if variant == "soft-fail":
        postinst = SOFT_FAIL_POSTINST
    elif variant == "late-hang":
        postinst = SOFT_FAIL_POSTINST
        files["lib/systemd/system/fleet-canary-late-hang.service"] = (LATE_HANG_UNIT, 0o644)
        links["etc/systemd/system/fleet-boot-good.service.wants/fleet-canary-late-hang.service"] = \
            "/lib/systemd/system/fleet-canary-late-hang.service"
    elif variant == "hard-fail":
        postinst = HARD_FAIL_POSTINST
    elif variant == "hang":
        files["lib/systemd/system/fleet-canary-hang.service"] = (HANG_UNIT, 0o644)
        links["etc/systemd/system/sysinit.target.wants/fleet-canary-hang.service"] = \
            "/lib/systemd/system/fleet-canary-hang.service"
    elif variant not in ("clean", "base"):
        raise ValueError(f"unknown fleet-canary variant {variant!r}")
    return files, links, postinst


def build_deb(variant: str, version: str, outdir: Path) -> Path:
    files, links, postinst = variant_files(variant, version)
    outdir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="fleet-deb-") as tmp:
        root = Path(tmp)
        root.chmod(0o755)
        for rel, (content, mode) in files.items():
            p = root / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(content)
            p.chmod(mode)
        for rel, target in links.items():
            p = root / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(target, p)
        (root / "DEBIAN").mkdir()
        (root / "DEBIAN" / "control").write_text(
            f"Package: {NAME}\nVersion: {version}\nArchitecture: all\n"
            "Maintainer: fleet-agent vm-tests <vm-tests@invalid>\nSection: misc\nPriority: optional\n"
            f"Description: fleet-agent VM canary ({variant})\n"
            " Changes a file in root so an OS upgrade and its rollback can be seen.\n")
        if postinst:
            (root / "DEBIAN" / "postinst").write_text(postinst)
            (root / "DEBIAN" / "postinst").chmod(0o755)
        deb = outdir / f"{NAME}_{version}_all.deb"
        subprocess.run(["dpkg-deb", "--root-owner-group", "-Zgzip", "--build", str(root), str(deb)],
                       check=True, capture_output=True)
    return deb


def fleet_agent_deb(version: str) -> Path:
    """This tree's fleet-agent .deb at `version` (bin/fleet-deb builds it once per source
    hash; the first call after a source change costs a release build)."""
    tool = Path(__file__).resolve().parent.parent / "bin" / "fleet-deb"
    p = subprocess.run([str(tool), version], capture_output=True, text=True, timeout=3600)
    if p.returncode != 0:
        raise RuntimeError(f"fleet-deb {version} failed: {p.stderr.strip()[-800:]}")
    return Path(p.stdout.strip().splitlines()[-1])


def _field(deb: Path, name: str) -> str:
    return subprocess.run(["dpkg-deb", "-f", str(deb), name], check=True, capture_output=True,
                          text=True).stdout.strip()


def write_index(repo: Path) -> None:
    """Packages and Release of a flat repository (`deb ... ./`)."""
    stanzas = []
    for deb in sorted(repo.glob("*.deb")):
        data = deb.read_bytes()
        control = subprocess.run(["dpkg-deb", "-f", str(deb)], check=True, capture_output=True,
                                 text=True).stdout.rstrip("\n")
        stanzas.append(control + f"\nFilename: ./{deb.name}\nSize: {len(data)}\n"
                       f"MD5sum: {hashlib.md5(data).hexdigest()}\n"
                       f"SHA256: {hashlib.sha256(data).hexdigest()}\n")
    packages = "\n".join(stanzas).encode()
    (repo / "Packages").write_bytes(packages)
    date = time.strftime("%a, %d %b %Y %H:%M:%S UTC", time.gmtime())
    (repo / "Release").write_text(
        f"Origin: fleet-vm-tests\nLabel: fleet-vm-tests\nSuite: vm\nCodename: vm\nDate: {date}\n"
        "Architectures: all amd64 arm64\nDescription: fleet-agent VM harness local repository\n"
        f"MD5Sum:\n {hashlib.md5(packages).hexdigest()} {len(packages)} Packages\n"
        f"SHA256:\n {hashlib.sha256(packages).hexdigest()} {len(packages)} Packages\n")


def candidates(spec) -> dict[str, str]:
    """`[services] apt`: a variant name (served as 2.0) or a table version -> variant."""
    if isinstance(spec, str):
        return {"2.0": spec}
    if (isinstance(spec, dict) and spec
            and all(isinstance(k, str) and isinstance(v, str) for k, v in spec.items())):
        return dict(spec)
    raise ValueError(f"[services] apt must be a variant name or a table of version = variant "
                     f"(e.g. {{ \"2.0\" = \"hang\", \"2.1\" = \"late-hang\" }}), got {spec!r}")


class AptRepo:
    """One scenario's repository, served by `python3 -m http.server` on a free loopback port.
    `variants`: version -> variant, one fleet-canary .deb each (see `candidates`)."""

    def __init__(self, directory: Path, variants: dict[str, str],
                 agent_version: str | None = None):
        self.dir = directory
        self.variants = dict(variants)
        self.agent_version = agent_version
        self.dir.mkdir(parents=True, exist_ok=True)
        for version, variant in self.variants.items():
            build_deb(variant, version, self.dir)
        if agent_version:
            shutil.copy(fleet_agent_deb(agent_version), self.dir)
        write_index(self.dir)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.log = open(self.dir.parent / "apt-repo-http.log", "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", "--directory",
             str(self.dir), str(self.port)],
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    break
            except OSError:
                time.sleep(0.2)
        else:
            self.stop()
            raise RuntimeError(f"apt repository server did not listen on {self.port}")

    def describe(self) -> str:
        return ", ".join(f"{NAME} {v} {k}" for v, k in self.variants.items())

    @property
    def guest_url(self) -> str:
        return f"http://10.0.2.2:{self.port}/"

    def fact(self) -> dict:
        first = next(iter(self.variants))
        return {"url": self.guest_url, "variant": self.variants[first], "version": first,
                "variants": self.variants, "agent_version": self.agent_version,
                "port": self.port}

    def stop(self) -> None:
        stop_child(self.proc, self.log)


def main(argv: list[str]) -> int:
    if len(argv) == 5 and argv[1] == "deb":
        print(build_deb(argv[2], argv[3], Path(argv[4])))
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
