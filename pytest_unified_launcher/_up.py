"""``<state_dir>/up.json``: the environment `unified-launcher up` (or ``--launcher-keep``) left
running, which ``status``, ``down`` and ``pytest --launcher-attach`` read. Mode 0600.

It is read only from a state dir of ours that no other user can write, only as a regular file of
ours, and only in the shape we write (else one clear line, and it is removed); ``down`` signals
only processes :func:`~pytest_unified_launcher._state.provably_ours` (SPEC 7).
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

from ._process import process_token
from ._state import check_state_dir, marker_of, provably_ours, read_private, uid_of, write_private
from .errors import AttachError


def up_path(state_dir: Path) -> Path:
    return state_dir / "up.json"


def write_up_record(launcher: Any, *, owner_pid: int | None = None, control: dict[str, Any] | None = None) -> Path:
    """Record every running service of ``launcher`` (pid, start token, uid, marker, address)."""
    services: dict[str, Any] = {}
    for name, handle in launcher.services.items():
        if handle.state not in ("running", "unhealthy", "completed"):
            continue
        pid = handle.pid
        services[name] = {
            # The process's state (an unhealthy one runs); its health: `status` asks `up` itself.
            "state": "completed" if handle.state == "completed" else "running", "pid": pid, "token": process_token(pid) if pid else None,
            "url": handle.url, "host": handle.host, "port": handle.port, "runner": handle.runner,
            "level": handle.level, "startup_seconds": handle.startup_seconds,
            "log_path": str(handle.log_path) if handle.log_path else None,
            # Whose marker it carries (an xdist worker's launcher, for a kept environment).
            "owner": (marker_of(pid) or launcher.id) if pid else None, "uid": uid_of(pid) if pid else None,
        }
    record = {
        "config": str(launcher.config.source),
        "profile": launcher.config.profile,
        "mode": launcher.mode,
        "launcher_id": launcher.id,
        "owner_pid": owner_pid,
        "owner_token": process_token(owner_pid) if owner_pid else None,
        "tmp_root": str(launcher.config.tmp_root),
        "ports": launcher.config.ports,
        "services": services,
        "control": control,
    }
    path = up_path(launcher.config.state_dir)
    write_private(path, record)
    return path


def _of(value: Any, *kinds: type) -> bool:
    """isinstance, where an int is never a bool and None stands for NoneType."""
    types = tuple(type(None) if k is None else k for k in kinds)
    return isinstance(value, types) and not (isinstance(value, bool) and bool not in types)


_FIELDS: dict[str, tuple[Any, ...]] = {
    "config": (str,), "mode": (str,), "profile": (str, None), "launcher_id": (str, None),
    "owner_pid": (int, None), "owner_token": (str, None), "tmp_root": (str, None), "ports": (dict, None),
    "control": (dict, None), "services": (dict,),
}
_SERVICE_FIELDS: dict[str, tuple[Any, ...]] = {
    "state": (str,), "pid": (int, None), "token": (str, None), "url": (str, None), "host": (str, None),
    "port": (int, None), "runner": (str, None), "level": (int, None), "startup_seconds": (int, float, None),
    "log_path": (str, None), "owner": (str, None), "uid": (int, None),
}


def up_record_problem(data: Any) -> str | None:
    """What makes ``data`` not an up record (None when it is one): every field the readers use."""
    if not isinstance(data, dict):
        return "not a JSON object"
    for key, kinds in _FIELDS.items():
        if (key in data or None not in kinds) and not _of(data.get(key), *kinds):
            return f"'{key}' is missing or of the wrong type"
    for name, entry in data["services"].items():
        if not isinstance(entry, dict):
            return f"service '{name}' is not an object"
        for key, kinds in _SERVICE_FIELDS.items():
            if (key in entry or None not in kinds) and not _of(entry.get(key), *kinds):
                return f"service '{name}': '{key}' is missing or of the wrong type"
    if not all(_of(port, int) for port in (data.get("ports") or {}).values()):
        return "'ports' is not a map of ports"
    return None


def read_up_record(state_dir: Path) -> dict[str, Any]:
    """The record, from a trusted state dir and file of ours, in the shape we write; else one
    clear line (:class:`AttachError`, or :class:`StateDirError` naming the fix), and a malformed
    file of ours is removed."""
    path = up_path(state_dir)
    if not os.path.lexists(state_dir):
        raise NothingRunning(f"no environment is running: {path} does not exist; start one with "
                             "`unified-launcher up --detach`")
    check_state_dir(state_dir)
    try:
        data = read_private(path)
        problem = up_record_problem(data)
    except FileNotFoundError:
        raise NothingRunning(
            f"no environment is running: {path} does not exist; start one with "
            "`unified-launcher up --detach`"
        ) from None
    except OSError as exc:
        why = "it is a link" if exc.errno == errno.ELOOP else exc.strerror
        raise AttachError(f"the state file {path} is unusable ({why}); remove it") from None
    except ValueError as exc:
        problem = str(exc)
    if problem is None:
        return data  # type: ignore[no-any-return]
    removed = _remove_if_mine(path)
    raise AttachError(f"the state file {path} is not a launcher record ({problem}); "
                      + ("removed it: nothing is running from it" if removed else "remove it"))


def _remove_if_mine(path: Path) -> bool:
    try:
        if os.lstat(path).st_uid != os.geteuid():
            return False
        os.unlink(path)
    except OSError:
        return False
    return True


def owner_alive(record: dict[str, Any]) -> bool:
    """Whether the record's supervisor (`up`) still runs: its start time, and one of our uid."""
    pid = record.get("owner_pid")
    return (isinstance(pid, int) and pid > 1 and process_token(pid) == record.get("owner_token")
            and uid_of(pid) == os.geteuid())


