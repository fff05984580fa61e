"""One emulated device: a copy-on-write overlay of the pristine image, the fake firmware
run before every boot, and a hypervisor backend (libvirt via `virsh`, or plain QEMU).

Every guest reboot and every watchdog reset ends the QEMU process (libvirt
`on_reboot=destroy`, QEMU `-no-reboot`); the machine's supervisor thread then decides
like a board would: a guest power-down leaves it off, anything else (reboot, watchdog
reset, a kernel QEMU could not load) boots again through the fake firmware.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
import signal
import socket
import string
import subprocess
import threading
import time
from pathlib import Path

from firmware import FatImage, FirmwareError, select_boot

HERE = Path(__file__).resolve().parent


LIVE: set["Machine"] = set()  # machines that may have a VM running (for signal cleanup)


class HarnessError(Exception):
    """The harness itself could not do its job (as opposed to a scenario failing)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_child(proc: subprocess.Popen, log=None) -> None:
    """Stops a service the harness started (TERM, 10 s, KILL) and closes its log."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
    if log is not None:
        log.close()


def run(cmd: list[str], timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess[str]:
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise HarnessError(f"{shlex.join(cmd)} failed ({p.returncode}): {p.stderr.strip()}")
    return p


# --- backends ---------------------------------------------------------------------------

class QemuBackend:
    """Plain qemu-system-x86_64 (or, for an arm64 machine, qemu-system-aarch64), one
    process per guest boot."""

    name = "qemu"

    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, m: "Machine", boot: "Boot") -> None:
        if m.stopping:
            raise HarnessError("the runner is stopping")
        cmd = _arm64_cmd(m, boot) if m.arch == "arm64" else [
               "qemu-system-x86_64", "-name", m.name, "-accel", "tcg", "-cpu", "max",
               "-machine", "pc", "-smp", "1", "-m", str(m.memory), "-nodefaults",
               "-display", "none", "-monitor", "none", "-no-reboot", "-rtc", "base=utc",
               "-kernel", str(boot.dir / "kernel"), "-append", boot.set.cmdline,
               "-drive", f"file={m.disk},if=virtio,format=qcow2,cache=writeback",
               "-netdev", f"user,id=n0,hostfwd=tcp:127.0.0.1:{m.port}-:22",
               "-device", "virtio-net-pci,netdev=n0",
               "-device", "i6300esb", "-action", "watchdog=reset",
               "-serial", f"file:{boot.serial}"]
        if boot.set.initramfs:
            cmd += ["-initrd", str(boot.dir / "initrd")]
        (boot.dir / "qemu.cmd").write_text(shlex.join(cmd) + "\n")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL,
                                     stdout=open(boot.dir / "qemu.log", "wb"),
                                     stderr=subprocess.STDOUT)

    def wait(self) -> None:
        assert self.proc is not None
        self.proc.wait()

    def destroy(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()  # SIGKILL: the power cord, not a shutdown

    def kill_now(self) -> None:
        """SIGKILL QEMU and return once it is dead (power-cut on a console marker)."""
        if self.proc and self.proc.returncode is None:
            pid = self.proc.pid
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                return
            _wait_dead(pid, 5)


def _arm64_cmd(m: "Machine", boot: "Boot") -> list[str]:
    """The arm64 device: QEMU's `virt` board with a Cortex-A72 (the Pi 4's core) under TCG.
    The disk is virtio-blk (the SD card), the watchdog an i6300esb on virt's PCIe bus
    (Debian's arm64 kernel has the i6300esb driver as a module; the Pi's bcm2835-wdt
    does not exist on virt), the console virt's PL011 (ttyAMA0, appended to the command
    line by the machine). The fake firmware picks the boot set as for x86 (a Pi 4)."""
    return ["qemu-system-aarch64", "-name", m.name, "-machine", "virt", "-cpu", "cortex-a72",
            "-accel", "tcg", "-smp", "1", "-m", str(m.memory), "-nodefaults",
            "-display", "none", "-monitor", "none", "-no-reboot",
            "-kernel", str(boot.dir / "kernel"), "-append", boot.cmdline,
            "-drive", f"file={m.disk},if=none,id=sd,format=qcow2,cache=writeback",
            "-device", "virtio-blk-pci,drive=sd",
            "-netdev", f"user,id=n0,hostfwd=tcp:127.0.0.1:{m.port}-:22",
            "-device", "virtio-net-pci,netdev=n0",
            "-device", "i6300esb", "-action", "watchdog=reset",
            "-serial", f"file:{boot.serial}"]


def fat_partition(disk: Path) -> tuple[int, int]:
    """Offset and size (MiB) of MBR partition 1, the FAT firmware partition of a raw disk
    image: 1 MiB + 128 MiB on the x86 image, 4 MiB + 512 MiB on a Raspberry Pi OS image."""
    with open(disk, "rb") as f:
        mbr = f.read(512)
    if len(mbr) < 512 or mbr[510:512] != b"\x55\xaa":
        raise HarnessError(f"{disk}: no MBR partition table (boot signature missing)")
    entry = mbr[446:462]
    ptype = entry[4]
    start = int.from_bytes(entry[8:12], "little") * 512
    size = int.from_bytes(entry[12:16], "little") * 512
    if ptype not in (0x0B, 0x0C, 0x0E) or size == 0:
        raise HarnessError(f"{disk}: partition 1 is not FAT (MBR type {ptype:#04x})")
    if start % MIB or size % MIB:
        raise HarnessError(f"{disk}: partition 1 is not MiB-aligned (start {start}, size {size} "
                           "bytes); the fake firmware copies it out in MiB blocks")
    return start // MIB, size // MIB


MIB = 1024 * 1024


class LibvirtBackend:
    """libvirt (`virsh -c qemu:///system`), a transient domain per guest boot."""

    name = "libvirt"
    URI = "qemu:///system"
    _lock = threading.Lock()
    _ready = False

    def __init__(self) -> None:
        self.domain: str | None = None
        self.ensure_daemons()

    @classmethod
    def virsh(cls, *args: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run(["virsh", "-q", "-c", cls.URI, *args], timeout=timeout, check=check)

    @classmethod
    def ensure_daemons(cls) -> None:
        """Start virtlogd and libvirtd by hand if they are not running (PID 1 may not be
        systemd). Idempotent; says clearly when libvirt cannot work on this machine."""
        with cls._lock:
            if cls._ready:
                return
            _kvm_node_for_libvirt()
            if cls.virsh("version", timeout=20, check=False).returncode != 0:
                for daemon, pidfile in (("virtlogd", "/run/virtlogd.pid"),
                                        ("libvirtd", "/run/libvirtd.pid")):
                    if not _pidfile_alive(pidfile):
                        p = run([daemon, "-d"], check=False)
                        if p.returncode != 0:
                            raise HarnessError(f"libvirt is not usable here: `{daemon} -d` failed: "
                                               f"{p.stderr.strip()} (use --qemu for plain QEMU)")
                deadline = time.monotonic() + 30
                while True:
                    p = cls.virsh("version", timeout=20, check=False)
                    if p.returncode == 0:
                        break
                    if time.monotonic() > deadline:
                        raise HarnessError("libvirt is not usable here: `virsh version` fails: "
                                           f"{p.stderr.strip()} (use --qemu for plain QEMU)")
                    time.sleep(1)
            cls._ready = True
        for name in cls.destroy_domains(None):
            print(f"vm-tests: destroyed {name}, left behind by a runner that is gone", flush=True)

    @classmethod
    def destroy_domains(cls, owner_pid: int | None = None) -> list[str]:
        """Destroy harness domains (`fleet-vm-<scenario>-<pid>`) of runner `owner_pid`,
        or, with None, those whose runner is gone (left behind by a killed run)."""
        p = cls.virsh("list", "--name", check=False, timeout=30)
        gone = []
        for name in p.stdout.split():
            if not name.startswith("fleet-vm-"):
                continue
            pid = name.rsplit("-", 1)[-1]
            if not pid.isdigit():
                continue
            mine = owner_pid is not None and int(pid) == owner_pid
            stale = owner_pid is None and not _pid_alive(int(pid))
            if mine or stale:
                cls.virsh("destroy", name, check=False, timeout=60)
                gone.append(name)
        return gone

    def start(self, m: "Machine", boot: "Boot") -> None:
        if m.stopping:
            raise HarnessError("the runner is stopping")
        tpl = string.Template((HERE / "domain.xml").read_text())
        initrd = f"<initrd>{boot.dir / 'initrd'}</initrd>" if boot.set.initramfs else ""
        xml = tpl.substitute(name=m.name, memory=m.memory, kernel=boot.dir / "kernel",
                             initrd_xml=initrd, cmdline=_xml_escape(boot.set.cmdline),
                             disk=m.disk, serial=boot.serial, port=m.port)
        path = boot.dir / "domain.xml"
        path.write_text(xml)
        self.domain = m.name
        p = self.virsh("create", str(path), check=False, timeout=120)
        if p.returncode != 0:
            raise HarnessError(f"virsh create failed: {p.stderr.strip()} "
                               "(libvirt unusable? try --qemu)")

    def wait(self) -> None:
        while True:
            p = self.virsh("domstate", self.domain or "", check=False, timeout=30)
            state = p.stdout.strip()
            if p.returncode != 0 or state.startswith("shut off") or state.startswith("crashed"):
                if p.returncode == 0:  # a transient domain normally vanishes; be sure
                    self.virsh("destroy", self.domain or "", check=False)
                return
            time.sleep(1)

    def destroy(self) -> None:
        if self.domain:
            self.virsh("destroy", self.domain, check=False, timeout=60)

    def kill_now(self) -> None:
        """SIGKILL the domain's QEMU process directly (its pid file under /run/libvirt/qemu)
        and return once it is dead: `virsh destroy` alone costs a client start and an RPC
        (1.8 s measured on a busy host), and libvirt tries SIGTERM first. libvirt then sees
        the domain gone (wait() destroys what is left). Without a pid file: `virsh destroy`."""
        pidfile = Path("/run/libvirt/qemu") / f"{self.domain}.pid"
        try:
            pid = int(pidfile.read_text().strip())
            os.kill(pid, signal.SIGKILL)
        except (OSError, ValueError):
            self.destroy()
            return
        _wait_dead(pid, 5)


def _wait_dead(pid: int, timeout: float) -> bool:
    """Until process `pid` is gone or a zombie (it runs no more guest code)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return True
        if stat.rsplit(")", 1)[-1].split()[0] in ("Z", "X"):
            return True
        time.sleep(0.001)
    return False


