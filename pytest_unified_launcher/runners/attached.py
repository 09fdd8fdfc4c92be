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

from .._process import Cgroup, kill_pids, owns_group, process_token
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
        if self.alive():
            kill_pids([pid], sig)
