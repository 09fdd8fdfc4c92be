"""Process hygiene shared by the runners: spawn in an own session, stop the whole tree, tails.

Every child gets its own session (so its process group can be signalled as one), the marker
variables below (so leftovers can be recognised), and its output in a log file: never a pipe
that could fill up and block it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import BinaryIO

log = logging.getLogger(__name__)

OWNER_VAR = "UNIFIED_LAUNCHER_OWNER"
SERVICE_VAR = "UNIFIED_LAUNCHER_SERVICE"


def process_token(pid: int) -> str:
    """The process's start time in clock ticks since boot: with the pid, it names one process.

    "?" when there is no such running process (gone, or a zombie nobody has reaped yet).
    """
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return "?"
    if fields[0] in ("Z", "X"):
        return "?"
    return fields[19]


def start_time(pid: int) -> str | None:
    """The start time of ``pid`` even as a zombie (our own unreaped child); None when no such pid."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def owns_group(pgid: int, token: str | None) -> bool:
    """Whether signalling group ``pgid`` reaches only what we started (``token``: its leader's
    :func:`start_time` at spawn, None when it was already gone).

    While the leader lives (or is an unreaped zombie) its start time must match: else the pid
    was reused by an unrelated process. When no process has that pid any more, whatever is left
    in the group is ours: the kernel never hands out a pid that still names a live group.
    """
    current = start_time(pgid)
    return current is None or (token is not None and current == token)


def tail(path: Path | None, lines: int = 20, max_bytes: int = 64 * 1024) -> str:
    """The last ``lines`` lines of a log file, read from its end (logs can be huge)."""
    if path is None or lines <= 0:
        return ""
    try:
        with open(path, "rb") as fh:
            return tail_of(fh, lines, max_bytes)
    except OSError:
        return ""


def tail_of(fh: BinaryIO, lines: int = 20, max_bytes: int = 64 * 1024) -> str:
    """The last ``lines`` lines of an open binary file, read from its last ``max_bytes``."""
    fh.seek(0, os.SEEK_END)
    fh.seek(max(0, fh.tell() - max_bytes))
    text = fh.read().decode("utf-8", errors="replace")
    return "\n".join(text.splitlines()[-lines:])


def cannot_run(what: str, program: str, exc: OSError, cwd: Path) -> str:
    """Why ``program`` could not be started, with the fix: "command 'x' not found; ..."."""
    if isinstance(exc, FileNotFoundError):
        return f"{what} {program!r} not found; is it installed and on PATH?"
    path = cwd / program
    hint = f" (it is not executable: chmod +x {program})" if path.is_file() and not os.access(path, os.X_OK) else ""
    return f"cannot run {what} {program!r}: {exc.strerror}{hint}"


def user_ids(user: str | None) -> tuple[int, int] | None:
    """(uid, gid) to run as, when the launcher is root and a ``user`` is configured."""
    if not user or os.geteuid() != 0:
        return None
    import pwd

    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise LookupError(f"user '{user}' does not exist on this machine") from None
    return entry.pw_uid, entry.pw_gid


