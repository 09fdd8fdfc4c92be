"""Health probes and the one wait loop that uses them.

A probe answers ``None`` when healthy, else a short reason ("connection refused"). The wait
loop probes on a short backoff (2 ms growing to 50 ms), probes at once when the service writes
output or signals readiness, and fails at once when the process exits: a ready service is
noticed within milliseconds without blind polling stealing the CPU that starting services need.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import os
import re
import signal
import socket
import tempfile
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from . import _timing
from ._http import Fetch, fetch_minimal, judge, tls_context
from .config import HealthCheck, ServiceConfig


class Probe(Protocol):
    async def check(self) -> str | None: ...


def _reason(exc: BaseException) -> str:
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return "timed out"
    if isinstance(exc, ConnectionRefusedError) or "Connect call failed" in str(exc):
        return "connection refused"
    return str(exc) or type(exc).__name__


#: How long a server may answer 404/405 on the health path before that counts as a wrong path
#: (some routers answer 404 for a moment while their routes are registered).
WRONG_PATH_SECONDS = 1.0


class HttpProbe:
    """A GET that passes on the check's statuses (any 2xx by default) and body pattern, through
    ``fetch``: the minimal client while starting, the monitor's shared session afterwards."""

    def __init__(self, check: HealthCheck, fetch: Fetch | None = None) -> None:
        assert check.url is not None
        self.check_spec, self.url, self.timeout = check, check.url, check.timeout
        self.fetch: Fetch = fetch or fetch_minimal
        self.headers = dict(check.headers)
        self.tls = tls_context(check.ca_file, check.cert, check.key) if (check.ca_file or check.cert) else None
        self._not_found_since: float | None = None

    async def check(self) -> str | None:
        spec = self.check_spec
        try:
            answer = await self.fetch(self.url, headers=self.headers, timeout=self.timeout, tls=self.tls,
                                      read_body=spec.body is not None)
        except Exception as exc:  # whatever goes wrong, a probe answers with a reason
            return _reason(exc)
        verdict = judge(answer, url=self.url, status=spec.status, body=spec.body)
        wrong_path = answer.status in (404, 405) and verdict is not None
        if not wrong_path:
            self._not_found_since = None
            return verdict
        # The commonest mistake: a path the app does not serve.
        now = _timing.monotonic()
        if self._not_found_since is None:
            self._not_found_since = now
        fix = "the server answers, but not on that path; check the service's health = { http = ... }"
        if now - self._not_found_since >= WRONG_PATH_SECONDS:  # waiting out the startup_timeout would only hide it
            raise ProbeUnusable(f"GET {self.url} answered HTTP {answer.status} for {WRONG_PATH_SECONDS:.1f} s: {fix}")
        return f"GET {self.url} answered HTTP {answer.status}: {fix}"


class TcpProbe:
    """Healthy when a connection is accepted. A bare non-blocking socket, not asyncio streams:
    the monitor runs it every few seconds for the whole session, and a stream pair (transport,
    protocol, reader, writer) costs ~3x the CPU of the connect itself."""

    def __init__(self, host: str, port: int, timeout: float, *, settle: float = 0.0) -> None:
        self.host, self.port, self.timeout = host, port, timeout
        #: Seconds an accepted connection must stay open (or answer): docker publishes a port
        #: through a proxy that accepts before anything listens in the container, then closes.
        self.settle = settle
        self._address: tuple[Any, ...] | None = None
        self._family = socket.AF_INET

    async def check(self) -> str | None:
        loop = asyncio.get_running_loop()
        try:
            if self._address is None:  # resolved once (a name like localhost costs a lookup)
                info = await loop.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM)
                self._family, self._address = info[0][0], info[0][4]
            with socket.socket(self._family, socket.SOCK_STREAM) as sock:
                sock.setblocking(False)
                # On loopback the kernel answers a connect at once (accepted or refused): no
                # event-loop round trip; only a connect still in progress is waited for.
                err = sock.connect_ex(self._address)
                if err == errno.EINPROGRESS:
                    async with asyncio.timeout(self.timeout):
                        await loop.sock_connect(sock, self._address)
                elif err:
                    raise OSError(err, os.strerror(err))
                if self.settle:
                    return await self._stays_open(loop, sock)
        except (TimeoutError, OSError) as exc:
            return _reason(exc)
        return None

    async def _stays_open(self, loop: asyncio.AbstractEventLoop, sock: socket.socket) -> str | None:
        """None when the connection is still open after ``settle`` seconds, or answered."""
        try:
            async with asyncio.timeout(self.settle):
                data = await loop.sock_recv(sock, 1)
        except TimeoutError:
            return None
        if data:
            return None  # a greeting (SMTP, MySQL): someone listens
        return (f"{self.host}:{self.port} accepted the connection and closed it at once: the engine's port "
                "proxy answers, but nothing listens on the container's port yet")


