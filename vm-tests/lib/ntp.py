"""A real NTP server for the guests: Debian's chronyd on a free loopback UDP port, serving the
host's clock (`local stratum 8`, `-x`: it never touches the host's clock). QEMU user-mode
networking shows the host's loopback to the guest as 10.0.2.2, so a guest's time guard asks
`10.0.2.2:<port>`.

chronyd is not installed on the host (the package would replace the host's time daemon):
its binary is taken from Debian's chrony package (`apt-get download`, `dpkg-deb -x`) into
the harness cache once; its libraries come with vm-tests/install-deps.
"""

from __future__ import annotations

import os
import secrets
import socket
import struct
import subprocess
import tempfile
import time
from pathlib import Path

from machine import HarnessError, free_port, stop_child

NTP_UNIX = 2_208_988_800


def chronyd(cache: Path) -> Path:
    """The chronyd binary: on PATH if installed, else extracted into `cache/chrony` once."""
    for p in ("/usr/sbin/chronyd", "/sbin/chronyd"):
        if os.access(p, os.X_OK):
            return Path(p)
    dest = cache / "chrony"
    binary = dest / "usr/sbin/chronyd"
    if os.access(binary, os.X_OK):
        return binary
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        def download() -> subprocess.CompletedProcess[str]:
            return subprocess.run(["apt-get", "download", "-q", "chrony"], cwd=tmp,
                                  capture_output=True, text=True, timeout=300)
        p = download()
        if p.returncode != 0:  # a fresh machine may have no package lists yet
            subprocess.run(["apt-get", "update", "-qq"], capture_output=True, timeout=600)
            p = download()
        debs = list(Path(tmp).glob("chrony_*.deb"))
        if p.returncode != 0 or not debs:
            raise HarnessError(f"apt-get download chrony failed: {(p.stderr or p.stdout).strip()}")
        part = Path(tmp) / "x"
        subprocess.run(["dpkg-deb", "-x", str(debs[0]), str(part)], check=True, timeout=120)
        if dest.exists():
            subprocess.run(["rm", "-rf", str(dest)], check=True)
        part.rename(dest)
    return binary


def ask(port: int, timeout: float = 1.0) -> float:
    """One SNTP client query to 127.0.0.1:port; the server's transmit time (Unix seconds).
    Only the harness's readiness check: it checks the reply answers this request."""
    nonce = secrets.randbits(64)
    req = bytearray(48)
    req[0] = (4 << 3) | 3  # version 4, mode 3 (client)
    req[40:48] = struct.pack("!Q", nonce)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(bytes(req), ("127.0.0.1", port))
        data, _ = s.recvfrom(512)
    if len(data) < 48 or data[0] & 7 != 4 or struct.unpack("!Q", data[24:32])[0] != nonce:
        raise OSError("not an answer to this request")
    secs, frac = struct.unpack("!II", data[40:48])
    return secs - NTP_UNIX + frac / 2**32


class NtpService:
    """`[services] ntp = true`: chronyd serving the host's clock to the guests."""

    def __init__(self, rundir: Path, cache: Path):
        self.port = free_port()
        self.dir = rundir / "chrony"
        self.dir.mkdir(parents=True, exist_ok=True)
        conf = self.dir / "chrony.conf"
        conf.write_text(
            f"port {self.port}\nbindaddress 127.0.0.1\nallow 127.0.0.1\nlocal stratum 8\n"
            f"cmdport 0\npidfile {self.dir / 'chronyd.pid'}\ndriftfile {self.dir / 'drift'}\n")
        self.log = open(rundir / "chronyd.log", "wb")
        self.proc = subprocess.Popen(
            [str(chronyd(cache)), "-x", "-d", "-u", "root", "-f", str(conf)],
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while True:
            try:
                served = ask(self.port)
                break
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.stop()
                    raise HarnessError(f"chronyd did not answer on UDP {self.port} "
                                       f"(log: {rundir / 'chronyd.log'})")
                time.sleep(0.2)
        self.skew_at_start = served - time.time()

    @property
    def guest_addr(self) -> str:
        return f"10.0.2.2:{self.port}"

    def fact(self) -> dict:
        return {"addr": self.guest_addr, "port": self.port,
                "served_minus_host_secs": round(self.skew_at_start, 3)}

    def stop(self) -> None:
        stop_child(self.proc, self.log)
