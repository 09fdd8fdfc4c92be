"""State files: every process a launcher starts, so a killed session's leftovers can be reaped.

``<state_dir>/run/<launcher_id>.json`` names the owner (pid and start token) and each child
(pid and start token). A file whose owner is gone belongs to a killed session: its children
that still match their recorded start token are killed; nothing else is touched.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ._process import kill_pids, marked_pids, process_token

log = logging.getLogger(__name__)


def write_private(path: Path, data: Any) -> None:
    """Write JSON atomically, readable by the owner only (0600 in a 0700 folder)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh, indent=1)
    os.replace(tmp, path)


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
        }
        self._write()

    def remove(self, service: str, pid: int) -> None:
        self.data["processes"].pop(str(pid), None)
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


def reap(state_dir: Path, *, owner_pid: int | None = None) -> list[tuple[str, int]]:
    """Stop what launchers that no longer run left behind; returns ``(service, pid)`` reaped.

    With ``owner_pid``, also what the launchers owned by that (living) process left: an
    xdist controller cleaning up after its workers. Each leftover gets its service's stop
    signal, then SIGKILL (its whole group) after its ``stop_timeout`` (at most
    :data:`REAP_GRACE_SECONDS`).
    """
    run_dir = state_dir / "run"
    if not run_dir.is_dir():
        return []
    reaped: list[tuple[str, int]] = []
    tokens: dict[int, str] = {}
    grace = 0.0
    files: list[tuple[Path, dict[str, Any]]] = []
    for path in sorted(run_dir.glob("*.json")):
        try:
            data = json.loads(path.read_text())
            owner = data["owner"]
            processes = data["processes"]
        except (OSError, ValueError, KeyError, TypeError):
            log.warning("removing unreadable state file %s", path)
            path.unlink(missing_ok=True)
            continue
        ours = owner_pid is not None and int(owner["pid"]) == owner_pid
        if not ours and _alive_as(int(owner["pid"]), str(owner["token"])):
            continue  # its launcher still runs: not ours to touch
        files.append((path, data))
        for pid_text, info in processes.items():
            pid = int(pid_text)
            if _alive_as(pid, str(info.get("token"))):
                _signal(pid, int(info.get("signal", signal.SIGKILL)))
                tokens[pid] = str(info.get("token"))
                grace = max(grace, min(float(info.get("timeout", 0.0)), REAP_GRACE_SECONDS))
                reaped.append((str(info.get("service")), pid))
                log.warning("reaping service %s (pid %d) left by a killed session", info.get("service"), pid)
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
    for path, data in files:  # once the processes are gone, their temp dirs can go
        if data.get("tmp_root"):
            from .config import remove_scratch

            remove_scratch(Path(data["tmp_root"]))
        path.unlink(missing_ok=True)
    return reaped


def _signal(pid: int, sig: int) -> None:
    """``sig`` to the process's group (grandchildren too) and to the process itself."""
    for send, target in ((os.killpg, pid), (os.kill, pid)):
        try:
            send(target, sig)
        except OSError:
            pass