def service_is_ours(record: dict[str, Any], name: str) -> bool:
    """Whether the record's service ``name`` is still the process its launcher started."""
    entry = record["services"][name]
    pid = entry.get("pid")
    return bool(pid) and provably_ours(pid, entry.get("token"), owner=entry.get("owner") or record.get("launcher_id") or "",
                                       service=name, uid=entry.get("uid"))


def attach_launcher(launcher: Any, state_dir: Path) -> dict[str, Any]:
    """Adopt every service of the running environment; fail clearly if one is not alive."""
    record = read_up_record(state_dir)
    for name, entry in sorted(record["services"].items()):
        if name not in launcher.services or launcher.config.services[name].scope == "worker":
            continue  # a worker task: each attached session (each xdist worker) runs its own
        pid = entry.get("pid")
        if entry["state"] == "running" and pid and process_token(pid) != entry.get("token"):
            raise AttachError(
                f"service '{name}' of the running environment is not alive (pid {pid} is gone); "
                "restart it with `unified-launcher down` then `unified-launcher up --detach`"
            )
        launcher.adopt(name, pid=pid, token=entry.get("token"), completed=entry["state"] == "completed",
                       log_path=Path(entry["log_path"]) if entry.get("log_path") else None,
                       startup_seconds=entry.get("startup_seconds"))
    launcher.delegate = delegate = UpDelegate(launcher, state_dir, record)
    launcher.recheck = delegate.recheck
    running = [n for n, e in record["services"].items() if n in launcher.services and e["state"] == "running"]
    for name, reason in sorted(launcher.probe(running).items()):
        if reason is not None:
            raise AttachError(
                f"service '{name}' of the running environment is unhealthy ({reason}); "
                "see `unified-launcher status` and its log, or restart it with `unified-launcher down` "
                "then `unified-launcher up --detach`"
            )
    return record


def call_control(control: Any, path: str, *, body: dict[str, Any] | None = None, timeout: float = 5.0) -> Any:
    """One call to `up`'s control API (a GET, or a POST of ``body``), with the token of its
    record; the answer's JSON. Raises OSError (no answer, an HTTP error) or ValueError."""
    import json
    import urllib.request

    if not isinstance(control, dict) or not control.get("url") or not control.get("token"):
        raise ValueError("the record names no control API")
    headers = {"Authorization": f"Bearer {control['token']}"}
    data = None
    if body is not None:
        data, headers["Content-Type"] = json.dumps(body).encode(), "application/json"
    request = urllib.request.Request(f"{control['url']}{path}", data=data, headers=headers,
                                     method="POST" if body is not None else "GET")
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


