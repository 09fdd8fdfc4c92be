"""One service's fields that resolve on their own: a command's argv, a signal, the health probe,
the reset hook. :mod:`.parsing` calls these with the service's placeholder expander ``ex``."""

from __future__ import annotations

import re
import shlex
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .models import HealthCheck, HealthModel, ResetHook, ServiceModel, Where


def _argv(value: list[str] | str, where: Where | None = None, key: str = "command") -> list[str]:
    if not isinstance(value, str):
        return list(value)
    try:
        argv = shlex.split(value)
    except ValueError as exc:
        raise (where or ConfigError)(
            f"cannot split {value!r} into arguments: {exc}",
            fix="balance the quotes, or write the command as a list of strings", key=key,
        ) from None
    if not argv:
        raise (where or ConfigError)("the command is empty", fix="give the program to run", key=key)
    return argv


def _signal_number(value: str | int, where: Where) -> int:
    """The number of a real signal: one the kernel refuses (EINVAL at stop) would orphan the service."""
    fix = "use a signal name such as SIGTERM, SIGINT or SIGQUIT, or its number (15, 2, 3)"
    if isinstance(value, int):
        if value not in signal.valid_signals():
            raise where(f"{value} is not a signal", fix=fix)
        return value
    name = value.upper()
    if not name.startswith("SIG"):
        name = "SIG" + name
    try:
        return int(signal.Signals[name])
    except KeyError:
        raise where(f"unknown signal {value!r}", fix=fix) from None


def _resolve_health(
    raw: ServiceModel,
    name: str,
    port: int | None,
    host: str,
    url: str | None,
    ex: Callable[[str, str], str],
    where: Where,
    root: Path,
) -> HealthCheck:
    if raw.task:
        if raw.health is not None:
            raise where("a task has no health probe: it is ready when it exits 0",
                        fix="remove health, or drop task = true for a long-running service", key="health")
        return HealthCheck("exit")
    h = raw.health or HealthModel()
    common: dict[str, Any] = {"timeout": h.timeout, "interval": h.interval, "failure_threshold": h.failure_threshold}
    if h.http is not None:
        spec = h.http
        key = "health.http.path" if len(spec.model_fields_set) > 1 else "health.http"
        target = ex(key, spec.path)
        if target.startswith("/"):
            if url is None:
                raise where(f"http path {target!r} needs a port",
                            fix="give the service a port, or write a full URL", key=key)
            target = url.rstrip("/") + target
        elif not target.startswith(("http://", "https://")):
            raise where(f"{target!r} is neither a path (/health) nor an http(s) URL",
                        fix='write a path such as "/health", or a full URL such as "http://127.0.0.1:8000/health"',
                        key=key)
        files: dict[str, Any] = {k: (root / ex(f"health.http.{k}", v)).resolve() if v else None
                 for k, v in (("ca_file", spec.ca_file), ("cert", spec.cert), ("key", spec.key))}
        for k, path in files.items():
            if path is not None and not path.is_file():
                raise where(f"{k} {path} is not a file", fix="give the path of a PEM file (relative to the config file)",
                            key=f"health.http.{k}")
        return HealthCheck(
            "http", url=target, status=tuple(spec.status) if spec.status else None, body=spec.body,
            headers=tuple((k, ex(f"health.http.headers.{k}", v)) for k, v in spec.headers.items()), **files, **common,
        )
    if h.tcp:
        if port is None:
            raise where("a tcp probe needs a port", fix='set port = "auto" or use ${port} in the command',
                        key="health.tcp")
        return HealthCheck("tcp", **common)
    if h.command is not None:
        argv = tuple(ex("health.command", a) for a in _argv(h.command, where, "health.command"))
        if not argv:
            raise where("the probe command is empty", fix="give the program to run", key="health.command")
        return HealthCheck("command", argv=argv, **common)
    if h.exec is not None:
        argv = tuple(ex("health.exec", a) for a in _argv(h.exec, where, "health.exec"))
        if not argv:
            raise where("the probe command is empty", fix="give the program to run in the container",
                        key="health.exec")
        return HealthCheck("exec", argv=argv, **common)
    if h.log is not None:
        return HealthCheck("log", pattern=ex("health.log", h.log), **common)
    if h.notify:
        return HealthCheck("notify", **common)
    return HealthCheck("tcp" if port is not None else "alive", **common)


#: ``reset = "package.module:function"``: a Python hook rather than a command.
_FUNCTION_RE = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*")


def _resolve_reset(raw: ServiceModel, ex: Callable[[str, str], str], where: Where) -> ResetHook | None:
    """``reset``: ``"module:function"``, or a command (a list of arguments, or one string split
    like a shell's), placeholders expanded (``${worker}`` among them)."""
    if raw.reset is None:
        return None
    if isinstance(raw.reset, str) and _FUNCTION_RE.fullmatch(raw.reset.strip()):
        return ResetHook(function=raw.reset.strip())
    argv = tuple(ex("reset", a) for a in _argv(raw.reset, where, "reset"))
    if not argv:
        raise where("the reset command is empty", fix='give the program to run, or "module:function"',
                    key="reset")
    return ResetHook(argv=argv)