@dataclass(frozen=True)
class ExecTarget:
    """Where an ``exec`` probe runs: ``program exec container ...``, with the engine's env."""

    program: str
    container: str
    env: Mapping[str, str]


class ExecProbe:
    """``health.exec``: the command inside the container, through the engine.

    Never more than one at a time: an engine's ``exec`` that is killed leaves its command
    running inside the container (and a conmon on the host), so a probe that outlives its
    timeout is left to finish, and until it has, the next probes fail without starting another.
    """

    def __init__(self, target: ExecTarget, argv: tuple[str, ...], timeout: float) -> None:
        self.target, self.argv, self.timeout = target, argv, timeout
        self._running: asyncio.subprocess.Process | None = None

    async def check(self) -> str | None:
        if self._running is not None and self._running.returncode is None:
            return "the previous exec probe is still running in the container"
        try:
            self._running = await asyncio.create_subprocess_exec(
                self.target.program, "exec", self.target.container, *self.argv, stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL, env=dict(self.target.env))
        except OSError as exc:
            raise ProbeUnusable(f"cannot run the container engine {self.target.program}: {exc.strerror}") from None
        try:
            async with asyncio.timeout(self.timeout):
                code = await self._running.wait()
        except TimeoutError:
            return f"exec probe timed out after {self.timeout} s"
        return None if code == 0 else f"exec probe exited with code {code}"

    async def close(self) -> None:
        """The probing is over (the service stops, the watch ends): an exec still running is
        ended and collected (its container is going away with whatever it left inside)."""
        proc = self._running
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5.0):
                    await proc.wait()


class CommandProbe:
    def __init__(self, argv: tuple[str, ...], timeout: float, env: Mapping[str, str], cwd: Path) -> None:
        self.argv, self.timeout, self.env, self.cwd = argv, timeout, env, cwd

    async def check(self) -> str | None:
        from ._process import cannot_run, run_to_end

        try:
            code = await run_to_end(
                self.argv, env=self.env, cwd=self.cwd, log_file=asyncio.subprocess.DEVNULL,
                timeout=self.timeout, stop_signal=signal.SIGKILL,  # a probe holds nothing to clean up
            )
        except (FileNotFoundError, PermissionError) as exc:
            raise ProbeUnusable(cannot_run("probe command", self.argv[0], exc, self.cwd)) from None
        except TimeoutError:
            return f"probe command timed out after {self.timeout} s"
        return None if code == 0 else f"probe command exited with code {code}"


class LogProbe:
    """Healthy once ``pattern`` appears in the output written since the service started."""

    def __init__(self, path: Path, pattern: str) -> None:
        self.path, self.regex = path, re.compile(pattern)
        self._offset = 0
        self._carry = ""

    async def check(self) -> str | None:
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self._offset)
                data = fh.read()
        except OSError:
            data = b""
        self._offset += len(data)
        text = self._carry + data.decode("utf-8", errors="replace")
        if self.regex.search(text):
            return None
        self._carry = text[-4096:]
        return f"no output matched /{self.regex.pattern}/ yet"


class AliveProbe:
    """Ready once the process has stayed alive for ``seconds``."""

    def __init__(self, since: float, seconds: float = 0.5) -> None:
        self.since, self.seconds = since, seconds

    async def check(self) -> str | None:
        left = self.since + self.seconds - _timing.monotonic()
        if left > 0:
            await asyncio.sleep(left)
        return None


