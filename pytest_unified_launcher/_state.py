"""State files: every process a launcher starts, so a killed session's leftovers can be reaped.

``<state_dir>/run/<launcher_id>.json`` names the owner (pid and start token) and each child
(pid, start token, uid). A file whose owner is gone belongs to a killed session: its children
that are still provably the processes it started are stopped; nothing else is touched.

What is trusted (SPEC 7): only a state dir that is ours and that no other user can write, and
only regular files in it that are ours (never through a link). The launcher tags a state dir it
made (``CACHEDIR.TAG``) and refuses one that holds other files: it deletes files in it.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import re
import signal
import stat
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ._process import OWNER_VAR, kill_pids, marked_pids, process_token
from .errors import ConfigError

log = logging.getLogger(__name__)

#: The tag of a folder the launcher made for its state (the CACHEDIR.TAG convention, as
#: pytest's .pytest_cache): backup tools skip it, and the launcher knows it may delete in it.
TAG_NAME = "CACHEDIR.TAG"
TAG = ("Signature: 8a477f597d28d172789f06886806bc55\n"
       "# This folder is the state of pytest-unified-launcher (its logs and run records).\n"
       "# The launcher deletes files in it: keep nothing of yours here.\n")
#: What a state dir holds (this version or an older one): an untagged folder holding only
#: these is a launcher's and gets tagged; one holding anything else is refused.
OWN_ENTRIES = frozenset({"run", "logs", "up.json", "up.log", ".gitignore", TAG_NAME})
#: A record larger than this is not one of ours (10,000 services fit).
MAX_RECORD_BYTES = 8 << 20
_NOFOLLOW = os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


class StateDirError(ConfigError):
    """The state dir cannot be trusted or used: names it and the fix."""


# --------------------------------------------------------------------------- the state dir


def make_private_dir(path: Path) -> None:
    """Create ``path`` and each missing parent with mode 0700 (at mkdir: no chmod window)."""
    missing = []
    while not os.path.lexists(path) and path != path.parent:
        missing.append(path)
        path = path.parent
    for folder in reversed(missing):
        try:
            os.mkdir(folder, 0o700)
        except FileExistsError:
            pass


def _untrusted(st: os.stat_result) -> tuple[str, str] | None:
    """(what is wrong, the fix) when a folder with this ``lstat`` is not safely ours."""
    if not stat.S_ISDIR(st.st_mode):
        return "is not a folder (a link?)", "remove it, or set [launcher] state_dir to a folder of your own"
    if st.st_uid != os.geteuid():
        return (f"is owned by uid {st.st_uid}, not by you (uid {os.geteuid()})",
                f"chown {os.geteuid()} it, or set [launcher] state_dir to a folder of your own")
    if st.st_mode & 0o022:
        return "can be written by other users", "chmod go-w it"
    return None


def open_trusted(path: Path, what: str, *, trusts: str = "no run record or up.json", fix: str | None = None) -> int:
    """An fd on the folder ``path`` after checking it is ours and nobody else's to write;
    ``fix`` replaces the default advice (chown, chmod, another state_dir)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise StateDirError(f"{what} {path} cannot be opened ({exc.strerror}); the launcher never "
                            "follows a link there", fix=fix or f"make {path} a folder of your own") from None
    problem = _untrusted(os.fstat(fd))
    if problem is not None:
        os.close(fd)
        wrong, advice = problem
        raise StateDirError(f"{what} {path} {wrong}: the launcher trusts {trusts} there",
                            fix=fix or advice.replace(" it", f" {path}", 1))
    return fd


def check_state_dir(state_dir: Path) -> None:
    """Raise :class:`StateDirError` unless ``state_dir`` (existing) is ours and private enough."""
    os.close(open_trusted(state_dir, "the state dir"))


def _tagged(fd: int) -> bool:
    try:
        tag = os.open(TAG_NAME, os.O_RDONLY | _NOFOLLOW, dir_fd=fd)
    except OSError:
        return False
    with os.fdopen(tag, "rb") as fh:
        return stat.S_ISREG(os.fstat(tag).st_mode) and b"pytest-unified-launcher" in fh.read(4096)


