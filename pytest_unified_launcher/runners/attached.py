"""A service another process started (an xdist worker, ``unified-launcher up``): adopted by pid.

It is alive while its pid still names the recorded process; stopping it signals its process
group like any subprocess service, so a shared environment can be stopped from anywhere.
"""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Any

from .._process import Cgroup, owns_group, process_token, signal_if_same
from . import Runner


class AttachedRunner(Runner):
    kind = "subprocess"

    def __init__(self, *args: Any, pid: int | None, token: str | None, log_path: Path | None = None,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._pid = pid
        self._token = token
        self._log_path = log_path

    @property
    def token(self) -> str | None:
        return self._token

    @property
    def pid(self) -> int | None:
        return self._pid

    @property
    def log_path(self) -> Path:
        return self._log_path or self.ctx.log_dir / self.svc.log_name

    def alive(self) -> bool:
        if self._pid is None:
            return True  # nothing of ours to watch (a completed task)
        return self._token not in (None, "?") and process_token(self._pid) == self._token

    async def start(self, deadline: float) -> None:  # pragma: no cover - adopted, never started
        raise RuntimeError("an attached service is not started here")

    async def wait_ready(self, deadline: float) -> None:  # pragma: no cover
        return None

    async def stop(self) -> None:
        pid = self._pid
        if pid is None or self.svc.task:
            return
        cgroup = Cgroup(Cgroup.path_for(pid, self._token))
        if not self.alive():
            await cgroup.stop(self.svc.stop_signal, self.svc.stop_timeout)  # what it left, if anything
            return
        self._signal(pid, self.svc.stop_signal)
        loop = asyncio.get_running_loop()
        end = loop.time() + self.svc.stop_timeout
        delay = 0.002
        while self.alive() and loop.time() < end:
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.05)
        self._signal(pid, signal.SIGKILL)
        await cgroup.stop(self.svc.stop_signal, self.svc.stop_timeout)
        self.ctx.on_exit(self.svc.name, pid)

    def _signal(self, pid: int, sig: int) -> None:
        """``sig`` to the group and its leader, only while the pid still names the adopted process
        (or no process at all: what is left in its group is then its own)."""
        if not owns_group(pid, self._token):
            return
        try:
            os.killpg(pid, sig)
        except OSError:
            pass
        signal_if_same(pid, self._token, sig)  # through a pidfd: a pid reused meanwhile is not hit


class AttachedContainerRunner(AttachedRunner):
    """An adopted image service: its engine process is what is adopted (as for any process),
    and its container, named on that process's command line, is what a stop removes and an
    ``exec`` probe runs in."""

    kind = "container"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        from .._containers import EngineNotFound, find_engine

        super().__init__(*args, **kwargs)
        # Read only from the adopted process itself (its start time checked), and only a name
        # this launcher gives: a reused pid must never name another container to remove.
        from .._state import uid_of

        name = (_container_name_of(self._pid) if self._pid is not None and self.alive()
                and uid_of(self._pid) == os.geteuid() else None)
        name = name if name and name.startswith("ul-") and name.endswith(f"-{self.svc.name}") else None
        # Better still, the id its starter wrote beside its log (the launcher's private folder):
        # it names the container even once its engine process is gone (killed), so a stop
        # still removes it.
        cid = _read_id(Path(f"{self.log_path}.cid"))
        self.name = cid or name
        try:
            self.engine: Any = find_engine(self.ctx.container_engine, self.ctx.base_env)
        except EngineNotFound:
            self.engine = None
        self._inspected: tuple[str, int] | None = None

    @property
    def tcp_settle(self) -> float:
        """See :attr:`Engine.tcp_settle`."""
        return self.engine.tcp_settle if self.engine is not None else 0.0

    @property
    def exec_target(self) -> Any:
        from .._process import OWNER_VAR, SERVICE_VAR
        from ..health import ExecTarget

        if self.engine is None or not self.name:
            return None
        env = {k: v for k, v in self.ctx.base_env.items() if k not in (OWNER_VAR, SERVICE_VAR)}
        return ExecTarget(self.engine.path, self.name, env)

    def _inspect(self) -> tuple[str, int] | None:
        if self._inspected is None and self.exec_target is not None:
            code, out = self.engine.run_sync("container", "inspect", "--format={{.Id}} {{.State.Pid}}",
                                             self.name, timeout=10.0)
            parts = out.split()
            if code == 0 and len(parts) == 2 and parts[1].isdigit():
                self._inspected = (parts[0], int(parts[1]))
        return self._inspected

    @property
    def container_id(self) -> str | None:
        found = self._inspect()
        return found[0] if found else None

    def resource_process(self) -> tuple[int, str | None] | None:
        from .._containers import container_process

        found = self._inspect()
        return container_process(found[1], found[0]) if found and found[1] > 0 else None

    async def stop(self) -> None:
        if self.exec_target is not None and not self.svc.task:
            await self.engine.remove(self.name, grace=self.svc.stop_timeout, timeout=self.svc.stop_timeout + 30)
        await super().stop()


def _read_id(path: Path) -> str | None:
    """A container id from a ``--cidfile`` (64 hex digits), or None."""
    import re

    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return text if re.fullmatch(r"[0-9a-f]{64}", text) else None


def _container_name_of(pid: int) -> str | None:
    """The ``--name=N`` on an engine process's command line (``podman run --rm --name=N ...``,
    as :func:`run_args` writes it), before the image."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    for arg in argv[2:]:
        if not arg.startswith(b"--"):
            return None  # the image: options end here
        if arg.startswith(b"--name="):
            return arg.removeprefix(b"--name=").decode(errors="replace")
    return None