def _kvm_node_for_libvirt() -> None:
    """libvirt checks /dev/kvm as its qemu user when it validates its capability cache.
    Where /dev/kvm is root-only (no udev in a container) that check fails, and libvirt
    re-probes QEMU on every `virsh create` (about 40 s under TCG). Give the node the
    group and mode Debian's udev rules give it. Guests still run under TCG (type='qemu')."""
    import grp
    import stat
    try:
        st = os.stat("/dev/kvm")
        gid = grp.getgrnam("kvm").gr_gid
    except (OSError, KeyError):
        return
    if st.st_gid != gid or stat.S_IMODE(st.st_mode) & 0o060 != 0o060:
        os.chown("/dev/kvm", -1, gid)
        os.chmod("/dev/kvm", 0o660)


def _pidfile_alive(path: str) -> bool:
    try:
        return _pid_alive(int(Path(path).read_text().strip()))
    except (OSError, ValueError):
        return False


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except OSError:
        return False


def _xml_escape(s: str) -> str:
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


# --- the machine ------------------------------------------------------------------------

@dataclasses.dataclass
class Boot:
    index: int
    dir: Path
    serial: Path
    set: object  # firmware.BootSet
    started: float
    cmdline: str = ""  # what QEMU boots: the set's command line (+ console= on arm64)
    ended: float | None = None
    end: str | None = None  # poweroff | reboot | reset | power-cut | no-boot