def claim_log_dir(logs: Path, launcher_id: str) -> tuple[Path, int | None]:
    """The log folder for one environment: ``logs`` itself while no other live launcher holds it
    (a lock held for the launcher's life), else ``logs/<launcher_id>`` (two pytest sessions of one
    project ran at once and replaced each other's logs). Returns the folder and the lock's fd."""
    make_private_dir(logs)
    fd = os.open(logs / ".lock", os.O_RDWR | os.O_CREAT | _NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        own = logs / launcher_id
        make_private_dir(own)
        return own, None
    return logs, fd


def ensure_state_dir(state_dir: Path, *, source: str | None = None) -> None:
    """Make ``state_dir`` (0700, tagged) or check the existing one: ours, not writable by
    others, and holding nothing but the launcher's own entries. Raises :class:`StateDirError`
    (or ``OSError`` when it cannot be created: the runner that needs it reports that, with the fix)."""
    make_private_dir(state_dir)
    fd = open_trusted(state_dir, "the state dir")
    try:
        if os.fstat(fd).st_mode & 0o077:
            os.fchmod(fd, 0o700)  # an older version's 0755: nobody else could write it, so tighten
        if not _tagged(fd):
            foreign = sorted(set(os.listdir(fd)) - OWN_ENTRIES)
            if foreign:
                raise StateDirError(
                    f"state_dir {state_dir} already holds files that are not the launcher's (e.g. "
                    f"{foreign[0]!r}); the launcher deletes files in its state dir", source=source,
                    fix='set [launcher] state_dir to a folder of its own (the default is ".launcher")')
            tag = os.open(TAG_NAME, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o600, dir_fd=fd)
            with os.fdopen(tag, "w") as fh:
                fh.write(TAG)
        for sub in ("run", "logs"):  # an older version's, 0755: tighten (by fd, never through a link)
            try:
                sub_fd = os.open(sub, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            except OSError:
                continue
            st = os.fstat(sub_fd)
            if st.st_uid == os.geteuid() and st.st_mode & 0o077:
                os.fchmod(sub_fd, 0o700)
            os.close(sub_fd)
    except OSError as exc:
        raise StateDirError(f"the state dir {state_dir} cannot be used ({exc.strerror})", source=source,
                            fix="set [launcher] state_dir to a writable folder of your own") from None
    finally:
        os.close(fd)


def write_private(path: Path, data: Any) -> None:
    """Write JSON atomically, readable by the owner only (0600 in a 0700 folder)."""
    make_private_dir(path.parent)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh, indent=1)
    os.replace(tmp, path)


def read_private(path: Path, dir_fd: int | None = None) -> Any:
    """The JSON of a file of ours: a regular file (not a link) we own, of a sane size.

    Raises ``OSError`` (as open does; ``ELOOP`` for a link) or ``ValueError`` naming what is wrong.
    """
    fd = os.open(path.name if dir_fd is not None else path, os.O_RDONLY | _NOFOLLOW, dir_fd=dir_fd)
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ValueError("it is not a regular file")
        if st.st_uid != os.geteuid():
            raise ValueError(f"it is owned by uid {st.st_uid}, not by you")
        if st.st_size > MAX_RECORD_BYTES:
            raise ValueError(f"it is too large ({st.st_size} bytes) to be a launcher record")
        text = fh.read(MAX_RECORD_BYTES + 1)
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("it is nested too deeply to be a launcher record") from None


# --------------------------------------------------------------------------- which processes are ours


def uid_of(pid: int) -> int | None:
    try:
        return os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return None


def _read_proc(pid: int, name: str, limit: int = 1 << 20) -> bytes | None:
    try:
        with open(f"/proc/{pid}/{name}", "rb") as fh:
            return fh.read(limit)
    except OSError:
        return None


def marker_of(pid: int) -> str | None:
    """The launcher id in the process's ``UNIFIED_LAUNCHER_OWNER``, where its environment shows it."""
    prefix = f"{OWNER_VAR}=".encode()
    for entry in (_read_proc(pid, "environ") or b"").split(b"\0"):
        if entry.startswith(prefix):
            return entry[len(prefix):].decode(errors="replace")
    return None


_VARIABLE = re.compile(rb"[A-Za-z_][A-Za-z0-9_]*=", re.S)


def provably_ours(pid: int, token: str | None, *, owner: str, service: str, uid: int | None = None) -> bool:
    """Whether ``pid`` is still the process the launcher ``owner`` started for ``service``.

    Its start time (``token``) and uid must match the record; it must lead its own session (each
    service is started as one); and its marker must agree: ``UNIFIED_LAUNCHER_OWNER=<owner>`` in
    its environment, or, for an app the pre-imported spawner forked (it shows the spawner's
    environment), its name ``ul-<service>``. A process whose environment is unreadable or
    overwritten by its title (redis, postgres do that) is decided by the rest. pid 1, our own
    pid and anything that is not a session leader never qualify.
    """
    if not token or token == "?" or pid <= 1 or pid == os.getpid() or process_token(pid) != token:
        return False
    if uid_of(pid) != (os.geteuid() if uid is None else uid):
        return False
    fields = (_read_proc(pid, "stat") or b")").rsplit(b")", 1)[1].split()
    if len(fields) < 4 or fields[3] != str(pid).encode():
        return False  # not a session leader: not a process the launcher started
    environ = _read_proc(pid, "environ")
    if environ is None:
        return True
    entries = [e for e in environ.split(b"\0") if e]
    prefix = f"{OWNER_VAR}=".encode()
    if prefix + owner.encode() in entries:
        return True
    if any(e.startswith(prefix) for e in entries):
        return False  # another launcher's
    if entries and all(_VARIABLE.match(e) for e in entries):  # a real environment without our marker
        return (_read_proc(pid, "comm") or b"").strip() == f"ul-{service}"[:15].encode()
    return True


# --------------------------------------------------------------------------- the run records


class StateFile:
    """The record of one launcher's processes (and each one's stop signal, for a gentle reap)."""

    def __init__(self, state_dir: Path, launcher_id: str, *, owner_pid: int | None = None,
                 tmp_root: Path | None = None, stops: Mapping[str, tuple[int, float]] | None = None) -> None:
        self.path = state_dir / "run" / f"{launcher_id}.json"
        owner = owner_pid or os.getpid()
        self.data: dict[str, Any] = {
            "owner": {"pid": owner, "token": process_token(owner)},
            "tmp_root": str(tmp_root) if tmp_root else None,
            "processes": {},
        }
        self._stops = dict(stops or {})  # service -> (stop signal, stop timeout)
        self._enabled = True

    def add(self, service: str, pid: int) -> None:
        sig, timeout = self._stops.get(service, (signal.SIGTERM, REAP_GRACE_SECONDS))
        self.data["processes"][str(pid)] = {
            "service": service, "token": process_token(pid), "signal": int(sig), "timeout": timeout,
            "uid": uid_of(pid),
        }
        self._write()

    def remove(self, service: str, pid: int) -> None:
        self.data["processes"].pop(str(pid), None)
        self._write()

    def add_engine(self, engine: str) -> None:
        """This session runs containers with ``engine``: a reaper removes them by their label."""
        if self.data.get("engine") != engine:
            self.data["engine"] = engine
            self._write()

    def write(self) -> None:
        """On record before any process is (what the scratch roots alone need reaped)."""
        self._write()

    def _write(self) -> None:
        if not self._enabled:
            return
        try:
            write_private(self.path, self.data)
        except OSError as exc:
            log.warning("cannot write the state file %s (%s): leftovers of a crash cannot be reaped",
                        self.path, exc.strerror)
            self._enabled = False

    def close(self) -> None:
        try:
            self.path.unlink()
        except OSError:
            pass


def _alive_as(pid: int, token: str) -> bool:
    return token != "?" and process_token(pid) == token


#: How long reaped services get to shut down on their own stop signal before SIGKILL. PostgreSQL
#: killed outright leaves its shared memory behind (/dev/shm/PostgreSQL.*, SysV segments).
REAP_GRACE_SECONDS = 3.0


def _is_int(value: Any) -> bool:
    return type(value) is int


def run_record_problem(data: Any) -> str | None:
    """What makes ``data`` not a run record (None when it is one), so it is never half-used."""
    if not isinstance(data, dict):
        return "not a JSON object"
    owner, processes = data.get("owner"), data.get("processes")
    if not (isinstance(owner, dict) and _is_int(owner.get("pid")) and owner["pid"] > 0
            and isinstance(owner.get("token"), str)):
        return "'owner' is not {pid, token}"
    if not isinstance(processes, dict):
        return "'processes' is not an object"
    if not isinstance(data.get("tmp_root"), (str, type(None))):
        return "'tmp_root' is not a path"
    if data.get("engine") not in (None, "podman", "docker"):
        return "'engine' is not podman or docker"
    valid_signals = set(signal.valid_signals())
    for pid, info in processes.items():
        if not (pid.isdigit() and isinstance(info, dict) and isinstance(info.get("token"), str)
                and isinstance(info.get("service"), str)
                and _is_int(info.get("signal", 9)) and info.get("signal", 9) in valid_signals
                and isinstance(info.get("timeout", 0.0), (int, float)) and not isinstance(info.get("timeout"), bool)
                and (info.get("uid") is None or _is_int(info.get("uid")))):
            return f"process {pid!r} is not {{service, token, signal, timeout, uid}}"
    return None


def _run_records(state_dir: Path) -> list[tuple[Path, dict[str, Any]]]:
    """The valid run records of a trusted, tagged state dir; others are skipped with a warning
    (and removed when they are ours)."""
    if not os.path.lexists(state_dir / "run"):
        return []
    try:
        state_fd = open_trusted(state_dir, "the state dir")
    except StateDirError as exc:
        log.warning("not reaping leftovers: %s", str(exc).replace("\n", ";"))
        return []
    try:
        if not _tagged(state_fd):
            return []  # not a folder the launcher made: nothing in it is ours to delete
        run_fd = open_trusted(state_dir / "run", "the run folder")
    except StateDirError as exc:
        log.warning("not reaping leftovers: %s", str(exc).replace("\n", ";"))
        return []
    finally:
        os.close(state_fd)
    records = []
    try:
        for name in sorted(os.listdir(run_fd)):
            if not name.endswith(".json"):
                continue
            path = state_dir / "run" / name
            try:
                data = read_private(path, dir_fd=run_fd)
                problem = run_record_problem(data)
            except OSError as exc:
                problem = "it is a link" if exc.errno == errno.ELOOP else exc.strerror
            except ValueError as exc:
                problem = str(exc)
            if problem is None:
                records.append((path, data))
                continue
            try:
                mine = os.stat(name, dir_fd=run_fd, follow_symlinks=False).st_uid == os.geteuid()
            except OSError:
                mine = False
            log.warning("skipping the run record %s: %s%s", path, problem, "; removed it" if mine else "")
            if mine:
                try:
                    os.unlink(name, dir_fd=run_fd)
                except OSError:
                    pass
    finally:
        os.close(run_fd)
    return records


def reap(state_dir: Path, *, owner_pid: int | None = None) -> list[tuple[str, int]]:
    """Stop what launchers that no longer run left behind; returns ``(service, pid)`` reaped.

    With ``owner_pid``, also what the launchers owned by that (living) process left: an
    xdist controller cleaning up after its workers. Each leftover gets its service's stop
    signal, then SIGKILL (its whole group) after its ``stop_timeout`` (at most
    :data:`REAP_GRACE_SECONDS`). Only processes :func:`provably_ours` are signalled.
    """
    reaped: list[tuple[str, int]] = []
    tokens: dict[int, str] = {}
    grace = 0.0
    files: list[tuple[Path, dict[str, Any]]] = []
    for path, data in _run_records(state_dir):
        owner = data["owner"]
        ours = owner_pid is not None and owner["pid"] == owner_pid
        if not ours and _alive_as(owner["pid"], owner["token"]):
            continue  # its launcher still runs: not ours to touch
        files.append((path, data))
        for pid_text, info in data["processes"].items():
            pid, token = int(pid_text), info["token"]
            if not _alive_as(pid, token):
                continue
            if not provably_ours(pid, token, owner=path.stem, service=info["service"], uid=info.get("uid")):
                log.warning("not signalling pid %d (service %s in %s): its start time matches, but its "
                            "uid, session or marker is not that of a process the launcher started",
                            pid, info["service"], path)
                continue
            _signal(pid, info.get("signal", signal.SIGKILL))
            tokens[pid] = token
            for member in _group_members(pid):  # the group's signal reached them: waited for, not signalled again
                tokens.setdefault(member, process_token(member))
            grace = max(grace, min(float(info.get("timeout", 0.0)), REAP_GRACE_SECONDS))
            reaped.append((info["service"], pid))
            log.warning("reaping service %s (pid %d) left by a killed session", info["service"], pid)
        for pid in marked_pids(path.stem):  # what left its service's group (a daemon), by its marker
            if pid not in tokens:
                kill_pids([pid], signal.SIGTERM)
                tokens[pid] = process_token(pid)
                grace = max(grace, 1.0)
                reaped.append(("(background)", pid))
                log.warning("reaping pid %d, which a service of a killed session left in the background", pid)
    deadline = time.monotonic() + grace
    while any(_alive_as(pid, token) for pid, token in tokens.items()) and time.monotonic() < deadline:
        time.sleep(0.02)
    for pid, token in tokens.items():
        if _alive_as(pid, token):
            _signal(pid, signal.SIGKILL)
    for path, data in files:  # once the processes are gone, their containers and temp dirs can go
        if data.get("engine"):
            from ._containers import remove_session_containers

            for cid in remove_session_containers(data["engine"], path.stem):
                reaped.append(("(container)", 0))
                log.warning("removed container %s, which a killed session left", cid[:12])
        if data.get("tmp_root"):
            from .config import remove_scratch

            remove_scratch(Path(data["tmp_root"]))
            _remove_xdist_folder(Path(data["tmp_root"]))
        path.unlink(missing_ok=True)
    return reaped


def _remove_xdist_folder(tmp_root: Path) -> None:
    """The shared record folder an xdist controller keeps beside its scratch root
    (``<tmp_root>-xdist``): a killed controller left it. Only a real folder of ours goes."""
    import shutil

    folder = tmp_root.with_name(tmp_root.name + "-xdist")
    try:
        st = os.lstat(folder)
    except OSError:
        return
    if tmp_root.name.startswith("ul-") and stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid():
        shutil.rmtree(folder, ignore_errors=True)


def _group_members(pgid: int) -> list[int]:
    """The live processes of group ``pgid`` (a leader we just signalled: they are ours).

    A reap waits for them all, not only for the leader: initdb's shell dies at once on SIGINT
    while its postgres still cleans up; a second signal (SIGTERM by marker) or the cgroup's
    SIGKILL then would leave PostgreSQL's shared memory behind.
    """
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != pgid:
            fields = (_read_proc(int(entry), "stat", 4096) or b")").rsplit(b")", 1)[1].split()
            if len(fields) > 2 and fields[2] == str(pgid).encode() and fields[0] not in (b"Z", b"X"):
                members.append(int(entry))
    return members


def _signal(pid: int, sig: int) -> None:
    """``sig`` to the process's group (grandchildren too) and to the process itself."""
    for send, target in ((os.killpg, pid), (os.kill, pid)):
        try:
            send(target, sig)
        except OSError:
            pass
