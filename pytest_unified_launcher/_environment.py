"""What ``unified-launcher up`` runs: start, record, supervise, serve the control API, stop.

It restarts a service that dies (``auto_restart``, backoff 1 s, 2 s, 4 s ... capped at 30 s),
reloads services whose ``watch`` paths change (``--dev``), and always stops everything on
Ctrl-C, SIGTERM (``down``), SIGHUP (its terminal closed) or a failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import secrets
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, BinaryIO, TextIO

from . import _timing
from . import graph as graph_mod
from ._up import remove_up_record, write_up_record
from .config import DEV_RELOAD, LauncherConfig
from .errors import LauncherError
from .orchestrator import UnifiedLauncher

log = logging.getLogger(__name__)

COLOURS = ["36", "33", "32", "35", "34", "91", "92", "93", "94", "95", "96"]
MAX_BACKOFF = 30.0
#: The watchdog events that mean a file changed (not merely opened or read).
CHANGE_EVENTS = frozenset({"created", "modified", "moved", "deleted", "closed"})


#: How far `up` lets its display of a log fall behind before skipping ahead, and the most it
#: reads at once: its memory stays bounded whatever a service writes.
FOLLOW_MAX_BEHIND = 1024 * 1024


def discard_output(stream: TextIO) -> None:
    """Point ``stream``'s file at /dev/null once its reader went away, so that Python's flush
    at exit does not fail (and print an "Exception ignored" trace) a second time."""
    try:
        fd = stream.fileno()
    except (OSError, ValueError):  # not a real file (a StringIO in tests)
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)


def default_watch_paths(config: LauncherConfig, name: str) -> list[Path]:
    """A service's ``watch`` paths, or for an app the folder of its top-level package."""
    svc = config.services[name]
    if svc.watch:
        return list(svc.watch)
    if svc.kind == "app" and svc.app:
        top = svc.app.split(":")[0].split(".")[0]
        for candidate in (config.root / top, config.root / f"{top}.py"):
            if candidate.exists():
                return [candidate]
    return []