async def spawn(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: Path,
    log_file: int,
    ids: tuple[int, int] | None = None,
    pass_fds: Sequence[int] = (),
    cgroup: Cgroup | None = None,
) -> asyncio.subprocess.Process:
    """Start ``argv`` in its own session with its output appended to ``log_file``.

    With ``cgroup``, the child joins it before it runs ``argv`` (through ``/bin/sh``'s ``echo`` and
    ``exec``: same pid, nothing forked before it is inside), so nothing it forks escapes it.
    """
    kwargs: dict[str, object] = {}
    if ids is not None:
        kwargs.update(user=ids[0], group=ids[1], extra_groups=[])
    if cgroup is not None:
        argv = cgroup.wrap(argv, env=env, cwd=cwd, ids=ids)
    return await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=log_file,
        stderr=asyncio.subprocess.STDOUT,
        env=dict(env),
        cwd=str(cwd),
        start_new_session=True,
        pass_fds=tuple(pass_fds),
        **kwargs,  # type: ignore[arg-type]
    )


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _descendants(pid: int) -> list[tuple[int, str]]:
    """Each descendant's pid and start token, so a later signal cannot hit a reused pid."""
    import psutil

    try:
        children = [c.pid for c in psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return []
    return [(child, process_token(child)) for child in children]


def kill_matching(pids: Sequence[tuple[int, str]], sig: int = signal.SIGKILL) -> None:
    """``sig`` to each ``(pid, token)`` whose pid still names the same process."""
    kill_pids([pid for pid, token in pids if token != "?" and process_token(pid) == token], sig)


def kill_pids(pids: Sequence[int], sig: int = signal.SIGKILL) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def signal_if_same(pid: int, token: str | None, sig: int) -> bool:
    """``sig`` to ``pid`` only while it is the process that had start time ``token``: through a
    pidfd opened first, so a pid reused between the check and the signal is never hit (plain
    kill() after the check where pidfds are missing). True when the signal was sent."""
    if token is None:
        return False
    try:
        fd = os.pidfd_open(pid) if hasattr(os, "pidfd_open") else None
    except OSError:
        return False
    try:
        if start_time(pid) != token:
            return False
        if fd is not None:
            signal.pidfd_send_signal(fd, sig)
        else:
            os.kill(pid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False
    finally:
        if fd is not None:
            os.close(fd)


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


async def stop_process(
    proc: asyncio.subprocess.Process, *, stop_signal: int, stop_timeout: float, token: str | None = None
) -> int | None:
    """``stop_signal`` to the group, SIGKILL to the group and its strays after ``stop_timeout``.

    Returns the exit code. Children that left the group (a new session) are found with psutil
    before the signal and killed with the rest. ``token`` is the process's :func:`start_time`
    taken at spawn: no signal goes to a pid or group that now names another process (a service
    that died mid-session, whose pid was reused).
    """
    pgid = proc.pid  # start_new_session: the child leads its own group
    strays = _descendants(proc.pid) if proc.returncode is None and owns_group(pgid, token) else []
    if proc.returncode is None:
        if owns_group(pgid, token):
            _signal_group(pgid, stop_signal)
        try:
            async with asyncio.timeout(stop_timeout):
                await proc.wait()
        except TimeoutError:
            log.warning("pid %d ignored signal %d for %.1f s: killing it", proc.pid, stop_signal, stop_timeout)
            if owns_group(pgid, token):
                _signal_group(pgid, signal.SIGKILL)
            kill_matching(strays)
            await proc.wait()
    # Whatever is left in the group (a grandchild the service forked) does not outlive it.
    if group_alive(pgid) and owns_group(pgid, token):
        _signal_group(pgid, signal.SIGKILL)
    kill_matching(strays)
    return proc.returncode


def marked_pids(owner: str, service: str | None = None) -> list[int]:
    """Running processes that carry ``owner``'s marker (for ``service``, or any) in their environment.

    These are what escaped the process group: a command that daemonizes forks into a session
    of its own, and its parent exits. Best effort: a process of another user may not show its
    environment (and a forked app shows its helper's).
    """
    wanted = [f"{OWNER_VAR}={owner}".encode()] + ([f"{SERVICE_VAR}={service}".encode()] if service else [])
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as fh:
                variables = fh.read().split(b"\0")
        except OSError:
            continue
        if all(w in variables for w in wanted) and process_token(int(entry)) != "?":
            found.append(int(entry))
    return found


async def stop_marked(pids: Sequence[int], *, stop_signal: int, stop_timeout: float) -> None:
    """``stop_signal`` to each of ``pids`` (processes that left their group), SIGKILL after
    ``stop_timeout``; a zombie counts as gone. Each pid is signalled only while it still names
    the process found (pids get reused)."""
    found = [(pid, process_token(pid)) for pid in pids]
    kill_matching(found, stop_signal)
    deadline = asyncio.get_running_loop().time() + stop_timeout
    # Polled: they are not our children, so no exit status or event tells us they are gone.
    while any(process_token(p) == t != "?" for p, t in found) and asyncio.get_running_loop().time() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.02)
    kill_matching(found)


async def run_to_end(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: Path,
    log_file: int,
    timeout: float,
    ids: tuple[int, int] | None = None,
    on_spawn: Callable[[int], None] | None = None,
    on_exit: Callable[[int], None] | None = None,
    stop_signal: int = signal.SIGTERM,
    stop_timeout: float = 2.0,
) -> int:
    """Run a one-shot command (a setup step, a probe) to its end; stop it on timeout/cancel.

    Stopped as a service is: ``stop_signal`` to its group first, SIGKILL after ``stop_timeout``
    (initdb's bootstrap backend killed outright leaves its shared memory behind).
    ``on_spawn``/``on_exit`` record it while it runs (a setup step like initdb can outlive a
    launcher killed meanwhile: the record lets it be reaped).
    """
    proc = await spawn(argv, env=env, cwd=cwd, log_file=log_file, ids=ids)
    token = start_time(proc.pid)
    if on_spawn is not None:
        on_spawn(proc.pid)
    try:
        async with asyncio.timeout(timeout):
            return await proc.wait()
    except BaseException:
        # shield: a second Ctrl-C must not cut the stop short and leave the step running
        await asyncio.shield(stop_process(proc, stop_signal=stop_signal, stop_timeout=stop_timeout, token=token))
        raise
    finally:
        if on_exit is not None:
            on_exit(proc.pid)


#: Where each subprocess service gets a cgroup of its own (cgroup v1's ``pids`` hierarchy).
CGROUP_ROOT = Path("/sys/fs/cgroup/pids")


class Cgroup:
    """A service's own cgroup, as systemd's ``KillMode=control-group``: every process it forks
    stays in it, a daemon that double-forks into a new session and clears its environment too,
    so the stop reaches them all. Only where one can be made (root, a mounted ``pids``
    hierarchy); elsewhere the process group and the marker variables are the best effort.

    Named after the service's pid and start token, so whoever stops it (an adopting launcher,
    the sentinel) finds it; a process joins at spawn (a fork in its first instants escapes).
    """

    _made = 0

    def __init__(self, path: Path) -> None:
        self.path = path

    @staticmethod
    def path_for(pid: int, token: str | None) -> Path:
        return CGROUP_ROOT / f"unified-launcher-{pid}-{token}"

    @classmethod
    def create(cls) -> Cgroup | None:
        """A new empty cgroup for the next spawn; None where none can be made (not root, no v1 pids)."""
        if os.geteuid() != 0:
            return None
        if cls._made == 0:
            _remove_stale_cgroups()
        cls._made += 1
        path = CGROUP_ROOT / f"unified-launcher-new-{os.getpid()}-{cls._made}"
        try:
            os.mkdir(path, 0o755)
        except OSError:
            return None
        return cls(path)

    def wrap(self, argv: Sequence[str], *, env: Mapping[str, str], cwd: Path,
             ids: tuple[int, int] | None) -> list[str]:
        """``argv`` run by ``/bin/sh``, which first moves itself into this cgroup, then execs it.

        The program is resolved here as ``exec`` would (PATH of ``env``), so a missing or
        non-executable one still raises FileNotFoundError/PermissionError at the spawn.
        """
        import shutil

        program = argv[0]
        if "/" in program:
            path = cwd / program
            if not path.exists():
                raise FileNotFoundError(2, os.strerror(2), program)
            if path.is_dir() or not os.access(path, os.X_OK):
                raise PermissionError(13, os.strerror(13), program)
        else:
            found = shutil.which(program, path=env.get("PATH", os.defpath))
            if found is None:
                raise FileNotFoundError(2, os.strerror(2), program)
            program = found
        procs = self.path / "cgroup.procs"
        if ids is not None:
            try:
                os.chown(procs, ids[0], -1)  # a process may move itself only with write access here
            except OSError:
                pass
        return ["/bin/sh", "-c", 'echo 0 2>/dev/null >"$0"; exec "$@"', str(procs), program, *argv[1:]]

    async def name_after(self, pid: int, token: str | None) -> None:
        """Rename it after its service's pid and start token, so any stopper (or the sentinel) finds it.

        Only once ``pid`` is in it: the wrapper shell joins through the cgroup's current path
        (:meth:`wrap`), so a rename before its ``echo`` ran would leave the service, and every
        daemon it forks, outside. The shell joins within a few milliseconds of its exec; a process
        that exits first (an exec error) ends the wait, and so does half a second (then: renamed anyway).
        """
        for _ in range(250):
            if pid in self.pids() or process_token(pid) == "?":
                break
            await asyncio.sleep(0.002)
        target = self.path_for(pid, token)
        try:
            os.rename(self.path, target)
        except OSError:
            return
        self.path = target

    @classmethod
    def adopt(cls, pid: int, token: str | None) -> Cgroup | None:
        """Move a running ``pid`` into a new cgroup of its own (what it forked before stays out)."""
        if token is None or os.geteuid() != 0:
            return None
        path = cls.path_for(pid, token)
        try:
            os.mkdir(path, 0o755)
            with open(path / "cgroup.procs", "w") as fh:
                fh.write(str(pid))
        except OSError:
            cls(path).remove()
            return None
        return cls(path)

    def pids(self) -> list[int]:
        try:
            with open(self.path / "cgroup.procs") as fh:
                return [int(line) for line in fh if line.strip()]
        except (OSError, ValueError):
            return []

    async def stop(self, stop_signal: int, stop_timeout: float) -> list[int]:
        """``stop_signal`` to what is left in it, SIGKILL after ``stop_timeout``; then remove it.
        Returns the pids that were left (an escaped daemon, say). Every pid in the cgroup is ours:
        membership is of living processes, so no reused pid can be in it."""
        left = self.pids()
        if left:
            kill_pids(left, stop_signal)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + stop_timeout
            while self.pids() and loop.time() < deadline:  # noqa: ASYNC110 - no event tells when they are gone
                await asyncio.sleep(0.02)
            self.kill()
        self.remove()
        return left

    def kill(self) -> None:
        """SIGKILL everything in it, with new forks refused meanwhile (bounded)."""
        try:
            with open(self.path / "pids.max", "w") as fh:
                fh.write("0")
        except OSError:
            pass
        for _ in range(100):
            pids = self.pids()
            if not pids:
                return
            kill_pids(pids)
            time.sleep(0.002)

    def remove(self) -> None:
        try:
            os.rmdir(self.path)
        except OSError:
            pass


def _remove_stale_cgroups() -> None:
    """Remove the empty cgroups of services that are gone (a launcher killed outright, reaped by a
    later run, leaves them). A non-empty one is left alone: rmdir refuses it."""
    try:
        names = os.listdir(CGROUP_ROOT)
    except OSError:
        return
    for name in names:
        parts = name.split("-")
        if name.startswith("unified-launcher-new-") and len(parts) == 5 and parts[3].isdigit():
            stale = not _alive(int(parts[3]))  # made for a spawn by a launcher that is gone
        elif name.startswith("unified-launcher-") and len(parts) == 4 and parts[2].isdigit():
            stale = process_token(int(parts[2])) != parts[3]  # its service is gone
        else:
            continue
        if stale:
            try:
                os.rmdir(CGROUP_ROOT / name)
            except OSError:
                pass


def _alive(pid: int) -> bool:
    return process_token(pid) != "?"
