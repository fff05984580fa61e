"""The clock-skew check's NTP server: Debian's chronyd, started as the harness starts it,
answers an SNTP query with the host's time (run by `run`)."""

import tempfile
import time
import unittest
from pathlib import Path

import scenario  # noqa: F401  (sets up the import path as the runner does)
from ntp import NtpService, ask


class NtpServiceTest(unittest.TestCase):
    def test_chronyd_serves_the_host_clock_on_its_port(self):
        with tempfile.TemporaryDirectory() as d:
            svc = NtpService(Path(d), scenario.WORK / "cache")
            try:
                served = ask(svc.port)
                self.assertLess(abs(served - time.time()), 2.0)
                self.assertEqual(svc.guest_addr, f"10.0.2.2:{svc.port}")
                self.assertLess(abs(svc.fact()["served_minus_host_secs"]), 2.0)
            finally:
                svc.stop()
            with self.assertRaises(OSError):
                ask(svc.port, timeout=0.5)


if __name__ == "__main__":
    unittest.main()
