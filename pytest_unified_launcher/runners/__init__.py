"""Runners: how one service is started, waited for and stopped.

All share one shape (as mirakuru's executors do): ``start()`` spawns against the attempt's
deadline, ``wait_ready()`` waits against the same deadline while checking on every poll that
the process is alive, and ``stop()`` is best-effort and idempotent.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import ServiceConfig


@dataclass
class RunContext:
    """What every runner of one launcher shares."""

    launcher_id: str
    root: Path
    log_dir: Path
    base_env: Mapping[str, str]
    log_level: str = "info"
    on_spawn: Callable[[str, int], None] = lambda name, pid: None
    #: Called before a process is spawned (arms the sentinel: see ``_sentinel``).
    before_spawn: Callable[[], None] = lambda: None
    on_exit: Callable[[str, int], None] = lambda name, pid: None
    #: The pre-imported spawner for app subprocesses, when there is one (see _forkserver).
    forkserver: Any = None
    #: ``[launcher] container_engine``, and what is told the engine's name before an image
    #: service's first container (the run record keeps it: the reaper removes by label).
    container_engine: str = "auto"
    on_engine: Callable[[str], None] = lambda engine: None
    extra: dict[str, object] = field(default_factory=dict)

    def service_env(self, svc: ServiceConfig) -> dict[str, str]:
        """What a process of ``svc`` runs with (its command, setup steps, probes, reset): the
        launcher's environment, the service's ``env``, and the markers that find it again."""
        from .._process import OWNER_VAR, SERVICE_VAR

        return {**self.base_env, **svc.env, OWNER_VAR: self.launcher_id, SERVICE_VAR: svc.name}


class Runner:
    """The base shape; see the subclasses."""

    kind = "base"

    def __init__(self, svc: ServiceConfig, ctx: RunContext) -> None:
        from ..health import ProbeRate

        self.svc = svc
        self.ctx = ctx
        self.spawned_at: float | None = None
        #: Shared by its startup wait and the health monitor (at most 10 probes a second).
        self.probe_rate = ProbeRate()

    @property
    def pid(self) -> int | None:
        return None

    @property
    def log_path(self) -> Path | None:
        return None

    @property
    def token(self) -> str | None:
        """Its process's start time at spawn (see ``_process.owns_group``); None without one."""
        return None

    @property
    def exit_code(self) -> int | None:
        return None

    def resource_process(self) -> tuple[int, str | None] | None:
        """The process whose tree is this service's resources (pid, start token); None: none."""
        pid = self.pid
        return (pid, self.token) if pid is not None else None

    def alive(self) -> bool:
        return True

    async def collected(self, timeout: float) -> None:
        """Wait (at most ``timeout``) until its ended process's exit code is known: a pidfd says
        a process ended a moment before the child watcher has collected its status."""

    async def start(self, deadline: float) -> None:
        raise NotImplementedError

    async def wait_ready(self, deadline: float) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        raise NotImplementedError

    def _open_log(self) -> int:
        """Open a fresh log file for this start (or fail with the fix).

        A new file, not the old one truncated: a reader that keeps the old one open while it
        follows the name (`up`, `tail -F`) sees the restart even when the new output is exactly
        as long as the old.
        """
        from .._state import make_private_dir
        from ..errors import ServiceStartupError

        path = self.ctx.log_dir / self.svc.log_name
        try:  # private: 0700 folders, a 0600 file, never opened through a link
            make_private_dir(self.ctx.log_dir)
            path.unlink(missing_ok=True)
            return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise ServiceStartupError(
                self.svc.name,
                f"cannot write its log under {self.ctx.log_dir} ({exc.strerror}); "
                "set [launcher] state_dir to a writable folder",
            ) from None

    def _health_timeout(self, timeout: float, last: str) -> Exception:
        """The startup error for a probe that never passed, with the service's log tail."""
        from ..errors import ServiceStartupError

        return ServiceStartupError(
            self.svc.name,
            f"health check ({self.svc.health.describe()}) timed out after {timeout:.1f} s (last probe: {last})",
            log_tail=self.logs(20), timeout=timeout,
        )

    def _probe_unusable(self, exc: Exception) -> Exception:
        """The startup error for a probe that cannot work at all: no point waiting it out."""
        from ..errors import ServiceStartupError

        return ServiceStartupError(self.svc.name, f"health check ({self.svc.health.describe()}): {exc}",
                                   log_tail=self.logs(20))

    def logs(self, tail: int = 50) -> str:
        from .._process import tail as read_tail

        return read_tail(self.log_path, tail)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.svc.name!r} pid={self.pid}>"


def make_runner(svc: ServiceConfig, ctx: RunContext, *, in_process_apps: bool) -> Runner:
    """The runner for ``svc``: apps in-process or as subprocesses, commands, externals, images."""
    if svc.kind == "image":
        from .container import ContainerRunner

        return ContainerRunner(svc, ctx)
    if svc.kind == "url":
        from .external import ExternalRunner

        return ExternalRunner(svc, ctx)
    if svc.kind == "app" and in_process_apps:
        from .inprocess import InProcessRunner

        return InProcessRunner(svc, ctx)
    from .subprocess import SubprocessRunner

    return SubprocessRunner(svc, ctx)
