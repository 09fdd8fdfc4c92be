"""The health monitor: a ready service keeps being probed, and its exit is noticed at once.

Like a Kubernetes liveness probe: every ``health.interval`` seconds its probe runs again (HTTP
through one shared aiohttp session with keep-alive); ``failure_threshold`` failures in a row make
it ``unhealthy``, a passing probe ``running`` again (recovered). Its process's exit is watched
through a pidfd (any process, not only our children: an adopted service too), so ``died`` comes
within milliseconds, not at the next test that needs it. Each tick also samples its resources.

Events go to subscribers (``launcher.subscribe(callback)``) on the launcher's loop thread; a
subscriber that raises is logged and the rest still hear the event.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from . import _timing
from ._resources import Resources, ResourceSampler

log = logging.getLogger(__name__)

EVENT_KINDS = ("ready", "unhealthy", "recovered", "died", "restarted", "stopped")
#: How often a service's resources are sampled (also at ready and before a stop): a sample
#: costs ~0.16 ms of CPU, as much as a probe, so not at every probe of a short interval.
RESOURCE_SECONDS = 10.0
#: Response times kept per service for the percentiles (the latest ones).
RESPONSE_SAMPLES = 4096


@dataclass(frozen=True)
class HealthEvent:
    """One change of a service's health: ``kind`` in :data:`EVENT_KINDS`, ``at`` wall-clock."""

    service: str
    kind: str
    at: float
    detail: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"service": self.service, "kind": self.kind, "at": self.at, "detail": self.detail}


@dataclass
class HealthStats:
    """What the monitor saw of one service (over every instance of this launcher's run)."""

    probes: int = 0
    failures: int = 0
    response_ms: collections.deque[float] = field(default_factory=lambda: collections.deque(maxlen=RESPONSE_SAMPLES))
    transitions: list[HealthEvent] = field(default_factory=list)
    #: The last probe's answer: None (passed), a reason, or "" before any.
    last_probe: str | None = ""
    consecutive_failures: int = 0
    resources: Resources | None = None


