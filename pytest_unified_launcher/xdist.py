"""One environment shared by every xdist worker: a file lock and a record of what runs.

The first worker that needs a service starts it under the lock and records it (pid and start
token, or its failure); the others adopt what is recorded, or re-raise the recorded failure
without another attempt. The controller stops everything after the last worker has finished.
Nothing here imports pytest.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from ._process import process_token
from ._state import make_private_dir, open_trusted, read_private, write_private
from .errors import ServiceDiedError, ServiceStartupError

ENV_VAR = "UNIFIED_LAUNCHER_SHARED"


class SharedEnvironment:
    """The shared folder of one xdist session: ``lock`` and ``services.json``."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.record_path = folder / "services.json"

    def check(self) -> None:
        """Make the folder (0700), or raise StateDirError unless it is ours and no one else's to
        write. It sits in the shared temp dir, named after the session's scratch root, which
        another user can see there and create first: its record, the pids the workers adopt and
        the controller stops, would then be theirs to write. Every use goes through this."""
        make_private_dir(self.folder)
        os.close(open_trusted(self.folder, "the shared folder of this xdist session",
                              trusts="no record of shared services",
                              fix=f"remove {self.folder} (someone else made it; check who) and run again"))

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        self.check()
        with open(self.folder / "lock", "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def read(self) -> dict[str, Any]:
        """The record (StateDirError when the folder is not ours); a file that is not a
        record of ours (a link, another owner, not JSON) reads as empty."""
        self.check()
        try:
            data = read_private(self.record_path)
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def write(self, record: dict[str, Any]) -> None:
        self.check()
        write_private(self.record_path, record)

    def remove(self) -> None:
        """Remove the folder at the session's end: only if it is ours."""
        import shutil

        from ._state import StateDirError

        try:
            self.check()
        except StateDirError:
            return
        shutil.rmtree(self.folder, ignore_errors=True)

    def ensure(self, launcher: Any, names: Iterable[str]) -> None:
        """Start ``names`` once for all workers: adopt what runs, repeat what failed; then this
        worker's own ``scope = "worker"`` tasks among them (after the shared services they need)."""
        closure = launcher.closure(names)
        own = [name for name in closure if launcher.config.services[name].scope == "worker"]
        wanted = [name for name in closure if name not in own]
        self._ensure_shared(launcher, wanted)
        if own:
            launcher.start_blocking(own)

    def _ensure_shared(self, launcher: Any, wanted: list[str]) -> None:
        with self.lock():
            record = self.read()
            for name in sorted(wanted):
                entry = record.get(name)
                if not entry:
                    if launcher.services[name].state != "stopped":
                        # Another worker stopped it (a test's stop()): stopped for every worker.
                        launcher.stop_blocking([name])
                    continue
                if entry["state"] == "failed":
                    raise ServiceStartupError(name, entry["cause"], log_tail=entry.get("log_tail", ""))
                if entry["state"] == "died":
                    raise ServiceDiedError(name, entry["cause"], log_tail=entry.get("log_tail", ""))
                if launcher.config.services[name].is_external:
                    continue  # no process of ours: each worker waits for its health itself (below)
                pid = entry.get("pid")
                if entry["state"] == "completed" or (pid and process_token(pid) == entry.get("token")):
                    launcher.adopt(name, pid=pid, token=entry.get("token"),
                                   completed=entry["state"] == "completed",
                                   startup_seconds=entry.get("startup_seconds"))
                    continue
                # It died since it was recorded: report it once for all, never restart silently.
                from ._process import tail

                log_tail = tail(launcher.log_dir / f"{name}.log", 20)
                record[name] = {"state": "died", "cause": "exited during the session",
                                "log_tail": log_tail}
                self.write(record)
                raise ServiceDiedError(name, "exited during the session", log_tail=log_tail)
            try:
                launcher.start_blocking(wanted)
            finally:
                self._record(launcher, wanted, record)

    def _record(self, launcher: Any, names: Iterable[str], record: dict[str, Any]) -> None:
        for name in names:
            handle = launcher.services[name]
            if handle.error is not None:
                err = handle.error
                record[name] = {"state": "failed", "cause": err.cause, "log_tail": err.log_tail}
            elif handle.state in ("running", "unhealthy", "completed"):  # unhealthy: its process runs
                pid = handle.pid
                record[name] = {
                    "state": "completed" if handle.state == "completed" else "running", "pid": pid, "token": process_token(pid) if pid else None,
                    "startup_seconds": handle.startup_seconds,
                }
        self.write(record)

    def adopt_recorded(self, launcher: Any, names: Iterable[str]) -> None:
        """Adopt the recorded instance of each of ``names`` that is alive (called holding
        :meth:`lock`), so that a handle's start() finds the instance another worker started
        instead of starting a second one on its port, and stop() stops the current one."""
        record = self.read()
        for name in names:
            entry = record.get(name)
            if not entry or entry.get("state") not in ("running", "completed") or \
                    launcher.config.services[name].is_external:
                continue
            pid = entry.get("pid")
            if entry["state"] == "completed" or (pid and process_token(pid) == entry.get("token")):
                launcher.adopt(name, pid=pid, token=entry.get("token"), completed=entry["state"] == "completed",
                               startup_seconds=entry.get("startup_seconds"))

    def recheck(self, launcher: Any, name: str) -> str | None:
        """What an exit of ``name`` seen by this worker's monitor means: "restarted" (another
        worker replaced it: the new instance is adopted), "stopped" (another worker stopped it),
        or None (it died). Waits for the lock: a restart holds it until the new one is recorded."""
        runner = launcher.services[name]._svc.runner
        with self.lock():
            entry = self.read().get(name)
            if not entry or entry.get("state") == "stopped":
                launcher.mark_stopped(name)
                return "stopped"
            pid = entry.get("pid")
            if entry.get("state") == "running" and pid and pid != getattr(runner, "pid", None) \
                    and process_token(pid) == entry.get("token"):
                launcher.adopt(name, pid=pid, token=entry.get("token"), startup_seconds=entry.get("startup_seconds"))
                return "restarted"
        return None

    def update(self, launcher: Any, names: Iterable[str]) -> None:
        """Record what a test's stop()/start() changed (called holding :meth:`lock`)."""
        record = self.read()
        for name in names:
            record.pop(name, None)
        self._record(launcher, names, record)


def controller_payload(*, config_path: Path, ports: dict[str, int], tmp_root: Path, folder: Path,
                       controller_pid: int | None = None) -> str:
    return json.dumps({
        "config": str(config_path), "ports": ports, "tmp_root": str(tmp_root),
        "folder": str(folder), "controller_pid": controller_pid or os.getpid(),
    })