class Environment:
    def __init__(
        self,
        config: LauncherConfig,
        names: Sequence[str] | None,
        *,
        dev: bool = False,
        out: TextIO = sys.stdout,
        colour: bool | None = None,
        follow_logs: bool = True,
    ) -> None:
        self.config = config
        self.names = list(names) if names else None
        self.dev = dev or config.dev_mode
        # Apps outlive nothing here, but dev reloads need fresh imports: subprocesses then.
        # Logs in logs/up/: a pytest run beside it (without --launcher-attach) starts services of
        # the same names, whose logs would replace these.
        self.launcher = UnifiedLauncher(config, subprocess_apps_because=DEV_RELOAD if self.dev else None,
                                        log_dir=config.state_dir / "logs" / "up")
        self.out = out
        self.colour = out.isatty() if colour is None else colour
        self.follow_logs = follow_logs
        self.stop_event = asyncio.Event()
        self.secret = secrets.token_urlsafe(32)
        self.restarts: dict[str, int] = {}
        self.control_url: str | None = None
        self._server: Any = None
        self._metrics: Any = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._observer: Any = None
        self._output_gone = False
        self._recorded = False  # up.json written once: a later failure no longer ends the start
        self._record_failing = False

    # ------------------------------------------------------------------ output

    def say(self, text: str) -> None:
        """Print a line; if nobody reads our output any more, stop the environment instead.

        `up | head -1` or a closed terminal: a command whose reader left ends (as it would by
        SIGPIPE), but here through the usual shutdown, so nothing is left running.
        """
        if self._output_gone:
            return
        try:
            print(text, file=self.out, flush=True)
        except OSError as exc:
            self._output_gone = True
            discard_output(self.out)
            if isinstance(exc, BrokenPipeError) or exc.errno == errno.EIO:  # reader gone, terminal closed
                self.stop_event.set()
            else:  # e.g. a full disk: keep the environment, lose the output
                log.warning("cannot write up's output any more (%s); services keep running", exc)

    def _prefix(self, name: str) -> str:
        width = max(len(n) for n in self.config.services)
        label = f"{name:<{width}} |"
        if not self.colour:
            return label
        colour = COLOURS[sorted(self.config.services).index(name) % len(COLOURS)]
        return f"\033[{colour}m{label}\033[0m"

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> dict[str, Any]:
        """Start the services (or raise); record them; serve the control API."""
        self.say(f"starting {', '.join(self.names) if self.names else 'all services'} "
                 f"({self.launcher.mode}: {self.launcher.mode_reason})")
        t0 = _timing.monotonic()
        progress = asyncio.ensure_future(self._progress())
        try:
            handles = await self.launcher.start(self.names)
        finally:
            progress.cancel()
        self.say(f"ready in {_timing.monotonic() - t0:.3f} s")
        from .control import Metrics

        self._metrics = Metrics()
        for name, handle in handles.items():
            if handle.startup_seconds is not None:
                self._metrics.startup.labels(name).observe(handle.startup_seconds)
        await self._serve_control_api()
        self.record()
        return handles

    def record(self) -> Path:
        """Write up.json, which may fail (disk full, permissions).

        The first write failing is a start failure (nothing could find the environment); a later
        one is said once, its temp file removed, and supervision goes on (it died silently, and
        with it every later restart); the record is right again at the next write that succeeds.
        """
        from ._up import up_path
        from .control import make_token

        control = {"url": self.control_url, "token": make_token(self.secret), "secret": self.secret}
        path = up_path(self.config.state_dir)
        try:
            write_up_record(self.launcher, owner_pid=os.getpid(), control=control)
        except OSError as exc:
            path.with_name(f"{path.name}.{os.getpid()}.tmp").unlink(missing_ok=True)
            problem = f"cannot update {path} ({exc.strerror or exc})"
            if not self._recorded:
                fix = "free some space there" if exc.errno == errno.ENOSPC else "make it writable"
                raise LauncherError(f"{problem}; {fix}, or set another state_dir") from None
            if not self._record_failing:
                self.say(f"up: {problem}; the services stay supervised, and `unified-launcher status` "
                         "asks this process directly")
            self._record_failing = True
            return path
        if self._record_failing:
            self.say(f"up: {path} is up to date again")
        self._recorded, self._record_failing = True, False
        return path

    async def _progress(self) -> None:
        seen: dict[str, str] = {}
        while True:
            for name, handle in self.launcher.services.items():
                if seen.get(name) != handle.state and handle.state != "stopped":
                    seen[name] = handle.state
                    self.say(f"  {name}: {handle.state}")
            await asyncio.sleep(0.05)

    async def _serve_control_api(self) -> None:
        from ._asgi import AppServer, bind
        from .control import create_app

        app = create_app(self, self.secret, self._metrics)
        sock = bind("127.0.0.1", 0)
        port = sock.getsockname()[1]
        self._server = AppServer(app, "127.0.0.1", port, log_level="warning")
        await self._server.start(sock)
        self.control_url = f"http://127.0.0.1:{port}"

    async def run(self) -> None:
        """Supervise until :attr:`stop_event` is set (Ctrl-C, SIGTERM, ``down``)."""
        self._tasks.append(asyncio.ensure_future(self._supervise()))
        if self.follow_logs:
            self._tasks.append(asyncio.ensure_future(self._follow_logs()))
        if self.dev:
            self._start_watching()
        await self.stop_event.wait()

    async def shutdown(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=2)
        if self._server is not None:
            await self._server.stop(timeout=1)
        self.say("stopping ...")
        try:
            await self.launcher.stop()
        finally:
            remove_up_record(self.config.state_dir)
        self.say("stopped")

    # ------------------------------------------------------------------ supervision

    async def restart(self, names: Sequence[str], *, why: str) -> None:
        """Restart ``names`` and their dependents (dependents stop first, start last)."""
        affected = sorted(graph_mod.dependents_closure(self.launcher.config.graph, names))
        running = [n for n in affected if self.launcher.services[n].state != "stopped" or n in names]
        self.say(f"restarting {', '.join(running)} ({why})")
        await self.launcher.stop(running)
        try:
            await self.launcher.start(running, retry_failed=True)
        except LauncherError as exc:
            self.say(str(exc))
        for name in running:
            self.restarts[name] = self.restarts.get(name, 0) + 1
            if self._metrics is not None:
                self._metrics.restarts.labels(name).inc()
        self.record()

    async def stop_one(self, name: str, *, why: str) -> None:
        self.say(f"stopping {name} ({why})")
        await self.launcher.stop([name])
        self.record()

    async def _supervise(self) -> None:
        """Restart a service that died or turned unhealthy (``auto_restart``), with backoff.

        The launcher's health monitor notices both (an exit at once, through a pidfd); its events
        wake this loop, which also looks every 0.25 s (a process without a pidfd to watch).
        """
        loop = asyncio.get_running_loop()
        wake = asyncio.Event()

        def on_event(event: Any) -> None:  # on the launcher's loop thread
            if event.kind in ("died", "unhealthy"):
                loop.call_soon_threadsafe(wake.set)

        unsubscribe = self.launcher.subscribe(on_event)
        failures: dict[str, int] = {}
        try:
            while True:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.25):
                        await wake.wait()
                wake.clear()
                if self._metrics is not None:
                    self._metrics.refresh(self.launcher)
                for name, handle in self.launcher.services.items():
                    problem = self._problem(handle)
                    if problem is None:
                        if handle.state == "running":
                            failures.pop(name, None)
                        continue
                    self.say(f"{self._prefix(name)} service {name} {problem}")
                    if not self.config.auto_restart:
                        if handle.state != "unhealthy":  # unhealthy: left running, it may recover
                            await self.launcher.stop([name])
                            self.record()
                        continue
                    count = failures.get(name, 0)
                    failures[name] = count + 1
                    delay = min(2.0 ** count, MAX_BACKOFF)
                    self.say(f"auto_restart: restarting {name} in {delay:.0f} s")
                    await asyncio.sleep(delay)
                    if self._problem(self.launcher.services[name]) is not None:  # it may have recovered meanwhile
                        await self.restart([name], why=f"it {'died' if 'unhealthy' not in problem else 'was unhealthy'}; "
                                                       f"attempt {count + 1}")
        finally:
            unsubscribe()

    def _problem(self, handle: Any) -> str | None:
        """Why ``handle``'s service needs a restart (it died, or it is unhealthy), or None."""
        from .runners.subprocess import describe_exit

        if handle.state == "died" or (handle.state == "running" and not handle.alive):
            return describe_exit(handle.exit_code)
        if handle.state == "unhealthy":
            stats = self.launcher.monitor.stats_of(handle.name)
            return f"is unhealthy ({stats.consecutive_failures} failed probes; last: {stats.last_probe})"
        return None

    async def _follow_logs(self) -> None:
        """Print every service's new log lines with a coloured ``name |`` prefix.

        Each log stays open while it is followed. A restart writes a new file under the same
        name; the open one is then still the old file (its inode cannot be reused while open,
        which is what ``tail -F`` relies on too), so its last lines are printed before the new.
        """
        log_dir = self.launcher.log_dir
        files: dict[str, BinaryIO] = {}
        partial: dict[str, bytes] = {}

        def show(name: str, fh: BinaryIO, *, final: bool = False) -> None:
            # Bounded: a service that writes faster than the terminal shows is skipped ahead
            # (said so), and a log rotated at its cap (truncated in place) is read from its start.
            size, pos = os.fstat(fh.fileno()).st_size, fh.tell()
            if size < pos:
                fh.seek(0)
            elif size - pos > FOLLOW_MAX_BEHIND:
                fh.seek(size - FOLLOW_MAX_BEHIND)
                partial.pop(name, None)
                self.say(f"{self._prefix(name)} ... {size - pos - FOLLOW_MAX_BEHIND} bytes of output skipped "
                         f"(written faster than shown; the whole log: {fh.name})")
                fh.readline()  # to the next line start
            data = partial.pop(name, b"") + fh.read(FOLLOW_MAX_BEHIND)
            cut = len(data) if final else data.rfind(b"\n") + 1
            if cut == 0 and len(data) >= FOLLOW_MAX_BEHIND:
                cut = len(data)  # a "line" that never ends is shown in pieces, not kept whole
            if cut < len(data):
                partial[name] = data[cut:]
            for line in data[:cut].decode("utf-8", errors="replace").splitlines():
                self.say(f"{self._prefix(name)} {line}")

        try:
            while True:
                for name in sorted(self.config.services):
                    path = log_dir / f"{name}.log"
                    try:
                        inode: int | None = path.stat().st_ino
                    except OSError:
                        inode = None
                    fh = files.get(name)
                    if fh is not None and inode != os.fstat(fh.fileno()).st_ino:
                        show(name, fh, final=True)  # the old file's last lines, then the new file
                        files.pop(name).close()
                        fh = None
                    if fh is None:
                        if inode is None:
                            continue
                        fh = files[name] = open(path, "rb")  # kept open across ticks: see above
                    show(name, fh)
                await asyncio.sleep(0.1)
        finally:
            for fh in files.values():
                fh.close()

    # ------------------------------------------------------------------ dev mode

    def _start_watching(self) -> None:
        from watchdog.events import FileSystemEvent, FileSystemEventHandler
        from watchdog.observers import Observer

        loop = asyncio.get_running_loop()
        changed: asyncio.Queue[str] = asyncio.Queue()
        env = self

        class Handler(FileSystemEventHandler):
            """Restarts ``name`` when a file it watches is written, created, moved or deleted."""

            def __init__(self, name: str, path: Path) -> None:
                self.name, self.path = name, path

            def on_any_event(self, event: FileSystemEvent) -> None:
                # Not "opened" / "closed_no_write": a restarted app reads its own sources, and
                # reacting to that restarted it again, forever.
                if event.is_directory or event.event_type not in CHANGE_EVENTS:
                    return
                paths = [str(event.src_path)] + ([str(event.dest_path)] if event.dest_path else [])
                if any(self._watched(Path(p)) for p in paths):
                    loop.call_soon_threadsafe(changed.put_nowait, self.name)

            def _watched(self, path: Path) -> bool:
                if "__pycache__" in path.parts or path.name.endswith((".pyc", "~", ".swp")):
                    return False
                return path == self.path or self.path in path.parents  # a file, or under a folder

        self._observer = Observer()
        watched = []
        for name in self.launcher.services:
            for path in default_watch_paths(self.config, name):
                path = path.resolve()
                target = path if path.is_dir() else path.parent
                self._observer.schedule(Handler(name, path), str(target), recursive=path.is_dir())
                watched.append(f"{name}: {path}")
        self._observer.start()
        self.say("dev mode: watching " + ("; ".join(watched) if watched else "nothing (set `watch` paths)"))

        async def reload() -> None:
            while True:
                names = {await changed.get()}
                await asyncio.sleep(0.3)  # debounce: an editor's save is several events
                while not changed.empty():
                    names.add(changed.get_nowait())
                await env.restart(sorted(names), why="files changed")

        self._tasks.append(asyncio.ensure_future(reload()))