class HealthMonitor:
    """Watches the ready services of one launcher (see the module docstring).

    ``on_exit(name, runner)`` decides what an exit means: it returns the event kind ("died", or
    "restarted"/"stopped" when another process replaced or stopped the instance on purpose).
    """

    def __init__(self, on_exit: Callable[[str, Any], Awaitable[str]]) -> None:
        self._on_exit = on_exit
        self._subscribers: list[Callable[[HealthEvent], None]] = []
        self.stats: dict[str, HealthStats] = {}
        self._watchers: dict[str, asyncio.Task[None]] = {}
        self._samplers: dict[str, ResourceSampler] = {}
        self._session: Any = None

    # ------------------------------------------------------------------ events

    def subscribe(self, callback: Callable[[HealthEvent], None]) -> Callable[[], None]:
        """Call ``callback(event)`` for every event from now on; returns the unsubscribe."""
        self._subscribers.append(callback)

        def unsubscribe() -> None:
            with contextlib.suppress(ValueError):
                self._subscribers.remove(callback)

        return unsubscribe

    def emit(self, service: str, kind: str, detail: str = "") -> HealthEvent:
        event = HealthEvent(service, kind, time.time(), detail)
        self.stats_of(service).transitions.append(event)
        for callback in list(self._subscribers):
            try:
                callback(event)
            except Exception:
                log.exception("a health event subscriber failed on %s %s", service, kind)
        return event

    def stats_of(self, name: str) -> HealthStats:
        return self.stats.setdefault(name, HealthStats())

    # ------------------------------------------------------------------ watching

    def watch(self, svc: Any, probe: Any) -> None:
        """Watch ``svc`` (just ready, or adopted): ``probe`` (None: not probed again), its exit,
        its resources."""
        name = svc.config.name
        self.unwatch_now(name)
        self._watchers[name] = asyncio.ensure_future(self._watch(svc, svc.runner, probe))

    def unwatch_now(self, name: str) -> None:
        self._samplers.pop(name, None)
        task = self._watchers.pop(name, None)
        if task is not None:
            task.cancel()

    async def unwatch(self, name: str) -> None:
        """Stop watching before a deliberate stop (its exit is then no death); its resources
        are sampled a last time first, so a short run still has its peak."""
        sampler = self._samplers.pop(name, None)
        if sampler is not None:
            sampler.sample()
        task = self._watchers.pop(name, None)
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task

    def watching(self, name: str) -> bool:
        return name in self._watchers

    async def close(self) -> None:
        for name in list(self._watchers):
            await self.unwatch(name)
        if self._session is not None:
            await self._session.close()

    def http_fetch(self) -> Any:
        """The monitor's HTTP transport: one shared aiohttp session (see ``_http``)."""
        if self._session is None:
            from ._http import SharedSession

            self._session = SharedSession()
        return self._session.fetch

    async def _watch(self, svc: Any, runner: Any, probe: Any) -> None:
        name = svc.config.name
        stats = self.stats_of(name)
        pid = getattr(runner, "pid", None)
        # In a thread: an adopted container asks its engine (a process start) where it runs.
        main = await asyncio.to_thread(runner.resource_process)
        sampler = None
        if main is not None:
            stats.resources = stats.resources or Resources()
            sampler = self._samplers[name] = ResourceSampler(main[0], main[1], stats.resources)
        exited = _exit_future(pid, runner)
        me = asyncio.current_task()
        assert me is not None
        if exited is not None:
            # The exit interrupts whatever the watch is doing (a sleep, a probe): one callback,
            # rather than a wait on the exit at every tick (the monitor's CPU is per tick).
            exited.add_done_callback(lambda _: me.cancel() if not me.done() else None)
        try:
            await self._tick(svc, runner, probe, stats, sampler)
        except asyncio.CancelledError:
            if exited is None or not exited.done() or exited.cancelled():
                raise  # an unwatch (a deliberate stop), not the exit
            me.uncancel()
        finally:
            if exited is not None and not exited.done():
                exited.cancel()
            if hasattr(probe, "close"):  # an exec probe still running in the container
                await probe.close()
        # Its process ended, and not by a stop of ours (that unwatches first).
        await runner.collected(1.0)
        self._watchers.pop(name, None)
        kind = await self._on_exit(name, runner)
        if kind == "died":
            from .runners.subprocess import describe_exit

            self.emit(name, "died", describe_exit(runner.exit_code))

    async def _tick(self, svc: Any, runner: Any, probe: Any, stats: HealthStats, sampler: Any) -> None:
        """Probes start every ``interval`` (a slow probe does not push the next one back, as with
        Kubernetes' periodSeconds); resources are sampled every RESOURCE_SECONDS. Runs until
        cancelled (by an unwatch or the process's exit)."""
        tick = svc.config.health.interval if probe is not None else RESOURCE_SECONDS
        loop = asyncio.get_running_loop()
        # On a grid of the interval, not from this service's ready: services with the same
        # interval are probed in one wake-up of the loop (one wake costs about as much as a
        # probe, and caches are warm for the next).
        next_probe = math.floor(loop.time() / tick) * tick
        next_sample = loop.time()
        if sampler is not None:
            sampler.sample()
            next_sample += RESOURCE_SECONDS
        while True:
            next_probe += tick
            await asyncio.sleep(max(0.0, next_probe - loop.time()))
            if sampler is not None and loop.time() >= next_sample:
                sampler.sample()
                next_sample = loop.time() + RESOURCE_SECONDS
            if probe is None:
                continue
            await runner.probe_rate.wait()
            try:
                await self._probe_once(svc, probe, stats)
            finally:
                runner.probe_rate.record()

    async def _probe_once(self, svc: Any, probe: Any, stats: HealthStats) -> None:
        check = svc.config.health
        t0 = _timing.monotonic()
        try:
            async with asyncio.timeout(check.timeout + 1):
                result = await probe.check()
        except TimeoutError:
            result = f"probe timed out after {check.timeout:.1f} s"
        except Exception as exc:  # a probe that cannot work any more (ProbeUnusable): a failure
            result = str(exc) or type(exc).__name__
        stats.probes += 1
        stats.response_ms.append((_timing.monotonic() - t0) * 1000)
        stats.last_probe = result
        name = svc.config.name
        if result is None:
            stats.consecutive_failures = 0
            if svc.state == "unhealthy":
                svc.machine.recover()
                self.emit(name, "recovered", "probe passed")
            return
        stats.failures += 1
        stats.consecutive_failures += 1
        if stats.consecutive_failures >= check.failure_threshold and svc.state == "running":
            svc.machine.sicken()
            self.emit(name, "unhealthy", f"{stats.consecutive_failures} probes failed in a row "
                                         f"({check.describe()}); last: {result}")


def _exit_future(pid: int | None, runner: Any) -> asyncio.Future[None] | None:
    """A future set when ``pid`` exits, through a pidfd (None without a pid or pidfds). The pid
    is checked to still be the runner's process after the pidfd is open (pids get reused)."""
    if pid is None or not hasattr(os, "pidfd_open"):
        return None
    loop = asyncio.get_running_loop()
    future: asyncio.Future[None] = loop.create_future()
    try:
        fd = os.pidfd_open(pid)
    except OSError:  # already gone
        future.set_result(None)
        return future
    if not runner.alive():
        os.close(fd)
        future.set_result(None)
        return future

    def readable() -> None:
        if not future.done():
            future.set_result(None)

    loop.add_reader(fd, readable)

    def cleanup(_: object) -> None:
        loop.remove_reader(fd)
        os.close(fd)

    future.add_done_callback(cleanup)
    return future


def monitor_report(stats: dict[str, HealthStats], *, in_process: set[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The report's ``health`` and ``resources`` sections (SPEC 10) from what the monitor saw;
    an in-process app's resources are the test process's, so it has none of its own."""
    from .report import percentile

    health: dict[str, Any] = {}
    resources: dict[str, Any] = {}
    for name, st in sorted(stats.items()):
        times = list(st.response_ms)
        health[name] = {
            "probes": st.probes, "failures": st.failures,
            "response_ms": ({"p50": round(percentile(times, 50), 2), "p95": round(percentile(times, 95), 2)}
                            if times else None),
            "last_probe": "ok" if st.last_probe is None else (st.last_probe or None),
            "transitions": [e.as_dict() for e in st.transitions],
        }
        if st.resources is not None:
            resources[name] = st.resources.as_dict()
    for name in sorted(in_process):
        resources.setdefault(name, {"n/a": "an in-process app: its memory and CPU are the test process's"})
    return health, resources
