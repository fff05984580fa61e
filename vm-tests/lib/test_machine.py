"""Tests of Machine.cut_on_marker (the power cut on a serial-console marker) against a real
child process standing in for QEMU: it writes a console file the way QEMU's `-serial file:`
does and is SIGKILLed by the same QemuBackend code path the harness uses.

Run: python3 -m unittest discover -s vm-tests/lib -p 'test_*.py'
"""

from __future__ import annotations

import re
import subprocess
import tempfile
import threading
import time
import unittest
from pathlib import Path

from firmware import BootSet
from machine import Boot, HarnessError, Machine, QemuBackend


def fake_machine(d: Path, script: str) -> Machine:
    """A Machine whose only boot is `sh -c script` (stdout appended to its console file)."""
    m = Machine.__new__(Machine)
    m.name, m.log, m.events, m.boots = "t", (lambda *_: None), [], []
    m.powered, m.stopping, m._cut = True, False, False
    m._lock = threading.Condition()
    m.backend = QemuBackend()
    serial = d / "serial-boot-1.log"
    serial.touch()
    bset = BootSet("default", "config.txt", "", "vmlinuz", None, "cmdline.txt", "", [])
    m.boots.append(Boot(1, d, serial, bset, time.monotonic()))
    with open(serial, "ab") as out:
        m.backend.proc = subprocess.Popen(["sh", "-c", script], stdout=out,
                                          stdin=subprocess.DEVNULL)
    m._thread = threading.Thread(target=m._supervise, daemon=True)
    m._thread.start()
    return m


class CutOnMarker(unittest.TestCase):
    def setUp(self) -> None:
        self.tmp = tempfile.TemporaryDirectory()
        self.d = Path(self.tmp.name)

    def tearDown(self) -> None:
        self.tmp.cleanup()

    def test_cuts_within_milliseconds_and_nothing_after_runs(self) -> None:
        # The marker, then (if the "guest" lived on) a line that must never be written.
        m = fake_machine(self.d, "sleep 0.4; echo 'fleet-bootcount: 1 initramfs merge: immediate'; "
                                 "sleep 0.3; echo AFTER")
        t0 = time.monotonic()
        cut = m.cut_on_marker(re.compile(r"merge: (immediate|finished)"), timeout=10)
        self.assertLess(time.monotonic() - t0, 2)
        self.assertEqual((cut["boot"], cut["matched"], cut["on_first_read"]),
                         (1, "merge: immediate", False))
        self.assertLess(cut["kill_ms"], 250, cut)
        self.assertLess(cut["seen_ms"], 250, cut)
        self.assertFalse(m.powered)
        self.assertEqual(m.boots[0].end, "power-cut")
        time.sleep(0.5)
        self.assertNotIn("AFTER", m.boots[0].serial.read_text())

    def test_marker_split_across_writes_is_found(self) -> None:
        m = fake_machine(self.d, "printf 'fleet-bootcount: mer'; sleep 0.3; printf 'ge: immediate\\n'; sleep 30")
        cut = m.cut_on_marker(re.compile(r"merge: immediate"), timeout=10)
        self.assertEqual(cut["matched"], "merge: immediate")

    def test_no_marker_is_an_error_and_the_guest_keeps_running(self) -> None:
        m = fake_machine(self.d, "echo booting; sleep 30")
        with self.assertRaisesRegex(HarnessError, "not seen within"):
            m.cut_on_marker(re.compile(r"never"), timeout=0.3)
        self.assertTrue(m.powered)
        m.power_cut()
        self.assertFalse(m.powered)

    def test_guest_gone_before_the_marker(self) -> None:
        m = fake_machine(self.d, "echo 'reboot: Power down'")
        with self.assertRaisesRegex(HarnessError, "went off before"):
            m.cut_on_marker(re.compile(r"never"), timeout=10)


if __name__ == "__main__":
    unittest.main()
