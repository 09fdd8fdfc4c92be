"""A pytest session killed with SIGKILL, and what it left: the fault suite's eyes for the sentinel.

A :class:`KilledRun` is a real `python -m pytest` subprocess, watched until it is killed (every
process of its tree, every port its processes claim); then :meth:`KilledRun.settle` polls, with
no later run of anything, until nothing of it is left: processes, bound ports, ``${tmp}`` and
``/dev/shm`` folders, PostgreSQL's segments (POSIX and SysV), port claims, run files.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import psutil

from conftest import OWNER_VAR, PY
from pytest_unified_launcher._ports import CLAIM_PREFIX, claimed, is_free

EXAMPLE = Path(__file__).resolve().parent.parent / "example_project"
SHM = Path("/dev/shm")
#: The kill moments are drawn from this seed, printed with every failure: UL_KILL_SEED=<seed> replays them.
SEED = int(os.environ.get("UL_KILL_SEED") or random.SystemRandom().randrange(1 << 32))
#: How long a killed run's leftovers may take to go (generous; never asserted as a duration).
SETTLE_SECONDS = 20.0
#: This test process and its ancestors: never a leftover of a run.
OUTER = {os.getpid(), *(p.pid for p in psutil.Process().parents())}


def claimed_ports(pids: Iterable[int]) -> set[int]:
    """The ports processes ``pids`` hold claims on: their abstract claim sockets (see ``_ports``),
    matched by inode between /proc/net/unix and each process's fds."""
    names = {}
    for line in Path("/proc/net/unix").read_text().splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 8 and fields[7].startswith("@" + CLAIM_PREFIX):
            names[f"socket:[{fields[6]}]"] = int(fields[7].rpartition("-")[2])
    ports = set()
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    port = names.get(os.readlink(f"/proc/{pid}/fd/{fd}"))
                    if port is not None:
                        ports.add(port)
    return ports


def pg_segments() -> set[str]:
    """PostgreSQL's POSIX shared memory in /dev/shm (its dynamic shared memory)."""
    return {n for n in os.listdir(SHM) if n.startswith("PostgreSQL.")}


def mapped_segments() -> set[str]:
    """The /dev/shm/PostgreSQL.* files some live process maps (a running PostgreSQL's, anyone's)."""
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                found.update(re.findall(r"/dev/shm/(PostgreSQL\.\d+)", Path(f"/proc/{entry}/maps").read_text()))
    return found


def sysv_segments() -> dict[int, tuple[int, int]]:
    """SysV shared memory segments (PostgreSQL makes one): shmid -> (creator pid, attached processes)."""
    rows = (line.split() for line in Path("/proc/sysvipc/shm").read_text().splitlines()[1:])
    return {int(row[1]): (int(row[4]), int(row[6])) for row in rows}