class NotifySocket:
    """A NOTIFY_SOCKET (sd_notify) for one start of a service: READY=1 sets :attr:`ready`.

    Each start gets a new folder of its own under ``root`` (the session's scratch root), made by
    the launcher (0700, or 0710 with the group of ``ids``, the service's user): the service can
    reach the socket but not replace it, so nobody can squat its name or swap it for a link
    between the bind and the chmod. A new folder per start, not one per service: when a shared
    xdist worker restarts a service another worker started, the other one closing its socket
    must not remove the new instance's (redis-server then reported "sd_notify: -2" and never
    became ready).
    """

    def __init__(self, root: Path, service: str, *, ids: tuple[int, int] | None = None) -> None:
        folder = Path(tempfile.mkdtemp(prefix=f".notify-{service}-", dir=root))
        self.path = folder / "notify.sock"
        self.ready = asyncio.Event()
        self.status = ""
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            if ids is not None:
                os.chown(folder, -1, ids[1])  # mkdtemp made it 0700, where only we can write
                os.chmod(folder, 0o710)
            self.sock.bind(str(self.path))
            os.chmod(self.path, 0o777)  # safe: nobody else can write the folder; the folder gates access
        except OSError:
            self.sock.close()
            self._remove()
            raise
        self.sock.setblocking(False)
        asyncio.get_running_loop().add_reader(self.sock.fileno(), self._read)

    def _read(self) -> None:
        try:
            data = self.sock.recv(4096).decode("utf-8", errors="replace")
        except OSError:
            return
        for line in data.splitlines():
            if line == "READY=1":
                self.ready.set()
            elif line.startswith("STATUS="):
                self.status = line[7:]

    def close(self) -> None:
        try:
            asyncio.get_running_loop().remove_reader(self.sock.fileno())
        except RuntimeError:
            pass
        self.sock.close()
        self._remove()

    def _remove(self) -> None:
        for remove, target in ((os.unlink, self.path), (os.rmdir, self.path.parent)):
            try:
                remove(target)
            except OSError:
                pass


class _ReadyNow:
    async def check(self) -> str | None:
        return None


def make_probe(
    svc: ServiceConfig,
    check: HealthCheck,
    *,
    log_path: Path | None,
    env: Mapping[str, str],
    spawned_at: float,
    notify: NotifySocket | None = None,
    fetch: Fetch | None = None,
    container: ExecTarget | None = None,
    tcp_settle: float = 0.0,
) -> Probe:
    """The probe of ``check``; ``container``: where an ``exec`` runs; ``tcp_settle``: see
    :attr:`TcpProbe.settle`."""
    if check.kind == "http":
        return HttpProbe(check, fetch)
    if check.kind == "tcp":
        assert svc.port is not None
        return TcpProbe(svc.host, svc.port, check.timeout, settle=tcp_settle)
    if check.kind == "command":
        return CommandProbe(check.argv, check.timeout, env, svc.cwd)
    if check.kind == "exec":
        if container is None:
            return _NoContainer()
        return ExecProbe(container, check.argv, check.timeout)
    if check.kind == "log":
        assert log_path is not None and check.pattern is not None
        return LogProbe(log_path, check.pattern)
    if check.kind == "notify":
        return _NotifyProbe(notify)
    return AliveProbe(spawned_at)


class _NoContainer:
    """An ``exec`` probe of a service whose container is not known (an adopted pid that is no
    engine process of ours): it fails, it never runs anything."""

    async def check(self) -> str | None:
        return "its container is not known (the recorded process is not a container of this launcher)"


class _NotifyProbe:
    def __init__(self, notify: NotifySocket | None) -> None:
        self.notify = notify

    async def check(self) -> str | None:
        if self.notify is not None and self.notify.ready.is_set():
            return None
        status = self.notify.status if self.notify else ""
        return "no READY=1 on NOTIFY_SOCKET yet" + (f" (status: {status})" if status else "")


#: The seed's limit: at most this many probes of one service in any one second, startup included.
MAX_PROBES_PER_SECOND = 10


class ProbeRate:
    """At most ``limit`` probes in any ``window`` seconds (a sliding window), shared by a
    service's startup wait and its monitor: the fast startup backoff spends the first probes
    where a service is most likely to turn ready, and nobody's server (an external ``url`` in
    particular) is ever probed faster than that."""

    def __init__(self, limit: int = MAX_PROBES_PER_SECOND, window: float = 1.0) -> None:
        self.window = window
        self._times: collections.deque[float] = collections.deque(maxlen=limit)

    def delay(self) -> float:
        """Seconds until the next probe is allowed (0: now)."""
        if len(self._times) < (self._times.maxlen or 0):
            return 0.0
        return max(0.0, self._times[0] + self.window - _timing.monotonic())

    def record(self) -> None:
        """Count a probe as it ends: its request reached the server before that, so the server
        never sees more than ``limit`` in a window either, however late the first one arrived."""
        self._times.append(_timing.monotonic())

    async def wait(self) -> None:
        """Wait until a probe is allowed (then probe, then :meth:`record`)."""
        wait = self.delay()
        if wait > 0:
            await asyncio.sleep(wait)


