"""``<state_dir>/up.json``: the environment `unified-launcher up` (or ``--launcher-keep``) left
running, which ``status``, ``down`` and ``pytest --launcher-attach`` read. Mode 0600.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ._process import process_token
from ._state import write_private
from .errors import AttachError


def up_path(state_dir: Path) -> Path:
    return state_dir / "up.json"


def write_up_record(launcher: Any, *, owner_pid: int | None = None, control: dict[str, Any] | None = None) -> Path:
    """Record every running service of ``launcher`` (pid, start token, address)."""
    services: dict[str, Any] = {}
    for name, handle in launcher.services.items():
        if handle.state not in ("running", "completed"):
            continue
        pid = handle.pid
        services[name] = {
            "state": handle.state, "pid": pid, "token": process_token(pid) if pid else None,
            "url": handle.url, "host": handle.host, "port": handle.port, "runner": handle.runner,
            "level": handle.level, "startup_seconds": handle.startup_seconds,
            "log_path": str(handle.log_path) if handle.log_path else None,
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


def read_up_record(state_dir: Path) -> dict[str, Any]:
    path = up_path(state_dir)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise AttachError(
            f"no environment is running: {path} does not exist; start one with "
            "`unified-launcher up --detach`"
        ) from None
    except (OSError, ValueError) as exc:
        raise AttachError(f"the state file {path} is unreadable ({exc}); run `unified-launcher down`") from None
    if not isinstance(data, dict) or "services" not in data:
        raise AttachError(f"the state file {path} is not a launcher record; remove it")
    return data


def attach_launcher(launcher: Any, state_dir: Path) -> dict[str, Any]:
    """Adopt every service of the running environment; fail clearly if one is not alive."""
    record = read_up_record(state_dir)
    for name, entry in sorted(record["services"].items()):
        if name not in launcher.services:
            continue
        pid = entry.get("pid")
        if entry["state"] == "running" and pid and process_token(pid) != entry.get("token"):
            raise AttachError(
                f"service '{name}' of the running environment is not alive (pid {pid} is gone); "
                "restart it with `unified-launcher down` then `unified-launcher up --detach`"
            )
        launcher.adopt(name, pid=pid, token=entry.get("token"), completed=entry["state"] == "completed",
                       log_path=Path(entry["log_path"]) if entry.get("log_path") else None)
    running = [n for n, e in record["services"].items() if n in launcher.services and e["state"] == "running"]
    for name, reason in sorted(launcher.probe(running).items()):
        if reason is not None:
            raise AttachError(
                f"service '{name}' of the running environment is unhealthy ({reason}); "
                "see `unified-launcher status` and its log, or restart it with `unified-launcher down` "
                "then `unified-launcher up --detach`"
            )
    return record


def remove_up_record(state_dir: Path) -> None:
    try:
        os.unlink(up_path(state_dir))
    except FileNotFoundError:
        pass
