"""What tests and the CLI hold of a launcher's services: :class:`ServiceHandle` (one service),
:class:`HandleGroup` (the instances of a service with ``replicas``), and ``_Service``, the live
state behind a handle. The launcher (``orchestrator``) owns them; a handle acts through it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, overload

from .config import ServiceConfig
from .errors import ServiceStartupError
from .lifecycle import ServiceLifecycle
from .report import ServiceTiming

if TYPE_CHECKING:
    from .orchestrator import UnifiedLauncher


class _Service:
    """One service's live state inside a launcher."""

    def __init__(self, config: ServiceConfig, level: int) -> None:
        self.config = config
        self.level = level
        self.machine = ServiceLifecycle(config.name)
        self.runner: Any = None
        self.start_task: asyncio.Task[None] | None = None
        self.error: ServiceStartupError | None = None
        self.attempts = 0
        self.startup_seconds: float | None = None
        #: Its row in the current run (its first start there), which the summary shows.
        self.timing: ServiceTiming | None = None
        #: Set once its process runs (for dependents with ``condition = "started"``).
        self.spawned = asyncio.Event()

    def mark_died(self) -> None:
        """Note in the report that its process ended on its own (before any stop of ours)."""
        runner = self.runner
        if self.timing is not None and runner is not None and self.timing.died is None:
            from .runners.subprocess import describe_exit

            self.timing.died = describe_exit(runner.exit_code)

    @property
    def state(self) -> str:
        return self.machine.state


class ServiceHandle:
    """What tests and the CLI see of one service (SPEC 3)."""

    def __init__(self, launcher: UnifiedLauncher, name: str) -> None:
        self._launcher = launcher
        self.name = name

    @property
    def _svc(self) -> _Service:
        return self._launcher._services[self.name]

    @property
    def config(self) -> ServiceConfig:
        return self._svc.config

    @property
    def host(self) -> str:
        return self.config.host

    @property
    def port(self) -> int | None:
        return self.config.port

    @property
    def url(self) -> str | None:
        return self.config.url

    @property
    def pid(self) -> int | None:
        runner = self._svc.runner
        return runner.pid if runner is not None else None

    @property
    def container_id(self) -> str | None:
        """An image service's container (its full id once it runs); None for other kinds."""
        return getattr(self._svc.runner, "container_id", None)

    @property
    def runner(self) -> str:
        return self._launcher._runner_kind(self.config)

    @property
    def state(self) -> str:
        return self._svc.state

    @property
    def level(self) -> int:
        return self._svc.level

    @property
    def startup_seconds(self) -> float | None:
        return self._svc.startup_seconds

    @property
    def log_path(self) -> Path | None:
        runner = self._svc.runner
        return runner.log_path if runner is not None else None

    @property
    def alive(self) -> bool:
        """Whether its process (if any) still runs; False before it was started."""
        runner = self._svc.runner
        return runner is not None and bool(runner.alive())

    @property
    def exit_code(self) -> int | None:
        runner = self._svc.runner
        return runner.exit_code if runner is not None else None

    @property
    def error(self) -> ServiceStartupError | None:
        """Why it failed to start (remembered until an explicit start()/restart())."""
        return self._svc.error

    def logs(self, tail: int = 50) -> str:
        runner = self._svc.runner
        return runner.logs(tail) if runner is not None else ""

    async def astart(self) -> ServiceHandle:
        if self.state != "stopped" or await asyncio.to_thread(self._launcher.delegate, "restart", self.name) is None:
            await self._launcher.start([self.name], retry_failed=True)
        return self

    async def astop(self) -> None:
        if await asyncio.to_thread(self._launcher.delegate, "stop", self.name) is None:
            await self._launcher.stop([self.name])

    async def arestart(self) -> ServiceHandle:
        """Restart it, and the running services that depend on it with ``restart = true``."""
        if await asyncio.to_thread(self._launcher.delegate, "restart", self.name) is not None:
            return self
        names = self._launcher.restart_group(self.name)
        await self._launcher.stop(names)
        await self._launcher.start(names, retry_failed=True)
        return self

    def start(self) -> ServiceHandle:
        with self._launcher.guard():
            self._launcher.refresh([self.name])
            changed = self._launcher.delegate("restart", self.name) if self.state == "stopped" else None
            if changed is None:
                self._launcher.start_blocking([self.name], retry_failed=True)
            self._launcher.on_change(changed or [self.name])
        return self

    def stop(self) -> None:
        with self._launcher.guard():
            self._launcher.refresh([self.name])
            changed = self._launcher.delegate("stop", self.name)
            if changed is None:
                self._launcher.stop_blocking([self.name])
            self._launcher.on_change(changed or [self.name])

    def restart(self) -> ServiceHandle:
        """Restart it, and the running services that depend on it with ``restart = true``."""
        with self._launcher.guard():
            changed = self._launcher.delegate("restart", self.name)
            if changed is not None:
                self._launcher.on_change(changed)
                return self
            names = self._launcher.restart_group(self.name)
            self._launcher.refresh(names)
            self._launcher.stop_blocking(names)
            self._launcher.start_blocking(names, retry_failed=True)
            self._launcher.on_change(names)
        return self

    def __repr__(self) -> str:
        return f"<ServiceHandle {self.name!r} {self.state} url={self.url} pid={self.pid} runner={self.runner}>"


class HandleGroup(Sequence[ServiceHandle]):
    """``services["worker"]`` of a service with ``replicas = N``: its instances' handles in order
    (``group[0].url``, ``len(group)``, ``[h.url for h in group]``)."""

    def __init__(self, name: str, handles: Sequence[ServiceHandle]) -> None:
        self.name = name
        self._handles = tuple(handles)

    @overload
    def __getitem__(self, index: int) -> ServiceHandle: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[ServiceHandle]: ...
    def __getitem__(self, index: int | slice) -> ServiceHandle | Sequence[ServiceHandle]:
        return self._handles[index]

    def __len__(self) -> int:
        return len(self._handles)

    @property
    def urls(self) -> list[str | None]:
        return [h.url for h in self._handles]

    def __repr__(self) -> str:
        return f"<HandleGroup {self.name!r} of {len(self)}: {', '.join(h.name for h in self._handles)}>"