class KilledRun:
    """A real `python -m pytest` session, watched (every process of its tree, every port it
    claims) until it is killed with SIGKILL; then what it left, polled with no later run."""

    def __init__(self, project: Path, args: list[str], env: dict[str, str] | None = None) -> None:
        self.project = project
        self.tmpdir = project.parent / "tmpdir"  # its TMPDIR: the run's ${tmp} roots are made here
        self.tmpdir.mkdir(mode=0o755)
        self.out = project.parent / "out.txt"
        self.pg_before = pg_segments()
        self.names: set[str] = set()  # the run's scratch roots (ul-...), on disk and in /dev/shm
        self.sysv_before = set(sysv_segments())
        self.seen: dict[int, float] = {}  # pid -> start time, of every process of the run seen alive
        self.tree: list[tuple[int, list[str]]] = []  # the last sample: (pid, cmdline)
        self.ports: set[int] = set()
        self.killed_at = 0.0
        self.mid_session = False
        environ = {k: v for k, v in os.environ.items()
                   if not k.startswith(("PYTEST_", "LAUNCHER_", "UNIFIED_LAUNCHER_", "COV_"))}
        self.t0 = time.monotonic()
        with open(self.out, "wb") as out:
            self.proc = subprocess.Popen([PY, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args], cwd=project,
                                         env={**environ, "TMPDIR": str(self.tmpdir), **(env or {})},
                                         stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)

    def sample(self) -> None:
        """Note the run's processes and the ports its processes claim."""
        try:
            root = psutil.Process(self.proc.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.Error:
            return
        tree = []
        for proc in procs:
            with contextlib.suppress(psutil.Error):
                self.seen.setdefault(proc.pid, proc.create_time())
                tree.append((proc.pid, proc.cmdline()))
        self.tree = tree
        self._note_names(" ".join(arg for _, argv in tree for arg in argv))
        self.ports.update(claimed_ports(pid for pid, _ in tree))

    def _note_names(self, text: str) -> None:
        """Learn the run's scratch roots: from its processes' arguments, its TMPDIR, its run files."""
        self.names.update(re.findall(r"/dev/shm/(ul-[0-9a-f]+)", text))
        self.names.update(p.name.removesuffix("-xdist") for p in self.tmpdir.glob("ul-*"))
        for record in self.project.glob(".launcher/run/*.json"):
            with contextlib.suppress(OSError, ValueError, TypeError, AttributeError):
                self.names.add(Path(json.loads(record.read_text())["tmp_root"]).name)

    def watch(self, until: Callable[[], bool], timeout: float = 120.0) -> bool:
        """Sample until ``until()`` holds (True) or the run ends or times out (False)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end and self.proc.poll() is None:
            self.sample()
            if until():
                return True
            time.sleep(0.02)
        return False

    def running(self, word: str) -> bool:
        """Whether a process of the run (at the last sample) has ``word`` in an argument."""
        return any(word in arg for _, argv in self.tree for arg in argv)

    def kill(self, after: float = 0.0) -> None:
        """SIGKILL the pytest process ``after`` seconds from now (only it: what it started is the launcher's to reap)."""
        start = time.monotonic()
        self.watch(lambda: time.monotonic() - start >= after, timeout=after + 1)
        self.sample()
        self.mid_session = self.proc.poll() is None
        self.proc.kill()
        self.proc.wait()
        self.killed_at = time.monotonic() - self.t0

    def _processes(self) -> list[tuple[psutil.Process, str]]:
        """Live processes of the run: seen in its tree, carrying the marker of one of its launchers
        (ids start with their pid), or naming its folders in their command line or cwd (redis and
        postgres overwrite their environment)."""
        seen = {str(pid) for pid in self.seen}
        self._note_names("")
        paths = [str(self.project), str(self.tmpdir), *(str(SHM / n) for n in self.names)]
        found = []
        for proc in psutil.process_iter(["cmdline", "cwd", "environ", "create_time", "status"]):
            info = proc.info
            if proc.pid in OUTER or info["status"] == psutil.STATUS_ZOMBIE:
                continue
            owner = (info["environ"] or {}).get(OWNER_VAR, "").partition("-")[0]
            text = " ".join(info["cmdline"] or []) + " cwd=" + (info["cwd"] or "?")
            if self.seen.get(proc.pid) == info["create_time"] or owner in seen or any(p in text for p in paths):
                found.append((proc, text))
        return found

    def _folders(self) -> list[Path]:
        """The run's scratch roots, and PostgreSQL segments made since its start that no process maps."""
        self._note_names("")
        segments = pg_segments() - self.pg_before
        segments -= mapped_segments() if segments else set()
        return [*(SHM / n for n in sorted(self.names) if (SHM / n).exists()), *sorted(self.tmpdir.glob("ul-*")),
                *(SHM / n for n in sorted(segments))]

    def _segments(self) -> list[int]:
        """SysV segments made since the start by the run (or left unattached by a creator now gone)."""
        return [shmid for shmid, (cpid, attached) in sysv_segments().items() if shmid not in self.sysv_before
                and (cpid in self.seen or (not attached and not psutil.pid_exists(cpid)))]


    def leftovers(self) -> list[str]:
        """Everything of the run still there: processes, bound ports, folders, SysV segments, claims, run files."""
        left = [f"process {proc.pid} ({text[:160]})" for proc, text in self._processes()]
        left += [f"port {port}" for port in sorted(self.ports) if not is_free("127.0.0.1", port)]
        left += [f"folder {path}" for path in self._folders()]
        left += [f"SysV segment {shmid}" for shmid in self._segments()]
        left += [f"claim on port {port}" for port in sorted(self.ports) if claimed(port)]
        left += [f"run file {path}" for path in sorted(self.project.glob(".launcher/run/*.json"))]
        return left

    def settle(self) -> list[str]:
        """Poll until nothing of the run is left (a generous deadline); what was left then, cleaned up."""
        end = time.monotonic() + SETTLE_SECONDS
        left = self.leftovers()
        while left and time.monotonic() < end:
            time.sleep(0.1)
            left = self.leftovers()
        if left:  # a failure must not leave them to the rest of the suite
            for proc, _ in self._processes():
                with contextlib.suppress(psutil.Error):
                    proc.kill()
            for path in self._folders():
                shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
            for shmid in self._segments():
                subprocess.run(["ipcrm", "-m", str(shmid)], check=False, capture_output=True)
        return left


def copy_example(work: Path) -> Path:
    project = work / "project"
    shutil.copytree(EXAMPLE, project, ignore=shutil.ignore_patterns(".launcher", ".benchmarks", "__pycache__"))
    return project
