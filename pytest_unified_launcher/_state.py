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
    """The record of one launcher's processes."""

    def __init__(self, state_dir: Path, launcher_id: str, *, owner_pid: int | None = None,
                 tmp_root: Path | None = None) -> None:
        self.path = state_dir / "run" / f"{launcher_id}.json"
        owner = owner_pid or os.getpid()
        self.data: dict[str, Any] = {
            "owner": {"pid": owner, "token": process_token(owner)},
            "tmp_root": str(tmp_root) if tmp_root else None,
            "processes": {},
        }
        self._enabled = True

    def add(self, service: str, pid: int) -> None:
        self.data["processes"][str(pid)] = {"service": service, "token": process_token(pid)}
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


def reap(state_dir: Path, *, owner_pid: int | None = None) -> list[tuple[str, int]]:
    """Kill what launchers that no longer run left behind; returns ``(service, pid)`` reaped.

    With ``owner_pid``, also what the launchers owned by that (living) process left: an
    xdist controller cleaning up after its workers.
    """
    run_dir = state_dir / "run"
    if not run_dir.is_dir():
        return []
    reaped: list[tuple[str, int]] = []
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
        for pid_text, info in processes.items():
            pid = int(pid_text)
            if _alive_as(pid, str(info.get("token"))):
                try:
                    os.killpg(pid, signal.SIGKILL)  # its whole group: grandchildren too
                except OSError:
                    pass
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
                reaped.append((str(info.get("service")), pid))
                log.warning("reaped service %s (pid %d) left by a killed session", info.get("service"), pid)
        done = {pid for _, pid in reaped}
        for pid in marked_pids(path.stem):  # what left its service's group (a daemon), by its marker
            if pid not in done:
                kill_pids([pid])
                reaped.append(("(background)", pid))
                log.warning("reaped pid %d, which a service of a killed session left in the background", pid)
        if data.get("tmp_root"):
            from .config import remove_scratch

            remove_scratch(Path(data["tmp_root"]))
        path.unlink(missing_ok=True)
    return reaped