class Machine:
    # arch -> what the harness appends to the command line it boots: on arm64 virt's PL011
    # console, and the longer device timeout the x86 image has in vm-timeouts.conf (the
    # converted Pi image is the user's, without VM settings: under TCG on a busy host udev
    # took longer than systemd's default 90 s for /dev/vg0/agent-state, emergency mode).
    ARCHES = {"x86": "", "arm64": "console=ttyAMA0 systemd.default_device_timeout_sec=300"}

    def __init__(self, name: str, image: Path, rundir: Path, backend: str, memory: int,
                 log, arch: str = "x86", disk_size: str | None = None) -> None:
        if arch not in self.ARCHES:
            raise HarnessError(f"[vm] arch = {arch!r}: one of {', '.join(self.ARCHES)}")
        self.arch = arch
        self.name = name
        self.image = Path(image).resolve()
        self.rundir = Path(rundir)
        self.memory = memory
        self.log = log
        self.port = free_port()
        self.disk = self.rundir / "disk.qcow2"
        self.boots: list[Boot] = []
        self.events: list[tuple[float, str]] = []
        self.powered = False
        self.stopping = False  # set on SIGTERM/SIGINT: no further boots
        self._cut = False
        self._lock = threading.Condition()
        self._thread: threading.Thread | None = None
        # arm64 is always plain QEMU: lib/domain.xml is the x86 machine, and libvirt would
        # add nothing here (the power cut is a SIGKILL of QEMU either way).
        if arch == "arm64":
            backend = "qemu"
        self.backend_name = backend
        self.backend = LibvirtBackend() if backend == "libvirt" else QemuBackend()
        self.rundir.mkdir(parents=True, exist_ok=True)
        self.fat_mib = fat_partition(self.image / "disk.img")
        LIVE.add(self)
        # `[vm] disk_size`: a card larger than the image (the overlay's virtual size).
        run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b",
             str(self.image / "disk.img"), str(self.disk), *([disk_size] if disk_size else [])])
        self.key = self.image / "id_ed25519"
        self.known_hosts = self.rundir / "known_hosts"
        host_key = (self.image / "host_key").read_text().split(None, 1)[1]
        self.known_hosts.write_text(f"[127.0.0.1]:{self.port} {host_key}")

    # power ----------------------------------------------------------------------------
    def power_on(self) -> None:
        with self._lock:
            if self.powered:
                raise HarnessError("power on: the machine is already on")
            self.powered = True
            self._cut = False
        try:
            self._boot()
        except BaseException:
            with self._lock:
                self.powered = False
            raise
        self._thread = threading.Thread(target=self._supervise, daemon=True)
        self._thread.start()

    def fat(self) -> FatImage:
        """This machine's FAT firmware partition (read with mtools; commit() writes back)."""
        return FatImage(self.disk, *self.fat_mib)

    def _boot(self) -> None:
        idx = len(self.boots) + 1
        bdir = self.rundir / f"boot-{idx}"
        console = self.ARCHES[self.arch]
        with self.fat() as fat:
            try:
                bset = select_boot(fat, bdir)
            finally:
                fat.commit()
        boot = Boot(idx, bdir, self.rundir / f"serial-boot-{idx}.log", bset, time.monotonic(),
                    cmdline=f"{bset.cmdline} {console}".strip())
        boot.serial.touch()
        self.boots.append(boot)
        self.log(f"fake firmware: boot {idx}: {bset.describe()}")
        self.backend.start(self, boot)

    def _supervise(self) -> None:
        while True:
            self.backend.wait()
            boot = self.boots[-1]
            boot.ended = time.monotonic()
            tail = self.serial_tail(boot, 400)
            with self._lock:
                if self._cut:
                    boot.end = "power-cut"
                elif any("reboot: Power down" in line for line in tail):
                    boot.end = "poweroff"
                elif any("reboot: Restarting system" in line for line in tail):
                    boot.end = "reboot"
                else:
                    boot.end = "reset"
                self.events.append((boot.ended, boot.end))
                stay_off = boot.end in ("power-cut", "poweroff")
                if stay_off:
                    self.powered = False
                self._lock.notify_all()
            self.log(f"boot {boot.index} ended: {boot.end} after {boot.ended - boot.started:.0f} s")
            if stay_off:
                return
            try:
                self._boot()
            except (FirmwareError, HarnessError) as e:
                self.log(f"cannot boot again: {e}")
                with self._lock:
                    self.powered = False
                    self.events.append((time.monotonic(), "no-boot"))
                    self._lock.notify_all()
                return

    def power_cut(self) -> None:
        with self._lock:
            if not self.powered:
                return
            self._cut = True
        self.backend.destroy()
        self.wait_off(60)

    def cut_on_marker(self, pattern: "re.Pattern[str]", timeout: float,
                      poll: float = 0.005) -> dict:
        """Follow the serial console of the current boot (and of any boot after it, as the
        guest reboots by itself) and pull the plug the moment `pattern` shows up: the files
        are polled every `poll` seconds, reading only the bytes appended since the last
        read, and the hypervisor process is SIGKILLed at once. Returns what was matched and
        the delays: `seen_ms` = wall time from the console file's last write (QEMU wrote
        the marker at or before it) to the read that saw it, `kill_ms` = from that read to
        QEMU dead. Raises HarnessError when the marker never comes, the machine goes off
        first, or the marker came in a boot that had already ended (too late to cut it)."""
        deadline = time.monotonic() + timeout
        first = max(len(self.boots), 1)
        offsets: dict[int, int] = {}
        tails: dict[int, str] = {}
        first_pass = True
        while True:
            for b in list(self.boots[first - 1:]):
                try:
                    with open(b.serial, "rb") as f:
                        f.seek(offsets.get(b.index, 0))
                        data = f.read()
                        mtime = os.fstat(f.fileno()).st_mtime
                except OSError:
                    continue
                if not data:
                    continue
                t_read, wall = time.monotonic(), time.time()
                offsets[b.index] = offsets.get(b.index, 0) + len(data)
                text = tails.get(b.index, "") + data.decode("utf-8", "replace").replace("\r", "")
                mt = pattern.search(text)
                if not mt:
                    tails[b.index] = text[-4096:]  # a marker split across two reads
                    continue
                with self._lock:
                    current = self.powered and self.boots[-1] is b and b.end is None
                    if current:
                        self._cut = True
                if not current:
                    raise HarnessError(f"marker /{pattern.pattern}/ came in boot {b.index}, "
                                       "which had already ended: too late to cut on it")
                self.backend.kill_now()
                t_dead = time.monotonic()
                self.wait_off(60)
                return {"matched": mt.group(0), "boot": b.index,
                        "seen_ms": round(max(wall - mtime, 0) * 1000, 1),
                        "kill_ms": round((t_dead - t_read) * 1000, 1),
                        "on_first_read": first_pass, "poll_ms": poll * 1000}
            first_pass = False
            if not self.powered:
                raise HarnessError(f"the machine went off before /{pattern.pattern}/ appeared")
            if time.monotonic() > deadline:
                raise HarnessError(f"marker /{pattern.pattern}/ not seen within {timeout:.0f} s")
            time.sleep(poll)

    def wait_off(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._lock:
            while self.powered:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._lock.wait(min(left, 1))
        if self._thread:
            self._thread.join(10)
        return True

    def resets(self) -> int:
        """Boots that ended without the guest asking (watchdog, triple fault, ...)."""
        return sum(1 for _, e in self.events if e == "reset")

    def reboots(self) -> int:
        """Boots the guest ended with a reboot of its own."""
        return sum(1 for _, e in self.events if e == "reboot")

    def wait_event(self, after: float, kinds: tuple[str, ...], timeout: float) -> str | None:
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                for t, e in self.events:
                    if t >= after and e in kinds:
                        return e
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._lock.wait(min(left, 1))

    def close(self) -> None:
        self.power_cut()
        LIVE.discard(self)

    # serial -----------------------------------------------------------------------------
    def serial_tail(self, boot: Boot | None = None, n: int = 50) -> list[str]:
        boot = boot or (self.boots[-1] if self.boots else None)
        if boot is None or not boot.serial.exists():
            return []
        data = boot.serial.read_bytes().decode("utf-8", "replace").replace("\r", "")
        return data.splitlines()[-n:]

    def last_serial_lines(self, n: int = 50) -> list[str]:
        """The last n serial lines across boots, with a header per boot."""
        out: list[str] = []
        for b in reversed(self.boots):
            lines = self.serial_tail(b, n)
            out = [f"----- boot {b.index} ({b.set.mode} set) -----", *lines, *out]
            if len(out) >= n:
                break
        return out[-n:]

    def serial_text(self, boot: Boot) -> str:
        return boot.serial.read_bytes().decode("utf-8", "replace") if boot.serial.exists() else ""

    # ssh --------------------------------------------------------------------------------
    def ssh_cmd(self, command: str, connect_timeout: int = 5) -> list[str]:
        return ["ssh", "-q", "-i", str(self.key), "-p", str(self.port),
                "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
                "-o", f"UserKnownHostsFile={self.known_hosts}", "-o", "StrictHostKeyChecking=yes",
                "-o", f"ConnectTimeout={connect_timeout}", "-o", "ServerAliveInterval=5",
                "-o", "ServerAliveCountMax=3", "-o", "LogLevel=ERROR",
                "root@127.0.0.1", command]

    def ssh(self, command: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        try:
            return subprocess.run(self.ssh_cmd(command), capture_output=True, text=True,
                                  timeout=timeout, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired as e:
            return subprocess.CompletedProcess(e.cmd, 124, _s(e.stdout),
                                               _s(e.stderr) + f"\n(ssh timed out after {timeout:.0f} s)")

    EMERGENCY = ("Cannot open access to console", "You are in emergency mode",
                 "Give root password for maintenance")

    def in_emergency(self) -> bool:
        """systemd gave up booting: waiting longer for SSH is pointless."""
        text = self.serial_text(self.boots[-1]) if self.boots else ""
        return any(p in text for p in self.EMERGENCY)

    def wait_ssh(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.powered or self.in_emergency():
                return False
            if self.ssh("true", timeout=20).returncode == 0:
                return True
            time.sleep(2)
        return False


def _s(b: bytes | str | None) -> str:
    if b is None:
        return ""
    return b if isinstance(b, str) else b.decode("utf-8", "replace")