class ProbeUnusable(Exception):
    """The probe itself cannot work (its program is missing or not executable): retrying until
    the timeout would only hide that."""


class HealthTimeout(Exception):
    def __init__(self, timeout: float, last: str) -> None:
        super().__init__(timeout, last)
        self.timeout, self.last = timeout, last


class ProcessExited(Exception):
    def __init__(self, code: int | None) -> None:
        super().__init__(code)
        self.code = code


async def wait_healthy(
    probe: Probe,
    *,
    deadline: float,
    timeout: float,
    exited: asyncio.Future[Any] | None = None,
    exit_code: Callable[[], int | None] = lambda: None,
    signals: tuple[asyncio.Event, ...] = (),
    log_path: Path | None = None,
    first_delay: float = 0.002,
    max_delay: float = 0.1,
    not_probed: str | None = None,
    rate: ProbeRate | None = None,
) -> None:
    """Probe until healthy; raise :class:`ProcessExited` at once or :class:`HealthTimeout`
    (or the probe's :class:`ProbeUnusable`, at once). ``not_probed``: what the timeout says when
    the deadline passed before the first probe (the wait for a ready signal used it all).

    Between probes it sleeps on a backoff, but wakes early when the process exits, when one of
    ``signals`` is set (a ready pipe, sd_notify) or when the log file grows; ``rate`` caps the
    probes (:class:`ProbeRate`).
    """
    rate = rate or ProbeRate()
    delay = first_delay
    last = not_probed or "not probed yet"
    log_size = _size(log_path)
    while True:
        if exited is not None and exited.done():
            raise ProcessExited(exit_code())
        remaining = deadline - _timing.monotonic()
        if remaining <= 0:
            raise HealthTimeout(timeout, last)
        held = rate.delay()
        if held > 0:  # probed enough this second: wait (waking on an exit), then look again
            await _wait_any(min(held, remaining), exited, ())
            continue
        try:
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for loses a cancel (Ctrl-C,
            # SIGTERM to `up`) that lands as the probe finishes, and the wait went on to the
            # startup_timeout (a fast refused TCP probe made that likely under load).
            async with asyncio.timeout(remaining):
                result = await _first(probe.check(), exited)
        except TimeoutError:
            raise HealthTimeout(timeout, last if last != "not probed yet" else "probe timed out") from None
        finally:
            rate.record()
        if result is _EXITED:
            raise ProcessExited(exit_code())
        if result is None:
            return
        last = str(result)
        # Sleep until the next probe is due, waking early on exit, new output, or a signal that
        # arrives meanwhile (one already received must not turn the backoff into a hot loop).
        wake_at = min(_timing.monotonic() + delay, deadline)
        delay = min(delay * 2, max_delay)
        pending = tuple(ev for ev in signals if not ev.is_set())
        while True:
            left = wake_at - _timing.monotonic()
            if left <= 0:
                break
            if any(ev.is_set() for ev in pending):
                break
            if exited is not None and exited.done():
                break
            await _wait_any(min(left, 0.005), exited, pending)
            size = _size(log_path)
            if size != log_size:
                log_size = size
                delay = first_delay
                break


_EXITED = object()


async def _first(check: Awaitable[str | None], exited: asyncio.Future[Any] | None) -> object:
    """The probe's answer, or ``_EXITED`` if the process exits first."""
    if exited is None:
        return await check
    task = asyncio.ensure_future(check)
    done, _ = await asyncio.wait({task, exited}, return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        return task.result()
    task.cancel()
    try:
        await task
    except BaseException:
        pass
    return _EXITED


async def _wait_any(seconds: float, exited: asyncio.Future[Any] | None, signals: tuple[asyncio.Event, ...]) -> None:
    """Sleep ``seconds``, or less if the process exits or one of ``signals`` is set."""
    if exited is None and not signals:
        await asyncio.sleep(seconds)
        return
    tasks: list[asyncio.Future[Any]] = [asyncio.ensure_future(asyncio.sleep(seconds))]
    tasks += [asyncio.ensure_future(ev.wait()) for ev in signals]
    others: set[asyncio.Future[Any]] = set(tasks)
    if exited is not None:
        others.add(exited)
    try:
        await asyncio.wait(others, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()


def _size(path: Path | None) -> int:
    if path is None:
        return -1
    try:
        return os.stat(path).st_size
    except OSError:
        return -1
