"""Scenario interpreter: a scenario is a TOML file of steps (see vm-tests/README.md).

Steps act on one Machine: the first of `[vm] machines` (default one, named "a"), or the one
a step names with `on = "<name>"`. Whatever a step reads back from the guest is saved as a named
*fact*; `assert` steps are jq expressions over the JSON object of all facts, evaluated
by bin/fleet-assert. A scenario fails at its first failing step, with that step's own
message and the last 50 serial lines.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import socket
import subprocess
import threading
import time
import tomllib
from pathlib import Path

from machine import HarnessError, Machine, free_port, stop_child

HERE = Path(__file__).resolve().parent
ASSERT = HERE.parent / "bin" / "fleet-assert"
REPO = HERE.parent.parent
WORK = Path(os.environ.get("FLEET_VM_WORK") or HERE.parent / "work")


class StepFailed(Exception):
    def __init__(self, message: str, serial: bool = True):
        super().__init__(message)
        self.serial = serial


class Stream:
    """A command run over SSH in the background, its stdout kept in a host-side file."""

    def __init__(self, m: Machine, name: str, command: str, pattern: str, path: Path):
        self.name = name
        self.pattern = re.compile(pattern)
        self.path = path
        self.out = open(path, "wb", buffering=0)
        self.proc = subprocess.Popen(m.ssh_cmd(command), stdin=subprocess.DEVNULL,
                                     stdout=self.out, stderr=subprocess.PIPE)

    def matches(self) -> list[re.Match[str]]:
        text = self.path.read_bytes().decode("utf-8", "replace")
        # Only complete lines count: a line still being written was not seen yet.
        lines = text.split("\n")[:-1]
        return [mt for line in lines if (mt := self.pattern.search(line))]

    def fact(self) -> dict:
        ms = self.matches()
        last = None
        if ms and ms[-1].groups():
            g = ms[-1].group(1)
            last = int(g) if g.isdigit() else g
        return {"matches": len(ms), "last": last, "running": self.proc.poll() is None,
                "exit": self.proc.poll()}

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.out.close()


LIVE_SERVICES: set = set()  # services that may be running (stopped by the runner on a signal)


def fleetctl_bin() -> Path:
    p = Path(os.environ.get("FLEETCTL_BIN") or REPO / "target" / "release" / "fleetctl")
    if not os.access(p, os.X_OK):
        raise HarnessError(f"fleetctl not found at {p} (cargo build --release -p fleetctl, "
                           "or set FLEETCTL_BIN)")
    return p


class NatsService:
    """A real `nats-server -js` on a free loopback port (the guest reaches it at 10.0.2.2),
    with the fleet's buckets created by `fleetctl init`."""

    def __init__(self, rundir: Path):
        self.port = free_port()
        self.dir = rundir / "nats"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log = open(rundir / "nats-server.log", "wb")
        self.proc = subprocess.Popen(
            ["nats-server", "-js", "-a", "127.0.0.1", "-p", str(self.port), "-sd", str(self.dir)],
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.stop()
                    raise HarnessError(f"nats-server did not listen on {self.port} "
                                       f"(log: {rundir / 'nats-server.log'})")
                time.sleep(0.2)
        p = subprocess.run([str(fleetctl_bin()), "--nats", self.host_url, "init"],
                           capture_output=True, text=True, timeout=60)
        if p.returncode != 0:
            self.stop()
            raise HarnessError(f"fleetctl init failed: {(p.stderr or p.stdout).strip()}")

    @property
    def host_url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def guest_url(self) -> str:
        return f"nats://10.0.2.2:{self.port}"

    def fact(self) -> dict:
        return {"url": self.guest_url, "host_url": self.host_url, "port": self.port}

    def stop(self) -> None:
        stop_child(self.proc, self.log)


def load(path: Path) -> dict:
    with open(path, "rb") as f:
        sc = tomllib.load(f)
    sc.setdefault("name", path.stem)
    steps = sc.get("steps")
    if not isinstance(steps, list) or not steps:
        raise HarnessError(f"{path}: no [[steps]]")
    names = machine_names(sc, path)
    for i, st in enumerate(steps, 1):
        if st.get("do") not in STEPS:
            raise HarnessError(f"{path}: step {i}: unknown do = {st.get('do')!r} "
                               f"(one of {', '.join(sorted(STEPS))})")
        if "on" in st and st["on"] not in names:
            raise HarnessError(f"{path}: step {i}: on = {st['on']!r} is not one of "
                               f"[vm] machines {names}")
    return sc


def machine_names(sc: dict, path: Path | str = "scenario") -> list[str]:
    """`[vm] machines`: a list of names (default ["a"]). Each is a guest of its own (own
    overlay disk, SSH port, boots); steps act on the first unless they say `on = "<name>"`."""
    names = sc.get("vm", {}).get("machines", ["a"])
    if (not isinstance(names, list) or not names or len(set(names)) != len(names)
            or not all(isinstance(n, str) and re.fullmatch(r"[a-z][a-z0-9]{0,7}", n) for n in names)):
        raise HarnessError(f"{path}: [vm] machines must be a list of distinct short lowercase "
                           f"names, e.g. [\"a\", \"b\"] (got {names!r})")
    return names


class Run:
    def __init__(self, sc: dict, machines: dict[str, Machine], rundir: Path, log, scale: float):
        self.sc = sc
        self.machines = machines
        # Steps without `on =` act on the first machine.
        self.default = next(iter(machines))
        self.m = machines[self.default]  # the machine of the step being run
        self.rundir = rundir
        self.log = log
        self.scale = scale
        self.t0 = time.monotonic()
        self.deadline = self.t0 + float(sc.get("timeout", 1800)) * scale
        self.facts: dict = {"t": {}}
        self.streams: dict[str, Stream] = {}
        self.step_times: list[tuple[str, float]] = []
        self._lock = threading.Lock()
        self.services: dict = {}
        # @NAME@ -> text in every step's strings: service URLs, `export`ed host output, and
        # @REPO@ (the repository, for host steps that build or sign things).
        self.subst: dict[str, str] = {"@REPO@": str(REPO), "@WORK@": str(WORK)}
        # How host steps reach the guests' sshd (e.g. fleetctl provision): each machine's
        # forwarded loopback port, the harness's client key, and one known_hosts file that
        # pins every machine's host key.
        first = machines[self.default]
        self.subst["@IMAGE@"] = str(first.image)  # disk.img, fleet-agent.deb, manifest.json
        self.subst["@SSH_KEY@"] = str(first.key)
        self.subst["@SSH_PORT@"] = str(first.port)
        for name, m in machines.items():
            self.subst[f"@SSH_PORT_{name.upper()}@"] = str(m.port)
        known = rundir / "known_hosts-all"
        known.write_text("".join(m.known_hosts.read_text().rstrip("\n") + "\n"
                                 for m in machines.values()))
        self.subst["@KNOWN_HOSTS@"] = str(known)
        # scp to the first guest with the same key, port and pinning:
        # `@SCP@ FILE... root@127.0.0.1:/path`.
        self.subst["@SCP@"] = shlex.join([
            "scp", "-q", "-i", str(first.key), "-P", str(first.port), "-o", "BatchMode=yes",
            "-o", "IdentitiesOnly=yes", "-o", f"UserKnownHostsFile={known}",
            "-o", "StrictHostKeyChecking=yes"])

    def start_services(self) -> None:
        """`[services]` of the scenario: `apt = "<variant>"` (a local apt repository with
        fleet-canary 2.0 of that variant; `apt = { "2.0" = "<variant>", "2.1" = ... }`: several
        candidate versions; `apt_agent = "<version>"` adds this tree's
        fleet-agent package at that version), `nats = true` (nats-server -js + fleetctl init),
        `ntp = true` (chronyd serving the host's clock, lib/ntp.py).
        Their guest-side URLs replace @APT_URL@ / @NATS_URL@ / @NTP_ADDR@ in every step's
        strings; @NATS_HOST_URL@ is the host-side URL (for `host` steps)."""
        svc = self.sc.get("services", {})
        if svc.get("apt"):
            from aptrepo import AptRepo, candidates
            try:
                repo = AptRepo(self.rundir / "apt-repo", candidates(svc["apt"]),
                               agent_version=svc.get("apt_agent"))
            except (RuntimeError, ValueError, subprocess.CalledProcessError) as e:
                raise HarnessError(f"apt repository: {e}") from e
            self.services["apt"] = repo
            LIVE_SERVICES.add(repo)
            self.subst["@APT_URL@"] = repo.guest_url
            agent = f", fleet-agent {repo.agent_version}" if repo.agent_version else ""
            self.log(f"apt repository ({repo.describe()}{agent}) at "
                     f"127.0.0.1:{repo.port}, guest {repo.guest_url}")
        if svc.get("nats"):
            nats = NatsService(self.rundir)
            self.services["nats"] = nats
            LIVE_SERVICES.add(nats)
            self.subst["@NATS_URL@"] = nats.guest_url
            self.subst["@NATS_HOST_URL@"] = nats.host_url
            self.log(f"nats-server -js at {nats.host_url} (guest {nats.guest_url}), fleetctl init done")
        if svc.get("ntp"):
            from ntp import NtpService
            ntp = NtpService(self.rundir, WORK / "cache")
            self.services["ntp"] = ntp
            LIVE_SERVICES.add(ntp)
            self.subst["@NTP_ADDR@"] = ntp.guest_addr
            self.log(f"chronyd at 127.0.0.1:{ntp.port} (guest {ntp.guest_addr})")
        self.facts["services"] = {k: v.fact() for k, v in self.services.items()}

    def stop_services(self) -> None:
        for v in self.services.values():
            v.stop()
            LIVE_SERVICES.discard(v)

    def expand(self, st: dict) -> dict:
        if not self.subst:
            return st
        out = {}
        for k, v in st.items():
            if isinstance(v, str):
                for a, b in self.subst.items():
                    v = v.replace(a, b)
            out[k] = v
        return out

    def now(self) -> float:
        return round(time.monotonic() - self.t0, 1)

    def timeout(self, st: dict, default: float) -> float:
        t = float(st.get("timeout", default)) * self.scale
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise StepFailed(f"scenario timeout ({self.sc.get('timeout', 1800)} s) exhausted")
        return min(t, left)

    def save(self, st: dict, value) -> None:
        if st.get("save"):
            self.facts[st["save"]] = value
            self.facts["t"][st["save"]] = self.now()

    @staticmethod
    def one_machine_facts(m: Machine) -> dict:
        return {"boots": len(m.boots), "resets": m.resets(),
                "reboots": m.reboots(),
                "powered": m.powered,
                "boot_sets": [b.set.mode for b in m.boots],
                # per boot: the firmware blobs the fake firmware "loaded" (path -> sha256)
                "firmware": [getattr(b.set, "firmware", {}) for b in m.boots],
                "ends": [b.end for b in m.boots]}

    def update_machine_facts(self) -> None:
        """`.machine`: the first machine; `.machines.<name>`: each, when there are several."""
        self.facts["machine"] = self.one_machine_facts(self.machines[self.default])
        if len(self.machines) > 1:
            self.facts["machines"] = {n: self.one_machine_facts(m) for n, m in self.machines.items()}

    def execute(self) -> None:
        steps = self.sc["steps"]
        try:
            self.start_services()
            for i, st in enumerate(steps, 1):
                st = self.expand(st)
                label = st.get("name") or f"{st['do']}"
                on = st.get("on", self.default)
                self.m = self.machines[on]
                if len(self.machines) > 1 and st["do"] not in ("host", "assert", "sleep"):
                    label += f" [on {on}]"
                if st.get("mark"):
                    self.facts["t"][st["mark"]] = self.now()
                self.log(f"step {i}/{len(steps)} {label}")
                t = time.monotonic()
                STEPS[st["do"]](self, st)
                self.step_times.append((label, time.monotonic() - t))
        finally:
            for s in self.streams.values():
                s.stop()
            self.stop_services()
            self.update_machine_facts()
            (self.rundir / "facts.json").write_text(json.dumps(self.facts, indent=2) + "\n")


# --- steps ---------------------------------------------------------------------------------

def step_boot(r: Run, st: dict) -> None:
    """Power on (the fake firmware picks the boot set) and wait until SSH answers
    (`wait = false`: only power on, so several machines boot at once; `wait-ssh` later)."""
    if not r.m.powered:
        from firmware import FirmwareError
        try:
            r.m.power_on()
        except FirmwareError as e:  # the device is bricked: that is the scenario's failure
            with r.m.fat() as fat:
                files = fat.files()
            raise StepFailed(f"the (fake) firmware cannot boot this disk: {e}; "
                             f"FAT files: {' '.join(files) or '(none readable)'}", serial=False)
    if st.get("wait", True):
        wait_ssh(r, st)


def wait_ssh(r: Run, st: dict) -> None:
    t = r.timeout(st, 600)
    if not r.m.wait_ssh(t):
        why = ("the machine is off" if not r.m.powered else
               "systemd dropped to emergency mode" if r.m.in_emergency() else
               f"no SSH within {t:.0f} s")
        raise StepFailed(st.get("message", "the guest did not come up") + f" ({why})")


def step_wait_marker(r: Run, st: dict) -> None:
    """Wait for a regex on the serial console of the current boot (or any later boot);
    with `all_boots = true`, of any boot of the scenario (a marker of a short boot that
    came and went while an earlier step ran)."""
    pat = re.compile(st["pattern"])
    t = r.timeout(st, 300)
    start_boot = 1 if st.get("all_boots") else len(r.m.boots)
    deadline = time.monotonic() + t
    while time.monotonic() < deadline:
        for b in r.m.boots[max(start_boot - 1, 0):]:
            mt = pat.search(r.m.serial_text(b))
            if mt:
                r.save(st, mt.group(0))
                return
        time.sleep(1)
    raise StepFailed(st.get("message", f"marker /{st['pattern']}/ not seen") +
                     f" (waited {t:.0f} s)")


def _parse(st: dict, out: str):
    kind = st.get("parse", "json" if st.get("save") else "text")
    if kind == "json":
        return json.loads(out)
    if kind == "int":
        return int(out.strip())
    return out


def step_ssh(r: Run, st: dict) -> None:
    """Run a command in the guest; keep its stdout (parsed) as a fact.

    `until` (jq over the parsed output) repeats the command until it holds or the step
    times out; the last value is saved either way so an assert can name what was wrong."""
    t = r.timeout(st, 120)
    deadline = time.monotonic() + t
    expect = st.get("expect_exit", 0)
    while True:
        p = (_host(r, st["run"], timeout=min(t, 120)) if st["do"] == "host"
             else r.m.ssh(st["run"], timeout=min(t, 120)))
        ok = expect == "any" or p.returncode == expect
        value, err = None, None
        if ok:
            try:
                value = _parse(st, p.stdout)
            except (ValueError, json.JSONDecodeError) as e:
                err = f"cannot parse output as {st.get('parse', 'json')}: {e}: {p.stdout[:300]!r}"
        else:
            err = (f"`{st['run']}` exited {p.returncode} (expected {expect}): "
                   f"{(p.stderr or p.stdout).strip()[-500:]}")
        if err is None and st.get("until"):
            if _jq_true(st["until"], value):
                break
            err = f"`{st['until']}` still false on {json.dumps(value)[:600]}"
        elif err is None:
            break
        if time.monotonic() >= deadline or (not r.m.powered and st["do"] != "host"):
            if err and value is not None:
                r.save(st, value)
            raise StepFailed(st.get("message", "ssh step failed") + f": {err}")
        time.sleep(float(st.get("interval", 3)))
    r.save(st, value)
    if st.get("report"):
        r.log(f"  report: {_jq_text(st['report'], value)}")
    if st.get("export"):
        # A host step's output (e.g. a public key) for later steps' strings: @NAME@.
        r.subst[f"@{st['export']}@"] = p.stdout.strip()


def _host(r: Run, command: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """A command on the host (bash), e.g. fleetctl against the scenario's nats-server or
    the guests' sshd: $FLEETCTL_NATS is set when the scenario has one, and fleetctl is on
    $PATH."""
    env = dict(os.environ)
    if "nats" in r.services:
        env["FLEETCTL_NATS"] = r.services["nats"].host_url
    try:  # fleetctl (provision, or NATS commands) on $PATH when it is built
        env["PATH"] = f"{fleetctl_bin().parent}:{env.get('PATH', '')}"
    except HarnessError:
        if "nats" in r.services:
            raise
    try:
        return subprocess.run(["bash", "-c", command], capture_output=True, text=True,
                              timeout=timeout, env=env, cwd=r.rundir, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as e:
        return subprocess.CompletedProcess(e.cmd, 124, "", f"(timed out after {timeout:.0f} s)")


def step_ssh_detach(r: Run, st: dict) -> None:
    """Run a command whose connection may die with the guest (may-disconnect)."""
    p = r.m.ssh(st["run"], timeout=float(st.get("timeout", 30)))
    r.log(f"  detached command ended with {p.returncode}")


def step_ssh_stream(r: Run, st: dict) -> None:
    name = st["save"]
    r.streams[name] = Stream(r.m, name, st["run"], st.get("pattern", r"(.*)"),
                             r.rundir / f"stream-{name}.log")


def step_wait_stream(r: Run, st: dict) -> None:
    s = r.streams[st["stream"]]
    t = r.timeout(st, 120)
    deadline = time.monotonic() + t
    want = int(st.get("count", 1))
    while time.monotonic() < deadline:
        if len(s.matches()) >= want:
            return
        if s.proc.poll() is not None:
            err = s.proc.stderr.read().decode("utf-8", "replace") if s.proc.stderr else ""
            raise StepFailed(f"stream {s.name} ended ({s.proc.returncode}) after "
                             f"{len(s.matches())} of {want} lines: {err.strip()[-500:]}")
        time.sleep(0.5)
    raise StepFailed(f"stream {s.name}: {len(s.matches())} of {want} matching lines in {t:.0f} s")


def step_power_cut(r: Run, st: dict) -> None:
    """Pull the plug: destroy the domain / SIGKILL QEMU. Streams are frozen as facts.

    With `on_marker = "<regex>"`: follow the serial console (current boot and any later
    one) and cut the moment the regex appears (5 ms polling, QEMU SIGKILLed at once;
    `timeout`, default 300 s). The match and the delays are saved (`save`) and logged."""
    if st.get("on_marker"):
        t = r.timeout(st, 300)
        try:
            cut = r.m.cut_on_marker(re.compile(st["on_marker"]), t)
        except HarnessError as e:
            raise StepFailed(st.get("message", "power cut on a console marker") + f": {e}") from e
        r.log(f"  power cut on /{st['on_marker']}/ in boot {cut['boot']}: seen "
              f"{cut['seen_ms']} ms after the console's last write, QEMU dead "
              f"{cut['kill_ms']} ms later ({cut['matched'][:120]!r})")
        r.save(st, cut)
    r.m.power_cut()
    for name, s in r.streams.items():
        s.proc.wait(30)
        r.facts[name] = s.fact()
        r.log(f"  stream {name}: {r.facts[name]}")


def step_poweroff(r: Run, st: dict) -> None:
    r.m.ssh("systemctl poweroff", timeout=30)
    t = r.timeout(st, 180)
    if not r.m.wait_off(t):
        raise StepFailed(f"the guest did not power off within {t:.0f} s")
    if r.m.boots[-1].end != "poweroff":
        raise StepFailed(f"expected a clean power-down, the boot ended with {r.m.boots[-1].end}")


def step_wait_reset(r: Run, st: dict) -> None:
    """Wait until the guest resets by itself (watchdog, reboot) after this step began."""
    since = time.monotonic() - float(st.get("since_secs", 0))
    t = r.timeout(st, 120)
    ev = r.m.wait_event(since, ("reset", "reboot"), t)
    if ev is None:
        raise StepFailed(st.get("message", "the guest was not reset") + f" (waited {t:.0f} s)")
    r.log(f"  guest {ev} seen; it boots again through the fake firmware")


def step_fat(r: Run, st: dict) -> None:
    """Read files from the FAT partition with mtools; the machine must be off. `read`:
    files whose text is saved; `sha256`: files whose sha256 is saved (null: missing)."""
    import hashlib
    from firmware import FatImage
    if r.m.powered:
        raise StepFailed("fat: the machine is still on (power it off first)", serial=False)
    with r.m.fat() as fat:
        files = fat.files()
        value = {"files": files,
                 "read": {f: fat.read_text(f) for f in st.get("read", [])}}
        if st.get("sha256"):
            value["sha256"] = {f: (hashlib.sha256(b).hexdigest()
                                   if (b := fat.read_bytes(f)) is not None else None)
                               for f in st["sha256"]}
    r.save(st, value)


def step_assert(r: Run, st: dict) -> None:
    r.update_machine_facts()
    facts = r.rundir / "facts.json"
    facts.write_text(json.dumps(r.facts, indent=2) + "\n")
    p = subprocess.run([str(ASSERT), str(facts), st["that"], st.get("message", st["that"])],
                       capture_output=True, text=True)
    if p.returncode != 0:
        hint = f"\n  hint: {st['hint']}" if st.get("hint") else ""
        raise StepFailed((p.stdout + p.stderr).strip() + hint, serial=False)
    r.log(f"  ok: {st.get('message', st['that'])}")


def step_sleep(r: Run, st: dict) -> None:
    time.sleep(float(st["seconds"]))


def _jq_text(expr: str, value) -> str:
    """`jq -r expr` over `value`, for a step's `report` line (a failed expression says so)."""
    p = subprocess.run(["jq", "-r", expr], input=json.dumps(value), capture_output=True, text=True)
    return p.stdout.strip() if p.returncode == 0 else f"(jq {expr!r} failed: {p.stderr.strip()})"


def _jq_true(expr: str, value) -> bool:
    p = subprocess.run(["jq", "-e", expr], input=json.dumps(value), capture_output=True, text=True)
    return p.returncode == 0


STEPS = {
    "boot": step_boot,
    "wait-ssh": wait_ssh,
    "wait-marker": step_wait_marker,
    "ssh": step_ssh,
    "host": step_ssh,
    "ssh-detach": step_ssh_detach,
    "ssh-stream": step_ssh_stream,
    "wait-stream": step_wait_stream,
    "power-cut": step_power_cut,
    "poweroff": step_poweroff,
    "wait-reset": step_wait_reset,
    "fat": step_fat,
    "assert": step_assert,
    "sleep": step_sleep,
}