class UpDelegate:
    """Under ``--launcher-attach``, a test's ``stop()``/``restart()``/``start()`` of a service
    `up` runs is asked of `up` through its control API, so `up` stays its only owner: done here,
    `up`'s supervision would restart it on the same port beside the session's new process.

    Afterwards every service of `up`'s is adopted again from up.json (a restart there restarts
    its dependents too), or marked stopped when `up` no longer runs it.
    """

    #: How long an exit seen by the attached session's health monitor waits for `up` to record
    #: what replaced the process (a restart asked by another attached process, or up's own).
    RECHECK_SECONDS = 5.0

    def __init__(self, launcher: Any, state_dir: Path, record: dict[str, Any]) -> None:
        import threading

        self.launcher, self.state_dir = launcher, state_dir
        self.control = record.get("control") if isinstance(record.get("control"), dict) else None
        self.names = {n for n in record["services"] if n in launcher.services}
        #: Held while `up` carries out one of our requests: an exit seen meanwhile is its doing.
        self.busy = threading.Lock()

    def recheck(self, name: str) -> str | None:
        """What an exit of `up`'s service ``name`` means to this session (see
        ``UnifiedLauncher.recheck``): "restarted" once up.json names a new live process (adopted),
        "stopped" when `up` no longer runs it, None (it died) when `up` recorded nothing new."""
        import time

        if name not in self.names:
            return None
        old = self.launcher.services[name].pid
        end = time.monotonic() + self.RECHECK_SECONDS
        while True:
            with self.busy:  # our own request to `up` first: it ends with a new record
                try:
                    record = read_up_record(self.state_dir)
                except AttachError:
                    return None
                entry = record["services"].get(name)
                if entry is None:
                    self.launcher.mark_stopped(name)
                    return "stopped"
                pid = entry.get("pid")
                if pid and pid != old and process_token(pid) == entry.get("token"):
                    self.sync()
                    return "restarted"
            if time.monotonic() > end or not owner_alive(record):
                return None
            time.sleep(0.05)

    def __call__(self, action: str, name: str) -> list[str] | None:
        if name not in self.names or self.control is None:
            return None
        with self.busy:
            return self._ask(action, name)

    def _ask(self, action: str, name: str) -> list[str] | None:
        try:
            call_control(self.control, f"/services/{name}/{action}",
                         body={"reason": f"{action}() in the attached pytest session (pid {os.getpid()})"},
                         timeout=max(60.0, self.launcher.config.startup_timeout * 2))
        except (OSError, ValueError) as exc:
            raise AttachError(
                f"cannot ask `unified-launcher up` to {action} '{name}' through its control API ({exc}); "
                "see `unified-launcher status`"
            ) from None
        self.sync()
        return sorted(self.names)

    def sync(self) -> None:
        """Adopt `up`'s services as up.json now records them; those it does not run are stopped."""
        services = read_up_record(self.state_dir)["services"]
        for name in sorted(self.names):
            entry = services.get(name)
            if entry is None:
                self.launcher.mark_stopped(name)
                continue
            self.launcher.adopt(name, pid=entry.get("pid"), token=entry.get("token"),
                                completed=entry["state"] == "completed",
                                log_path=Path(entry["log_path"]) if entry.get("log_path") else None,
                                startup_seconds=entry.get("startup_seconds"))


class NothingRunning(AttachError):
    """No environment is recorded: ``down`` has nothing to do (exit 0), ``status`` says so."""


def remove_up_record(state_dir: Path) -> None:
    """Forget the environment; a record that cannot be removed (a folder in its place) is said in
    one line, not raised: the environment it named is stopped either way."""
    try:
        os.unlink(up_path(state_dir))
    except FileNotFoundError:
        pass
    except OSError as exc:
        import logging

        logging.getLogger(__name__).warning("cannot remove %s (%s); remove it by hand", up_path(state_dir),
                                            exc.strerror)


def remove_record_of(state_dir: Path, launcher_id: str) -> None:
    """The sentinel of a killed `up`, after reaping its services: the record names only what is
    gone now, so `status` and `down` say that nothing runs."""
    try:
        data = read_private(up_path(state_dir))
    except (OSError, ValueError):
        return
    if isinstance(data, dict) and data.get("launcher_id") == launcher_id:
        remove_up_record(state_dir)
