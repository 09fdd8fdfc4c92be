"""``UnifiedLauncher``: the graph, the lifecycles, the runners and the health waits together.

Each service starts the moment its own dependencies are ready (independent ones concurrently),
with ``retries`` and exponential backoff; a failure fails its dependents without starting them
and leaves unrelated services running. Teardown is reverse-ordered and best-effort: a service
stops once all its dependents have, and a failing stop is logged while the rest still stops.
All the work happens on the launcher's background loop thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import enum
import logging
import os
import secrets
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

from . import _timing
from . import graph as graph_mod
from ._loop import LoopThread
from .config import LauncherConfig, ServiceConfig, remove_scratch, resolve_mode
from .errors import DependencyFailedError, LauncherError, ServiceDiedError, ServiceStartupError
from .report import RunTiming, ServiceTiming, build_report
from ._handles import ServiceHandle, _Service
from .lifecycle import LIVE_STATES, UP_STATES

log = logging.getLogger(__name__)


class LauncherStatus(enum.StrEnum):
    IDLE = "idle"
    STARTING = "starting"
    RUNNING = "running"
    DEGRADED = "degraded"
    STOPPING = "stopping"
    STOPPED = "stopped"
    FAILED = "failed"


class UnifiedLauncher:
    """Starts and stops the services of one config (SPEC 6).

    ``mode``/``in_process_apps`` default to what :func:`resolve_mode` decides for the config.
    """

    def __init__(
        self,
        config: LauncherConfig,
        *,
        subprocess_apps_because: str | None = None,
        launcher_id: str | None = None,
        owner_pid: int | None = None,
        base_env: Mapping[str, str] | None = None,
        log_dir: Path | None = None,
        log_max_bytes: int | None = None,
    ) -> None:
        self.config = config
        #: Where its services' logs go: ``<state_dir>/logs``, or a folder of its own when other
        #: launchers start the same services next to it (an xdist per_worker worker, ``up``).
        self.log_dir = log_dir or config.state_dir / "logs"
        from ._logs import LOG_MAX_BYTES

        #: A running service's log is rotated past this size (``<name>.log.1`` keeps its last part).
        self.log_max_bytes = log_max_bytes or LOG_MAX_BYTES
        self.log_rotations = 0
        self._log_capper: asyncio.Task[None] | None = None
        #: A launcher given no log folder shares ``logs/`` unless another live one holds it.
        self._claims_log_dir = log_dir is None
        self._log_lock: int | None = None
        self.mode, self.mode_reason, apps_as_subprocesses = resolve_mode(
            config, subprocess_apps_because=subprocess_apps_because, as_root=os.geteuid() == 0
        )
        self.in_process_apps = not apps_as_subprocesses
        self.id = launcher_id or f"{os.getpid()}-{secrets.token_hex(3)}"
        self._owner_pid = owner_pid
        self._graph = config.graph
        levels = graph_mod.level_map(self._graph)
        self._services = {name: _Service(svc, levels[name]) for name, svc in config.services.items()}
        self._handles = {name: ServiceHandle(self, name) for name in config.services}
        self._base_env = dict(os.environ if base_env is None else base_env)
        self._thread = LoopThread(f"unified-launcher-{self.id}")
        self._runs: list[RunTiming] = []
        self._run: RunTiming | None = None
        self._run_t0 = 0.0
        self._active_starts = 0
        self._window_t0 = 0.0
        self._state_file: Any = None
        self._sentinel: Any = None  # reaps at once if this process is killed (see _sentinel)
        self._ctx: Any = None
        self._reaped = False
        self._stopping = False
        #: Called (from the caller's thread) after a handle's start/stop changed services, so a
        #: shared environment's record can follow (the xdist plugin sets it).
        self.on_change: Callable[[list[str]], None] = lambda names: None
        #: Called holding :attr:`guard` before a handle's start/stop/restart: brings this
        #: launcher's view of those services up to date with a shared environment's record
        #: (another xdist worker may have started or replaced them meanwhile).
        self.refresh: Callable[[list[str]], None] = lambda names: None
        #: Held around a handle's start/stop (the xdist plugin makes it the shared file lock).
        self.guard: Callable[[], contextlib.AbstractContextManager[object]] = contextlib.nullcontext
        #: ``delegate(action, name)``: under ``--launcher-attach``, ask `up` (the owner of the
        #: service) to ``stop``/``restart`` it and adopt the result: the names adopted again;
        #: None when the service is not `up`'s.
        self.delegate: Callable[[str, str], list[str] | None] = lambda action, name: None
        #: ``name -> seconds`` of each reset run (``reset``, ``fresh=True``), for the report.
        self.reset_seconds: dict[str, list[float]] = {}
        #: ``recheck(name)``, called (off the loop) when a service's process exits on its own:
        #: "restarted" or "stopped" when another process replaced or stopped it on purpose (a
        #: shared xdist worker), None when it died. The xdist plugin sets it.
        self.recheck: Callable[[str], str | None] = lambda name: None
        from ._monitor import HealthMonitor

        self.monitor = HealthMonitor(self._on_exit)
        self._closed = False

    # ------------------------------------------------------------------ public API

    @property
    def services(self) -> Mapping[str, ServiceHandle]:
        return MappingProxyType(self._handles)

    def service(self, name: str) -> ServiceHandle:
        if name not in self._handles:
            from .errors import UnknownServiceError

            raise UnknownServiceError([name], sorted(self._handles))
        return self._handles[name]

    async def start(self, names: Iterable[str] | None = None, *, retry_failed: bool = False) -> dict[str, ServiceHandle]:
        """Start ``names`` (default: every service) and their dependencies; wait until ready."""
        return await self._thread.call(self._start(names, retry_failed=retry_failed))

    async def stop(self, names: Iterable[str] | None = None, *, close: bool = True) -> None:
        """Stop ``names``, or everything this launcher started (reverse dependency order).

        A full stop also ends the background loop unless ``close=False`` (to start again).
        """
        await self._thread.call(self._stop(names))
        if names is None and close:
            self.close()

    # Synchronous twins, for callers without an event loop (the plugin, the CLI).

    def start_blocking(self, names: Iterable[str] | None = None, *, retry_failed: bool = False) -> dict[str, ServiceHandle]:
        return self._thread.run(self._start(names, retry_failed=retry_failed))

    def stop_blocking(self, names: Iterable[str] | None = None, *, close: bool = True) -> None:
        """Stop from synchronous code. Ctrl-C does not abort a teardown (that would orphan
        services): the first one is reported and the graceful stop goes on, a second kills every
        process group at once (as docker compose does)."""
        future = self._thread.submit(self._stop(names))
        interrupted = False
        while True:
            try:
                future.result()
                break
            except KeyboardInterrupt:
                if interrupted:
                    self.kill_all()
                    try:
                        future.result(timeout=10)
                    except BaseException:
                        pass
                    break
                interrupted = True
                print("unified-launcher: stopping services gracefully; press Ctrl-C again to kill them now",
                      file=sys.stderr, flush=True)
        if names is None and close:
            self.close()

    async def reset(self, names: Iterable[str]) -> None:
        """Run the ``reset`` hook of each of ``names`` in order (each must be up), timed."""
        await self._thread.call(self._reset(list(names)))

    def reset_blocking(self, names: Iterable[str]) -> None:
        self._thread.run(self._reset(list(names)))

    async def _reset(self, names: list[str]) -> None:
        from ._reset import run_reset
        from .errors import ServiceResetError

        names = self.config.expand(names)
        for name in names:  # every one checked first: no reset is half done
            self.service(name)  # an unknown name: UnknownServiceError, listing the known ones
            svc = self._services[name]
            if svc.config.reset is None:
                raise ServiceResetError(name, f"it has no reset hook: add reset = [\"program\", \"arg\", ...] or "
                                              f"reset = \"module:function\" to [services.{name}]")
            if svc.state not in ("running", "completed"):
                raise ServiceResetError(name, f"it is not running (state: {svc.state}); reset works on a running "
                                              "service: start it first")
        for name in names:
            svc = self._services[name]
            t0 = _timing.monotonic()
            await run_reset(svc.config, self._context(), handle=self._handles[name], worker=self.config.worker)
            self.reset_seconds.setdefault(name, []).append(_timing.monotonic() - t0)

    def subscribe(self, callback: Callable[[Any], None]) -> Callable[[], None]:
        """Call ``callback(event)`` for each health event (:class:`~._monitor.HealthEvent`:
        ``service``, ``kind`` in ready/unhealthy/recovered/died/restarted/stopped, ``at``,
        ``detail``), on the launcher's loop thread; returns the function that unsubscribes."""
        return self.monitor.subscribe(callback)

    @property
    def graph(self) -> Mapping[str, tuple[str, ...]]:
        """``name -> dependencies`` to start."""
        return MappingProxyType(self._graph)

    def closure(self, names: Iterable[str]) -> list[str]:
        """``names`` and their transitive dependencies, sorted (UnknownServiceError if unknown)."""
        return sorted(graph_mod.closure(self._graph, self.config.expand(names)))

    def all_up(self, names: Iterable[str]) -> bool:
        """Whether every one of ``names`` is running (and alive) or completed: no start needed."""
        return all(self._handles[n].state in ("running", "completed") and self._handles[n].alive for n in names)

    # ------------------------------------------------------------------ health while running

    def _watch(self, svc: _Service) -> None:
        """Hand a ready (or adopted) service to the monitor: probed every ``health.interval``
        (HTTP through its shared session), its exit noticed at once, its resources sampled."""
        if svc.config.task or svc.runner is None:
            return
        from .health import make_probe

        check = svc.config.health
        probe = None
        if check.monitored:
            probe = make_probe(svc.config, check, log_path=None, env=self._context().service_env(svc.config),
                               spawned_at=0.0, fetch=self.monitor.http_fetch(),
                               container=getattr(svc.runner, "exec_target", None),
                               tcp_settle=getattr(svc.runner, "tcp_settle", 0.0))
        self.monitor.watch(svc, probe)

    async def _on_exit(self, name: str, runner: Any) -> str:
        """A watched service's process ended, not by a stop of ours: died, or (a shared xdist
        worker) replaced or stopped by another process on purpose."""
        svc = self._services[name]
        if svc.runner is not runner or svc.state not in LIVE_STATES:
            return "replaced"
        kind = await asyncio.to_thread(self.recheck, name)
        if kind in ("restarted", "stopped"):
            self.monitor.emit(name, kind, "by another process of the session")  # adopting watches the new one
            return kind
        if svc.runner is runner and svc.state in LIVE_STATES:
            svc.mark_died()
            svc.machine.die()
        return "died"

    def adopt(self, name: str, *, pid: int | None, token: str | None, completed: bool = False,
              log_path: Path | None = None, startup_seconds: float | None = None) -> None:
        """Take over a service another process started (xdist ``shared``, ``--launcher-attach``);
        ``log_path``: where that process writes its log, if not in this launcher's log folder;
        ``startup_seconds``: how long its start took there (its handle shows it as if started here)."""
        self._thread.run(self._adopt(name, pid=pid, token=token, completed=completed, log_path=log_path,
                                     startup_seconds=startup_seconds))

    async def _adopt(self, name: str, *, pid: int | None, token: str | None, completed: bool,
                     log_path: Path | None = None, startup_seconds: float | None = None) -> None:
        from .runners.attached import AttachedContainerRunner, AttachedRunner

        svc = self._services[name]
        if svc.state == "completed" or (
            svc.state in LIVE_STATES and svc.runner is not None and svc.runner.pid == pid and svc.runner.alive()
        ):
            return
        self.monitor.unwatch_now(name)
        svc.startup_seconds = startup_seconds
        if svc.state in LIVE_STATES or svc.state == "died":
            svc.machine.fail()
        if svc.runner is not None and hasattr(svc.runner, "detach"):
            svc.runner.detach()  # another process replaced our instance: close what we held of it
        kind = AttachedContainerRunner if svc.config.kind == "image" else AttachedRunner
        svc.runner = kind(svc.config, self._context(), pid=pid, token=token, log_path=log_path)
        if self._run is None:  # so that stopping an adopted environment is timed like any other
            self._run = RunTiming()
            self._runs.append(self._run)
            self._run_t0 = _timing.monotonic()
        svc.timing = self._run.services.setdefault(name, ServiceTiming(
            level=svc.level, runner=self._runner_kind(svc.config), depends_on=tuple(self._graph[name])))
        svc.machine.begin()
        svc.machine.complete() if completed else svc.machine.ready()
        if not completed:
            self._watch(svc)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        svc.start_task = done  # type: ignore[assignment]
        svc.error = None

    def mark_stopped(self, name: str) -> None:
        """An adopted service its owner stopped: stopped here too, with nothing of ours to stop."""
        self._thread.run(self._mark_stopped(name))

    async def _mark_stopped(self, name: str) -> None:
        svc = self._services[name]
        await self.monitor.unwatch(name)
        if svc.state in UP_STATES or svc.state == "died":
            svc.machine.halt()
            svc.machine.finish()
        svc.start_task = None
        svc.runner = None

    def release_attached(self) -> None:
        """End a session attached to `up`'s environment: stop what this launcher started itself
        (a service `up` does not run, or the new process of one a test restarted), and leave the
        adopted ones running for `up`."""
        from .runners.attached import AttachedRunner

        own = [name for name, svc in self._services.items()
               if svc.runner is not None and not isinstance(svc.runner, AttachedRunner) and svc.state != "stopped"]
        if own:
            self.stop_blocking(own)
        self.forget()

    def forget(self, *, keep_record: bool = False) -> None:
        """Leave every service running and hand them over (``--launcher-keep``, xdist workers).

        ``keep_record``: the run file stays and its sentinel stays armed (a shared xdist worker,
        whose run file names the controller as owner): until the controller has stopped them,
        a kill of the controller still has them reaped. Else nothing would ever reap them.
        """
        if self._state_file is not None and not keep_record:
            self._state_file.close()
            self._sentinel.disarm()
        self._thread.run(self._forget())
        # The loop thread is left to die with the process: closing it now would make asyncio's
        # child watcher complain about the processes we deliberately leave running.

    async def _forget(self) -> None:
        await self.monitor.close()  # whoever takes them over watches them now
        for svc in self._services.values():
            runner = svc.runner
            if runner is not None and hasattr(runner, "detach"):
                runner.detach()

    def probe(self, names: Iterable[str]) -> dict[str, str | None]:
        """Run each service's health probe once: ``name -> None`` (healthy) or the reason."""
        return self._thread.run(self._probe(list(names)))

    async def _probe(self, names: list[str]) -> dict[str, str | None]:
        from .health import ProbeUnusable, make_probe

        async def one(name: str) -> str | None:
            svc = self._services[name].config
            if svc.health.kind in ("exit", "alive", "notify", "log"):
                return None  # nothing to ask a running service: its process is what is checked
            probe = make_probe(svc, svc.health, log_path=None, env=self._base_env, spawned_at=0.0,
                               container=getattr(self._services[name].runner, "exec_target", None),
                               tcp_settle=getattr(self._services[name].runner, "tcp_settle", 0.0))
            try:
                async with asyncio.timeout(svc.health.timeout + 1):
                    return await probe.check()
            except TimeoutError:
                return "timed out"
            except ProbeUnusable as exc:
                return str(exc)

        results = await asyncio.gather(*(one(n) for n in names))
        return dict(zip(names, results, strict=True))

    def kill_all(self) -> None:
        """SIGKILL every process group this launcher started, now (a second Ctrl-C)."""
        import signal

        from ._process import kill_pids, owns_group

        for svc in self._services.values():
            runner = svc.runner
            pid = runner.pid if runner is not None else None
            if pid and owns_group(pid, runner.token):  # a reused pid is someone else's
                try:
                    os.killpg(pid, signal.SIGKILL)
                except OSError:
                    kill_pids([pid])

    def get_status(self) -> LauncherStatus:
        states = [s.state for s in self._services.values()]
        if self._stopping or "stopping" in states:
            return LauncherStatus.STOPPING
        if "starting" in states:
            return LauncherStatus.STARTING
        up = [s for s in states if s in ("running", "completed")]
        failed = [s for s in states if s in ("failed", "died", "unhealthy")]
        if up and failed:
            return LauncherStatus.DEGRADED
        if failed:
            return LauncherStatus.FAILED
        if up:
            return LauncherStatus.RUNNING
        return LauncherStatus.STOPPED if self._runs else LauncherStatus.IDLE

    def report(self) -> dict[str, Any]:
        return build_report(
            self._runs, profile=self.config.profile, mode=self.mode, mode_reason=self.mode_reason,
            budget_seconds=self.config.startup_budget, resets=self.reset_seconds,
            **self.health_report(),
        )

    def health_report(self) -> dict[str, dict[str, Any]]:
        """SPEC 10's ``health`` (probes, failures, response times, transitions) and ``resources``
        (processes: peak memory, CPU seconds ...) of each service, as the monitor saw them."""
        from ._monitor import monitor_report

        in_process = {name for run in self._runs for name, timing in run.services.items()
                      if timing.runner == "in_process"}
        health, resources = monitor_report(self.monitor.stats, in_process=in_process)
        return {"health": health, "resources": resources}

    def close(self) -> None:
        """Stop the background loop (after :meth:`stop`)."""
        if not self._closed:
            self._closed = True
            self._thread.close()
            if self._log_lock is not None:
                os.close(self._log_lock)
                self._log_lock = None

    async def __aenter__(self) -> UnifiedLauncher:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def __repr__(self) -> str:
        return f"<UnifiedLauncher {self.id} {self.get_status().value} mode={self.mode} services={sorted(self._services)}>"

    # ------------------------------------------------------------------ internals: context

    def _runner_kind(self, svc: ServiceConfig) -> str:
        if svc.kind == "url":
            return "external"
        if svc.kind == "image":
            return "container"
        if svc.kind == "app" and self.in_process_apps:
            return "in_process"
        return "subprocess"

    def _context(self) -> Any:
        if self._ctx is None:
            from ._state import StateFile, claim_log_dir, ensure_state_dir, make_private_dir, reap
            from .runners import RunContext

            try:  # logs and state files are private: 0700 folders, 0600 files; a foreign state dir is refused
                ensure_state_dir(self.config.state_dir, source=str(self.config.source))
                if self._claims_log_dir:
                    self.log_dir, self._log_lock = claim_log_dir(self.log_dir, self.id)
                    self._claims_log_dir = False
                make_private_dir(self.log_dir)
            except OSError:
                pass  # reported by the runner that needs to write there, with the fix
            if not self._reaped:
                self._reaped = True
                try:
                    reap(self.config.state_dir)
                except OSError as exc:
                    log.warning("cannot reap leftovers under %s: %s", self.config.state_dir, exc)
            self._state_file = StateFile(
                self.config.state_dir, self.id, owner_pid=self._owner_pid, tmp_root=self.config.tmp_root,
                stops={name: (svc.stop_signal, svc.stop_timeout) for name, svc in self.config.services.items()},
            )
            from ._sentinel import Sentinel

            self._sentinel = Sentinel(self.config.state_dir, self.id, log_path=self.log_dir / "_sentinel.log",
                                      owner_pid=self._owner_pid)
            self._ctx = RunContext(
                launcher_id=self.id,
                root=self.config.root,
                log_dir=self.log_dir,
                base_env=self._base_env,
                log_level=self.config.log_level if self.config.log_level != "info" else "warning",
                on_spawn=self._sentinel.arming(self._state_file.add),
                before_spawn=self._sentinel.arm,
                on_exit=self._state_file.remove,
                container_engine=self.config.container_engine,
                on_engine=self._state_file.add_engine,
            )
            if (not self.in_process_apps and self.config.spawner == "preimport"
                    and any(s.kind == "app" and not s.user for s in self.config.services.values())):
                self._ctx.forkserver = self._new_forkserver()
        return self._ctx

    def _new_forkserver(self) -> Any:
        """The pre-imported spawner's handle (its helper starts with the first app)."""
        from ._forkserver import ForkServer

        return ForkServer(self.log_dir / "_forkserver.log", preload=self.config.preload)

    def restart_group(self, name: str) -> list[str]:
        """``name`` and the running services that restart with it: those depending on it (or on
        one of them) with ``restart = true``, compose's rule."""
        group = {name}
        grew = True
        while grew:
            grew = False
            for other, svc in self._services.items():
                if other not in group and svc.state == "running" and any(
                        d.restart and d.service in group for d in svc.config.dependencies):
                    group.add(other)
                    grew = True
        return sorted(group)

    # ------------------------------------------------------------------ internals: start

    async def _start(self, names: Iterable[str] | None, *, retry_failed: bool = False) -> dict[str, ServiceHandle]:
        names = self.config.expand(names) if names is not None else None
        wanted = sorted(graph_mod.closure(self._graph, names if names is not None else self._graph))
        if retry_failed:
            for name in names or []:
                svc = self._services[name]
                if svc.error is not None:
                    svc.error = None
                    svc.start_task = None
        ctx = self._context()
        if self._log_capper is None or self._log_capper.done():
            self._log_capper = asyncio.ensure_future(self._cap_logs())
        if ctx.forkserver is not None and any(self._services[n].config.kind == "app" for n in wanted):
            from ._process import OWNER_VAR, SERVICE_VAR

            started = ctx.forkserver.pid is not None
            try:
                await ctx.forkserver.start({**self._base_env, OWNER_VAR: self.id, SERVICE_VAR: SPAWNER})
            except OSError as exc:
                log.warning("the pre-imported spawner could not start (%s): spawning apps directly", exc)
                ctx.forkserver = None
            else:
                if not started and ctx.forkserver.pid is not None:
                    ctx.on_spawn(SPAWNER, ctx.forkserver.pid)  # on record (and watched) before it forks
        if self._run is None:
            self._run = RunTiming()
            self._runs.append(self._run)
            self._run_t0 = _timing.monotonic()
        # The environment's startup is the time spent bringing services up for the first time: a
        # test's restart() of a service that was up is not startup (it would count against the budget).
        counted = any(not self._started_once(n) for n in wanted)
        if counted:
            if self._active_starts == 0:
                self._window_t0 = _timing.monotonic()
            self._active_starts += 1
        try:
            results = await asyncio.gather(*(self._ensure(n) for n in wanted), return_exceptions=True)
        finally:
            if counted:
                self._active_starts -= 1
                if self._active_starts == 0 and self._run is not None:
                    self._run.total_startup_seconds += _timing.monotonic() - self._window_t0
        for result in results:
            if isinstance(result, asyncio.CancelledError):
                raise result
        # A service wanted only as someone's optional dependency may fail: its dependents said so.
        needed = graph_mod.closure(self._required_graph, names if names is not None else self._graph)
        errors = [r for n, r in zip(wanted, results, strict=True) if isinstance(r, BaseException) and n in needed]
        if errors:
            raise _root_cause(errors, self._services)
        return {name: self._handles[name] for name in wanted}

    @functools.cached_property
    def _required_graph(self) -> dict[str, tuple[str, ...]]:
        return self.config.required_graph

    def _started_once(self, name: str) -> bool:
        """Whether this run already brought ``name`` up (a start now is a restart)."""
        timing = self._run.services.get(name) if self._run is not None else None
        return timing is not None and timing.ready_at is not None

    async def _ensure(self, name: str) -> None:
        svc = self._services[name]
        if svc.error is not None:
            raise svc.error
        if svc.start_task is None:
            svc.start_task = asyncio.ensure_future(self._start_service(svc))
        await asyncio.shield(svc.start_task)
        if svc.state == "died" or (svc.state in LIVE_STATES and svc.runner is not None and not svc.runner.alive()):
            from .runners.subprocess import describe_exit

            await self.monitor.unwatch(name)
            svc.error = ServiceDiedError(name, describe_exit(svc.runner.exit_code), log_tail=svc.runner.logs(20))
            svc.mark_died()
            svc.machine.fail()
            raise svc.error
        if svc.state == "unhealthy":
            from .errors import ServiceUnhealthyError

            stats = self.monitor.stats_of(name)
            raise ServiceUnhealthyError(
                name, f"its health check ({svc.config.health.describe()}) failed {stats.consecutive_failures} "
                      f"times in a row (last probe: {stats.last_probe}); it is used again once a probe passes",
                log_tail=svc.runner.logs(20) if svc.runner is not None else "")

    async def _ensure_started(self, name: str) -> None:
        """Start ``name`` if needed and return once its process runs (``condition = "started"``),
        not when it is healthy; its failure before that is raised, as :meth:`_ensure` does."""
        svc = self._services[name]
        if svc.error is not None:
            raise svc.error
        if svc.start_task is None:
            svc.start_task = asyncio.ensure_future(self._start_service(svc))
        task = svc.start_task
        spawned = asyncio.ensure_future(svc.spawned.wait())
        try:
            await asyncio.wait({spawned, task}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            spawned.cancel()
        if not svc.spawned.is_set():
            await asyncio.shield(task)  # ended before it ran: its error, or it completed (a task)

    async def _start_service(self, svc: _Service) -> None:
        name = svc.config.name
        deps = self._graph[name]
        timing = ServiceTiming(level=svc.level, runner=self._runner_kind(svc.config), depends_on=deps,
                               started_after=tuple(d.service for d in svc.config.dependencies
                                                   if d.condition == "started"))

        def record() -> None:
            """The first start is the run's row; a later one is listed among its restarts."""
            assert self._run is not None
            if self._started_once(name):
                self._run.services[name].restarts.append(timing)
            else:
                self._run.services[name] = timing
            svc.timing = self._run.services[name]

        svc.spawned.clear()
        for missing in svc.config.skipped:
            log.warning("%s: optional dependency '%s' is not defined in the config: starting without it", name, missing)
        if deps:
            entries = {d.service: d for d in svc.config.dependencies}
            results = await asyncio.gather(
                *(self._ensure_started(d) if d in entries and entries[d].condition == "started" else self._ensure(d)
                  for d in deps),
                return_exceptions=True,
            )
            for dep, result in zip(deps, results, strict=True):
                if isinstance(result, asyncio.CancelledError):
                    raise result
                if isinstance(result, BaseException) and dep in entries and not entries[dep].required:
                    log.warning("%s: optional dependency '%s' failed (%s): starting without it", name, dep,
                                getattr(result, "cause", result))
                    continue
                if isinstance(result, BaseException):
                    svc.error = DependencyFailedError(name, dep)
                    if isinstance(result, ServiceStartupError):
                        svc.error.cause = f"dependency '{dep}' failed: {result.cause}"
                        svc.error.log_tail = result.log_tail
                    if self._run is not None:  # the summary lists it, as not started
                        timing.failed, timing.blocked_by = True, _first_failure(dep, self._services)
                        record()
                    raise svc.error
        assert self._run is not None
        restart = self._started_once(name)
        record()
        began = _timing.monotonic()
        timing.started_at = began - self._run_t0
        ctx = self._context()
        from .runners import make_runner

        rebinds = 0
        attempt = 0
        while attempt < svc.config.retries:
            attempt += 1
            svc.attempts = timing.attempts = attempt
            runner = make_runner(svc.config, ctx, in_process_apps=self.in_process_apps)
            svc.runner = runner
            svc.machine.begin()
            deadline = _timing.monotonic() + svc.config.startup_timeout
            try:
                await runner.start(deadline)
                svc.spawned.set()
                await runner.wait_ready(deadline)
            except ServiceStartupError as exc:
                await self._quiet_stop(runner)
                svc.machine.fail()
                if exc.port_in_use is not None and svc.config.rebind is not None and rebinds < 3:
                    # Its port was taken since it was reserved, and nothing else names its
                    # address: move it to a fresh port and try again (not counted as an attempt).
                    from ._ports import release, reserve

                    rebinds += 1
                    try:
                        new_port = reserve(svc.config.host)
                    except OSError as no_port:
                        exc.cause += f"; no free port to move it to ({no_port.strerror})"
                        timing.failed = True
                        svc.error = exc
                        raise exc from None
                    release([exc.port_in_use])
                    log.warning("%s: port %d was taken; moving to port %d", name, exc.port_in_use, new_port)
                    svc.config = svc.config.rebind(new_port)
                    attempt -= 1
                    continue
                if attempt < svc.config.retries:
                    backoff = min(2.0 ** (attempt - 1), 30.0)
                    log.warning("%s (attempt %d of %d); retrying in %.0f s", exc, attempt, svc.config.retries, backoff)
                    await asyncio.sleep(backoff)
                    continue
                timing.failed = True
                svc.error = exc
                raise
            except BaseException as exc:
                if isinstance(exc, (asyncio.CancelledError, KeyboardInterrupt)) and svc.timing is not None:
                    svc.timing.interrupted = True
                await asyncio.shield(self._quiet_stop(runner))
                svc.machine.fail()
                raise
            break
        now = _timing.monotonic()
        svc.startup_seconds = timing.startup_seconds = now - began
        timing.ready_at = now - self._run_t0
        timing.spawned_at = ((runner.spawned_at or began) - self._run_t0)
        if svc.config.container is not None:
            timing.image = svc.config.container.image
            timing.image_digest = getattr(runner, "image_digest", None)
            timing.pull_seconds = getattr(runner, "pull_seconds", None)
        if svc.config.task:
            svc.machine.complete()
        else:
            svc.machine.ready()
            self.monitor.emit(name, "restarted" if restart else "ready", f"in {svc.startup_seconds:.3f} s")
            self._watch(svc)
        log.info("%s ready in %.3f s", name, svc.startup_seconds)

    async def _quiet_stop(self, runner: Any) -> None:
        try:
            await runner.stop()
        except Exception:
            log.exception("stopping %s after a failed start failed", runner)

    # ------------------------------------------------------------------ internals: stop

    async def _stop(self, names: Iterable[str] | None) -> None:
        full = names is None
        targets = set(self._services) if names is None else set(self.config.expand(names))
        unknown = targets - set(self._services)
        if unknown:
            from .errors import UnknownServiceError

            raise UnknownServiceError(sorted(unknown), sorted(self._services))
        t0 = _timing.monotonic()
        self._stopping = full
        tasks: dict[str, asyncio.Task[None]] = {}

        async def stop_one(name: str) -> None:
            dependents = [d for d, deps in self._graph.items() if name in deps and d in tasks]
            if dependents:
                await asyncio.gather(*(tasks[d] for d in dependents), return_exceptions=True)
            await self._stop_service(self._services[name])

        try:
            for name in sorted(targets):
                tasks[name] = asyncio.ensure_future(stop_one(name))
            results = await asyncio.gather(*tasks.values(), return_exceptions=True)
            for name, result in zip(tasks, results, strict=True):
                if isinstance(result, BaseException):
                    log.error("stopping service %s failed: %r", name, result)
        finally:
            self._stopping = False
        if full:
            if self._run is not None:
                self._run.total_teardown_seconds = _timing.monotonic() - t0
            self._run = None
            for svc in self._services.values():
                svc.error = None
                svc.timing = None
            await self._release()

    async def _stop_service(self, svc: _Service) -> None:
        task = svc.start_task
        if task is not None and not task.done():
            task.cancel()
            try:
                await task
            except BaseException:
                pass
        svc.start_task = None
        await self.monitor.unwatch(svc.config.name)
        runner = svc.runner
        if svc.state == "stopped" or runner is None:
            return
        died = svc.state in LIVE_STATES and _ended(runner)
        was_up = svc.state in LIVE_STATES
        t0 = _timing.monotonic()
        if was_up and runner.pid is not None:
            self._sample_last(svc)
        svc.machine.halt()
        try:
            await runner.stop()
            if died:  # after the stop, which collected its exit code
                svc.mark_died()
        finally:
            svc.machine.finish()
            svc.start_task = None
            if was_up:
                self.monitor.emit(svc.config.name, "stopped", "by the launcher")
            run = self._run
            if run is not None and svc.config.name in run.services:
                run.services[svc.config.name].teardown_seconds = _timing.monotonic() - t0

    def _sample_last(self, svc: _Service) -> None:
        """One last resource sample before a stop (a short test ends before the monitor's tick)."""
        from ._resources import ResourceSampler

        stats = self.monitor.stats_of(svc.config.name)
        if stats.resources is not None:
            ResourceSampler(svc.runner.pid, svc.runner.token, stats.resources).sample()

    async def _cap_logs(self) -> None:
        """Keep every running service's log under :attr:`log_max_bytes` (see ``_logs``): one
        ``stat`` per service and check, so a flood costs disk and memory nowhere. Checked every
        CHECK_SECONDS while some log grows fast, backing off to IDLE_CHECK_SECONDS while none
        does (an idle session's launcher then wakes once a second, not ten times)."""
        from ._logs import CHECK_SECONDS, FAST_GROWTH, IDLE_CHECK_SECONDS, cap_log

        delay = CHECK_SECONDS
        sizes: dict[str, int] = {}
        while True:
            await asyncio.sleep(delay)
            growth = 0
            for name, svc in self._services.items():
                runner = svc.runner
                if runner is None or runner.pid is None or runner.log_path is None:
                    continue  # in-process apps log through logging, a record at a time
                try:
                    size = os.lstat(runner.log_path).st_size
                except OSError:
                    continue
                if size > self.log_max_bytes and cap_log(runner.log_path, self.log_max_bytes):
                    self.log_rotations += 1
                    size = 0
                growth = max(growth, size - sizes.get(name, size))
                sizes[name] = size
            delay = CHECK_SECONDS if growth > FAST_GROWTH else min(delay * 2, IDLE_CHECK_SECONDS)

    async def _release(self) -> None:
        await self.monitor.close()
        if self._log_capper is not None:
            self._log_capper.cancel()
            self._log_capper = None
        if self._ctx is not None:
            if self._ctx.forkserver is not None:
                if self._ctx.forkserver.pid is not None:
                    self._ctx.on_exit(SPAWNER, self._ctx.forkserver.pid)
                await self._ctx.forkserver.close()
                self._ctx.forkserver = self._new_forkserver()
        # Scratch first, the record after: a kill in between leaves a run file the sentinel
        # reaps (scratch included), never scratch that nothing names any more.
        remove_scratch(self.config.tmp_root)
        if self._state_file is not None:
            self._state_file.close()
            self._sentinel.disarm()


#: The run file's name for the pre-imported spawner (no service is named with parentheses).
SPAWNER = "(spawner)"


def _ended(runner: Any) -> bool:
    """Whether the runner's process ended on its own: gone, or a zombie not yet collected."""
    from ._process import process_token

    return not runner.alive() or (runner.pid is not None and process_token(runner.pid) == "?")


def _first_failure(dep: str, services: Mapping[str, _Service]) -> str:
    """The service whose own failure stopped ``dep`` (``dep`` itself, or what blocked it)."""
    error = services[dep].error
    while isinstance(error, DependencyFailedError) and error.dependency in services:
        dep = error.dependency
        error = services[dep].error
    return dep


def _root_cause(errors: list[BaseException], services: Mapping[str, _Service]) -> BaseException:
    """The error to show: a service's own failure before a dependent's, lowest level first."""
    own = [e for e in errors if isinstance(e, LauncherError) and not isinstance(e, DependencyFailedError)]
    pool = own or errors

    def level(e: BaseException) -> int:
        svc = services.get(getattr(e, "service", ""))
        return svc.level if svc else 0

    return sorted(pool, key=level)[0]
