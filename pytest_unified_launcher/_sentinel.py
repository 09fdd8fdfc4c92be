"""The per-session sentinel: what a killed launcher leaves is reaped at once, not on the next run.

A launcher killed outright (``kill -9`` of pytest, of ``unified-launcher up``, of an xdist
controller) runs no teardown: its services, their ``${tmp}`` folders and its port claims stay
until some later run reaps its run file. Like testcontainers' Ryuk, a tiny helper process in a
session of its own watches it instead: it holds the read end of a pipe whose only write end the
launcher holds, so the launcher's death (any death) is an end of file. It then runs the same
reaping as the next run would (:func:`pytest_unified_launcher._state.reap`).

It is started lazily, with the first subprocess a launcher records (one interpreter start, off
the launcher's critical path: the launcher does not wait for it), and told to go by closing the
pipe when the launcher releases its services normally: its run file is gone then, so it reaps
nothing and exits. A run file whose owner is another living process (an xdist worker's names its
controller) is reaped when that owner dies.

Helper side: ``python -S -c _BOOT FD PACKAGE_PARENT OWNER_PID STATE_DIR LAUNCHER_ID PARENT_PID
[LOG]`` (it imports nothing until the end of file or the owner's death).
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path

#: What a launcher's children carry (see ``_process``); the sentinel is none of them.
_MARKERS = ("UNIFIED_LAUNCHER_OWNER", "UNIFIED_LAUNCHER_SERVICE")


class Sentinel:
    """The launcher's handle: :meth:`arm` once something can outlive it, :meth:`disarm` at release."""

    def __init__(self, state_dir: Path, launcher_id: str, *, log_path: Path | None = None,
                 owner_pid: int | None = None) -> None:
        self.state_dir = state_dir
        #: The run file's owner when it is not this process (an xdist worker's names its
        #: controller): its death is watched too.
        self.owner_pid = owner_pid if owner_pid != os.getpid() else None
        self.launcher_id = launcher_id
        self.log_path = log_path
        self.pid: int | None = None
        self._fd: int | None = None
        self._armed = False
        self._generation = 0
        self._lock = threading.Lock()

    def arming(self, record: Callable[[str, int], None]) -> Callable[[str, int], None]:
        """``record`` (the run file's ``add``), then arm: a process is on record before it is watched."""

        def on_spawn(name: str, pid: int) -> None:
            record(name, pid)
            self.arm()

        return on_spawn

    def arm(self) -> None:
        """Start the sentinel, unless it runs. Best effort: without it, the next run still reaps.

        Started from a thread of its own (the fork and exec take a few ms the launcher's loop
        should not wait for), which then collects its exit: no zombie, nobody waits for it.
        """
        with self._lock:
            if self._armed:
                return
            self._armed = True
            self._generation += 1
            generation = self._generation
        import threading

        threading.Thread(target=self._run, args=(generation,), name="ul-sentinel", daemon=True).start()

    def _run(self, generation: int) -> None:
        import subprocess

        read_fd, write_fd = os.pipe()  # both close-on-exec: no service inherits the write end
        env = {k: v for k, v in os.environ.items() if k not in _MARKERS}
        package_parent = str(Path(__file__).resolve().parent.parent)
        argv = [sys.executable, "-S", "-c", _BOOT, str(read_fd), package_parent, str(self.owner_pid or 0),
                os.path.abspath(self.state_dir), self.launcher_id, str(os.getpid())]
        argv += [str(self.log_path)] if self.log_path else []
        try:
            proc = subprocess.Popen(
                argv, pass_fds=(read_fd,), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL, start_new_session=True, env=env, cwd="/",
            )
        except OSError:
            os.close(write_fd)
            with self._lock:
                if generation == self._generation:
                    self._armed = False
            return
        finally:
            os.close(read_fd)
        with self._lock:
            if generation == self._generation and self._armed:
                self._fd, self.pid, write_fd = write_fd, proc.pid, -1
        if write_fd >= 0:
            os.close(write_fd)  # disarmed meanwhile: let it go at once
        proc.wait()

    def disarm(self) -> None:
        """Let it go, saying so ("d"): an end of file without it means the launcher died (its
        parent pid cannot tell: the end of file comes before the kernel reparents us)."""
        with self._lock:
            self._armed = False
            fd, self._fd, self.pid = self._fd, None, None
        if fd is not None:
            try:
                os.write(fd, b"d")
            except OSError:
                pass
            os.close(fd)


# --------------------------------------------------------------------------- helper side