async def run_up(
    config: LauncherConfig,
    names: Sequence[str] | None,
    *,
    dev: bool,
    on_ready: Callable[[Environment, BaseException | None], None],
    follow_logs: bool = True,
) -> int:
    """`up`'s life: start, report (``on_ready``), supervise until a signal or `down`, stop
    everything. Returns the exit code: 128 + the signal when one cut the start short.

    A signal during the start cancels it at once (it used to wait out the startup_timeout of a
    service whose health check could not pass); what had started is then stopped as usual.
    """
    env = Environment(config, names, dev=dev, follow_logs=follow_logs)
    received: list[int] = []

    def on_signal(sig: int) -> None:
        received.append(sig)
        env.stop_event.set()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # SIGHUP: its terminal closed
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        start = asyncio.ensure_future(env.start())
        stopped = asyncio.ensure_future(env.stop_event.wait())
        await asyncio.wait({start, stopped}, return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        if not start.done():
            start.cancel()
            await asyncio.wait({start})
            if not received:  # up stopped itself: its output's reader went away (`up | head -1`)
                return 0
            on_ready(env, InterruptedError(f"interrupted by {signal.Signals(received[0]).name} while services "
                                           "were starting; stopping what had started"))
            return 128 + received[0]
        try:
            start.result()
        except LauncherError as exc:
            on_ready(env, exc)
            return exc.exit_code
        except OSError as exc:  # one of up's own (the control API's socket, a file): said, not a trace
            on_ready(env, OSError(f"up could not start: {exc}"))
            return 1
        on_ready(env, None)
        await env.run()
        return 0
    finally:
        await env.shutdown()
        env.launcher.close()
