"""Run VM canary scenarios and report (JUnit XML + one-screen summary).

Usage (normally through vm-tests/run, which installs host packages and builds the image):
  runner.py --image DIR [--qemu] [-j N] [--keep] [scenario|path.toml ...]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import os
import signal
import sys
import threading
import time
import traceback
import xml.etree.ElementTree as ET
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import LIVE, HarnessError, LibvirtBackend, Machine  # noqa: E402
from scenario import LIVE_SERVICES, Run, StepFailed, load, machine_names  # noqa: E402

VMT = Path(__file__).resolve().parent.parent
PRINT = threading.Lock()
T0 = time.monotonic()


class Slots:
    """-j N counts guests, not scenarios: a scenario with two machines takes two slots
    (each guest is one TCG vCPU), so `-j 2` never runs more than two guests at once."""

    def __init__(self, n: int):
        self.free = n
        self.total = n
        self.cv = threading.Condition()

    def take(self, k: int) -> int:
        k = min(k, self.total)  # a scenario bigger than -j runs alone
        with self.cv:
            while self.free < k:
                self.cv.wait()
            self.free -= k
        return k

    def give(self, k: int) -> None:
        with self.cv:
            self.free += k
            self.cv.notify_all()


def say(msg: str) -> None:
    with PRINT:
        print(msg, flush=True)


class Result:
    def __init__(self, name: str):
        self.name = name
        self.status = "ERROR"
        self.message = ""
        self.wall = 0.0
        self.boots = 0
        self.resets = 0
        self.reboots = 0
        self.log: list[str] = []
        self.serial: list[str] = []
        self.rundir: Path | None = None
        self.snapshot = ""  # LVM snapshot create time (OS-upgrade scenarios)
        self.merge = ""  # snapshot merge time in the initramfs, and whether it was immediate


def os_upgrade_times(rundir: Path) -> tuple[str, str]:
    """Snapshot create and merge times of an OS-upgrade scenario, read from what the guest
    reported: `snapshot_secs` of vm-os-upgrade-by-hand, else the agent's phase history
    (Snapshotting -> SavingBootSet, whole seconds); the initramfs's boot.log line
    `merge: immediate; vg0/root restored in X s` on the serial console."""
    import json
    import re
    snap, merge = "", ""
    try:
        facts = json.loads((rundir / "facts.json").read_text())
    except (OSError, ValueError):
        facts = {}
    for v in facts.values():
        if isinstance(v, dict) and isinstance(v.get("snapshot_secs"), (int, float)):
            snap = f"{v['snapshot_secs']:.1f}s"
            break
        hist = (v.get("details", {}).get("system-upgrade", {}) or {}).get("history") \
            if isinstance(v, dict) and isinstance(v.get("details"), dict) else None
        if hist:
            at = {}
            for h in hist:
                at.setdefault(h.get("phase"), h.get("at"))
            if at.get("Snapshotting") is not None and at.get("SavingBootSet") is not None:
                snap = f"<={at['SavingBootSet'] - at['Snapshotting'] + 1}s"
                break
    merges = []
    for f in sorted(rundir.glob("serial-boot-*.log")):
        text = f.read_bytes().decode("utf-8", "replace")
        for m in re.finditer(r"merge: (immediate|finished by reactivation); \S+ restored in ([0-9.]+) s", text):
            merges.append(f"{m.group(2)}s {'imm' if m.group(1) == 'immediate' else 'deferred'}")
    merge = ",".join(merges)
    return snap, merge


def resolve(arg: str) -> Path:
    for p in (Path(arg), VMT / arg):
        if p.suffix == ".toml" and p.exists():
            return p.resolve()
    q = VMT / "scenarios" / f"{arg}.toml"
    if q.exists():
        return q
    known = ", ".join(sorted(s.stem for s in (VMT / "scenarios").glob("*.toml")))
    raise SystemExit(f"run: unknown scenario {arg!r} (known: {known})")


# Wall seconds per scenario in the last clean-clone `.ci/run` (-j 2, TCG), for the order
# below; a scenario's figure is updated when it changes (README "Timings"). os-hang,
# os-power-cut and os-hard-fail each took in a second scenario: the sum of the two runs'
# steps in that CI, less the shared boot and set-up (and, for os-hang, 20 s per late-hang
# watchdog reset), until a CI run measures them.
EXPECTED_SECS = {
    # The clean-clone `.ci/run` at be066d0 (2026-12-02, issue 16's tree, 9/9 passed).
    "provision": 351, "agent-corrupt": 144, "arm64-clean-boot": 221, "clean-boot": 226,
    "os-clean": 362, "power-cut-hang": 406,
    "os-hang": 824, "os-power-cut": 709, "os-hard-fail": 648,
}
UNKNOWN_SECS = 300  # a new scenario: about two boots and an upgrade under CI load


def expected_secs(path: Path) -> float:
    return EXPECTED_SECS.get(path.stem, UNKNOWN_SECS)


def schedule(paths: list[Path]) -> list[Path]:
    """The order scenarios are started in: those with more guests first (one that needs
    every slot then starts while all are free, instead of idling a slot until the scenario
    beside it ends), then longest first (greedy LPT: each free slot takes the longest
    scenario left, so no long one starts last beside an idle slot)."""
    def guests(p: Path) -> int:
        try:
            return len(machine_names(load(p), p))
        except Exception:  # a broken file fails in run_one, with its message
            return 1
    return sorted(paths, key=lambda p: (-guests(p), -expected_secs(p), p.stem))


def simulate(paths: list[Path], slots: int) -> float:
    """Expected wall time of `schedule(paths)` on `slots` slots (each scenario takes as many
    slots as it has guests and starts when they are free, as run_one does)."""
    free = [0.0] * max(1, slots)
    for p in schedule(paths):
        try:
            k = min(len(machine_names(load(p), p)), len(free))
        except Exception:  # noqa: BLE001
            k = 1
        free.sort()
        start = free[k - 1]
        for i in range(k):
            free[i] = start + expected_secs(p)
    return max(free)


def image_for(vm: dict, args: argparse.Namespace) -> Path:
    """`[vm] arch = "arm64"` boots the converted Raspberry Pi image (build-pi-image),
    anything else the x86 image (build-image)."""
    if vm.get("arch", "x86") == "arm64":
        if not args.pi_image:
            raise HarnessError("an arm64 scenario needs --pi-image DIR (vm-tests/build-pi-image)")
        return args.pi_image
    if not args.image:
        raise HarnessError("an x86 scenario needs --image DIR (vm-tests/build-image)")
    return args.image


def is_arm64(path: Path) -> bool:
    """Whether a scenario file boots the arm64 machine (for vm-tests/run: --arches)."""
    try:
        return load(path).get("vm", {}).get("arch") == "arm64"
    except Exception:  # a broken file fails in run_one, with its message
        return False


def run_one(path: Path, args: argparse.Namespace, outdir: Path, slots: "Slots | None" = None) -> Result:
    sc = load(path)
    names = machine_names(sc, path)
    taken = slots.take(len(names)) if slots else 0
    try:
        return _run_one(sc, names, args, outdir)
    finally:
        if slots:
            slots.give(taken)


def _run_one(sc: dict, names: list[str], args: argparse.Namespace, outdir: Path) -> Result:
    name = sc["name"]
    res = Result(name)
    rundir = outdir / name
    res.rundir = rundir
    rundir.mkdir(parents=True, exist_ok=True)
    logf = open(rundir / "scenario.log", "w")
    t0 = time.monotonic()

    def log(msg: str) -> None:
        line = f"[{name:<12} {time.monotonic() - t0:6.1f}s] {msg}"
        res.log.append(line)
        logf.write(line + "\n")
        logf.flush()
        say(line)

    machines: dict[str, Machine] = {}
    machine = None  # the one whose serial lines a failure shows
    try:
        vm = sc.get("vm", {})
        for mname in names:
            # One machine keeps the historical layout (rundir/disk.qcow2, serial-boot-N.log);
            # several get a subdirectory each and a domain name with their own suffix.
            single = len(names) == 1
            mlog = log if single else (lambda msg, _n=mname: log(f"[{_n}] {msg}"))
            machines[mname] = Machine(
                f"fleet-vm-{name}{'' if single else '-' + mname}-{os.getpid()}", image_for(vm, args),
                rundir if single else rundir / mname, "qemu" if args.qemu else "libvirt",
                int(vm.get("memory", 512)), mlog, arch=vm.get("arch", "x86"),
                disk_size=vm.get("disk_size"))
        machine = next(iter(machines.values()))
        ports = ", ".join(f"{n} {m.port}" for n, m in machines.items())
        log(f"{sc.get('description', '').strip()} [{machine.backend.name}, ssh port "
            f"{machine.port if len(machines) == 1 else ports}]")
        r = Run(sc, machines, rundir, log, args.timeout_scale)
        try:
            r.execute()
        finally:
            machine = r.m
        res.status = "PASS"
    except StepFailed as e:
        res.status = "FAIL"
        res.message = str(e)
        if e.serial and machine:
            res.serial = machine.last_serial_lines(50)
    except HarnessError as e:
        res.status = "ERROR"
        res.message = f"harness: {e}"
    except Exception as e:  # a bug in the harness must still produce a report
        res.status = "ERROR"
        res.message = f"harness bug: {e!r}\n{traceback.format_exc()}"
    finally:
        for m in machines.values():
            try:
                m.close()
            except Exception as e:  # noqa: BLE001
                log(f"cleanup: {e}")
            res.boots += len(m.boots)
            res.resets += m.resets()
            res.reboots += m.reboots()
            if not args.keep:
                m.disk.unlink(missing_ok=True)
        res.wall = time.monotonic() - t0
        res.snapshot, res.merge = os_upgrade_times(rundir)
        if res.status != "PASS":
            for line in res.message.splitlines():
                log(f"{res.status}: {line}")
            if res.serial:
                log("last 50 serial lines:")
                for line in res.serial:
                    log(f"  | {line}")
        log(f"{res.status} in {res.wall:.0f} s")
        logf.close()
    return res


def junit(results: list[Result], path: Path) -> None:
    suite = ET.Element("testsuite", name="vm-tests", tests=str(len(results)),
                       failures=str(sum(r.status == "FAIL" for r in results)),
                       errors=str(sum(r.status == "ERROR" for r in results)),
                       time=f"{sum(r.wall for r in results):.1f}")
    for r in results:
        tc = ET.SubElement(suite, "testcase", classname="vm-tests", name=r.name, time=f"{r.wall:.1f}")
        if r.status == "FAIL":
            f = ET.SubElement(tc, "failure", message=r.message.splitlines()[0] if r.message else "")
            f.text = r.message + ("\n\nlast 50 serial lines:\n" + "\n".join(r.serial) if r.serial else "")
        elif r.status == "ERROR":
            e = ET.SubElement(tc, "error", message=r.message.splitlines()[0] if r.message else "")
            e.text = r.message
        out = ET.SubElement(tc, "system-out")
        out.text = "\n".join(r.log)
    ET.indent(suite)
    ET.ElementTree(suite).write(path, encoding="unicode", xml_declaration=True)


def summary(results: list[Result], wall: float, outdir: Path) -> str:
    w = max([len(r.name) for r in results] + [8])
    lines = [f"{'scenario':<{w}}  result  wall    boots  reboots  resets  snapshot  merge (initramfs)   detail",
             f"{'-' * w}  ------  ------  -----  -------  ------  --------  ------------------  ------"]
    for r in results:
        detail = r.message.splitlines()[0][:70] if r.message else ""
        lines.append(f"{r.name:<{w}}  {r.status:<6}  {r.wall:5.0f}s  {r.boots:5d}  {r.reboots:7d}  "
                     f"{r.resets:6d}  {r.snapshot or '-':<8}  {r.merge or '-':<18}  {detail}")
    ok = sum(r.status == "PASS" for r in results)
    lines.append(f"{ok}/{len(results)} passed in {wall:.0f} s wall; logs, serial consoles, "
                 f"facts and junit.xml in {outdir}")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(prog="vm-tests/run", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("scenarios", nargs="*", help="scenario names or .toml paths (default: all)")
    ap.add_argument("--image", type=Path, help="image dir from build-image (x86 scenarios)")
    ap.add_argument("--pi-image", type=Path,
                    help="image dir from build-pi-image (scenarios with [vm] arch = \"arm64\")")
    ap.add_argument("--arches", action="store_true",
                    help="print x86 and/or arm64: what the selected scenarios boot, and exit")
    ap.add_argument("--plan", action="store_true",
                    help="print the start order with each scenario's expected seconds and the "
                         "expected wall time, and exit (nothing is booted)")
    ap.add_argument("--qemu", action="store_true", help="plain QEMU instead of libvirt")
    ap.add_argument("-j", "--jobs", type=int, default=int(os.environ.get("FLEET_VM_JOBS", "2")),
                    help="scenarios run at the same time (default 2)")
    ap.add_argument("--keep", action="store_true", help="keep each scenario's disk overlay")
    ap.add_argument("--timeout-scale", type=float,
                    default=float(os.environ.get("FLEET_VM_TIMEOUT_SCALE", "1")))
    ap.add_argument("--out", type=Path, help="report directory (default work/runs/<time>)")
    args = ap.parse_args()
    # SIGTERM (CI timeout, kill) unwinds like Ctrl-C so every VM is destroyed.
    # On SIGTERM/SIGINT (CI timeout, Ctrl-C) pull every VM's plug before leaving.
    def stop(signum, _frame):
        say(f"vm-tests: signal {signum}: destroying {len(LIVE)} VM(s)")
        for m in list(LIVE):
            m.stopping = True
            m.backend.destroy()
        if not args.qemu:  # a `virsh create` may have been in flight
            time.sleep(2)
            LibvirtBackend.destroy_domains(os.getpid())
        for svc in list(LIVE_SERVICES):  # apt repositories, nats-servers
            svc.proc.kill()
        os._exit(128 + signum)
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    paths = schedule([resolve(s) for s in args.scenarios]
                     or sorted((VMT / "scenarios").glob("*.toml")))
    if args.arches:
        print(" ".join(sorted({"arm64" if is_arm64(p) else "x86" for p in paths})))
        return 0
    if args.plan:
        for p in paths:
            print(f"{p.stem:<24} {expected_secs(p):5.0f} s")
        print(f"expected wall time with -j {args.jobs}: {simulate(paths, args.jobs):.0f} s")
        return 0
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    outdir = args.out or Path(os.environ.get("FLEET_VM_WORK", VMT / "work")) / "runs" / stamp
    outdir.mkdir(parents=True, exist_ok=True)
    images = ", ".join(f"{k} {Path(v).resolve().name}" for k, v in
                       (("image", args.image), ("pi image", args.pi_image)) if v)
    say(f"vm-tests: {len(paths)} scenario(s), {args.jobs} at a time, "
        f"{'plain QEMU' if args.qemu else 'libvirt'}{' (arm64: plain QEMU)' if args.pi_image else ''}, "
        f"{images}")

    t0 = time.monotonic()
    slots = Slots(max(1, args.jobs))
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, args.jobs)) as ex:
        results = list(ex.map(lambda p: run_one(p, args, outdir, slots), paths))
    wall = time.monotonic() - t0
    junit(results, outdir / "junit.xml")
    table = summary(results, wall, outdir)
    (outdir / "summary.txt").write_text(table + "\n")
    say("\n" + table)
    return 0 if all(r.status == "PASS" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