#: The sentinel's idle life: an interpreter without ``site`` (a third of the start-up cost) that
#: imports nothing and blocks in one read. Only at the end of file does it load site-packages and
#: this module, to reap.
_BOOT = """\
import os, sys
try:
    with open("/proc/self/comm", "w") as fh:
        fh.write("ul-sentinel")
except OSError:
    pass
import select
fd, owner = int(sys.argv[1]), int(sys.argv[3])
poller = select.poll()  # not select(): the launcher's fds may be numbered past 1023
poller.register(fd, select.POLLIN)
if owner:
    try:
        poller.register(os.pidfd_open(owner), select.POLLIN)
    except OSError:
        pass
died = False  # the launcher's end of file without its "d": it died (else its owner died)
while True:
    try:
        if fd not in [ready for ready, _ in poller.poll()]:
            break  # the run file's owner (an xdist controller) died
        data = os.read(fd, 64)
        if not data:
            died = True
            break
        if b"d" in data:
            sys.exit(0)  # released normally (or handed over): nothing to reap, so nothing to import
    except InterruptedError:
        continue
    except Exception:
        break  # whatever went wrong, reap what a record names: main() waits for its owner's end
if not died and not os.path.exists(os.path.join(sys.argv[4], "run", sys.argv[5] + ".json")):
    sys.exit(0)
import site
site.main()
sys.path.insert(0, sys.argv[2])
from pytest_unified_launcher._sentinel import main
main(sys.argv[4:], launcher_died=died)
"""


def _read_run_file(path: Path) -> tuple[tuple[int, str], list[tuple[int, str]]] | None:
    """The run file's owner and processes (pid, start token), or None when there is no (sane) one."""
    import json

    try:
        data = json.loads(path.read_text())
        owner = data["owner"]
        processes = [(int(pid), str(info["token"])) for pid, info in data["processes"].items()]
        return (int(owner["pid"]), str(owner["token"])), processes
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def _wait_gone(pid: int, token: str) -> None:
    """Block until ``pid`` no longer names the process started at ``token``."""
    from ._process import process_token

    try:
        fd = os.pidfd_open(pid)
    except OSError:
        fd = -1
    try:
        while process_token(pid) == token:
            if fd >= 0:
                import select

                poller = select.poll()  # not select(): fd may be past 1023
                poller.register(fd, select.POLLIN)
                poller.poll(5000)
            else:
                import time

                time.sleep(0.1)
    finally:
        if fd >= 0:
            os.close(fd)


def sweep(state_dir: Path, launcher_id: str, log_path: Path | None, launcher_pid: int | None = None) -> None:
    """The launcher is gone, or the owner of its run file is (``launcher_pid``: the launcher
    died, so what it was spawning is reaped too): reap what it left, if anything."""
    run_file = _read_run_file(state_dir / "run" / f"{launcher_id}.json")
    if launcher_pid is not None:
        # It died: what it was spawning is on no record. Its marked processes are killed here only
        # without a run file: with one, they may be handed over (a shared xdist worker's).
        _kill_spawns_in_flight(launcher_pid, launcher_id if run_file is None else None)
    if run_file is None:
        return  # released normally (or handed over: --launcher-keep): nothing of ours to reap
    owner, processes = run_file
    import logging

    if log_path is not None:
        try:
            logging.basicConfig(filename=str(log_path), level=logging.INFO,
                                format="%(asctime)s sentinel: %(message)s")
        except OSError:
            pass
    _wait_gone(*owner)
    from ._state import reap

    try:
        reap(state_dir)
    except Exception:
        logging.getLogger(__name__).exception("reaping %s failed", state_dir)
    from ._up import remove_record_of

    remove_record_of(state_dir, launcher_id)  # a killed `up`: its up.json names only what is gone
    from ._process import Cgroup

    for pid, token in processes:  # what escaped group and marker (a daemon with a cleared environment)
        cgroup = Cgroup(Cgroup.path_for(pid, token))
        cgroup.kill()
        cgroup.remove()
    # Its port claims went with it: the kernel drops a dead process's claim sockets (see _ports).


def _kill_spawns_in_flight(launcher_pid: int, launcher_id: str | None) -> None:
    """What the dead launcher spawned but never recorded: the cgroups it made for such spawns
    (named ``unified-launcher-new-<its pid>-N`` until the process is on record), and processes
    that carry its marker (a setup step; reaping a run file finds those too, but there may be
    no run file yet)."""
    import signal

    from ._process import CGROUP_ROOT, Cgroup, marked_pids, stop_marked

    try:
        names = os.listdir(CGROUP_ROOT)
    except OSError:
        names = []
    for name in names:
        if name.startswith(f"unified-launcher-new-{launcher_pid}-"):
            cgroup = Cgroup(CGROUP_ROOT / name)
            cgroup.kill()
            cgroup.remove()
    marked = marked_pids(launcher_id) if launcher_id else []
    if marked:  # SIGTERM first: a setup step (initdb) cleans up on it
        import asyncio

        asyncio.run(stop_marked(marked, stop_signal=signal.SIGTERM, stop_timeout=2.0))


def main(argv: list[str], *, launcher_died: bool = True) -> None:
    """``STATE_DIR LAUNCHER_ID PARENT_PID [LOG]``, once the watch in :data:`_BOOT` ended."""
    sweep(Path(argv[0]), argv[1], Path(argv[3]) if len(argv) > 3 else None,
          launcher_pid=int(argv[2]) if launcher_died else None)
