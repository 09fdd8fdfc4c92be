"""The pre-imported spawner: app services forked from a helper that imported uvicorn already.

Starting an app service as a plain subprocess costs an interpreter start plus the import of
uvicorn, FastAPI and pydantic (~0.3-0.4 s here) before the app's own start-up. The helper pays
that once, then forks one child per app service. Each child gets its own session (process
group), environment, working directory, log file and ready pipe (both passed as file
descriptors over the control socket), then runs the same ``_serve`` entry point as a plain
spawn. The helper reports each child's exit status at once, and exits when the launcher closes
the control socket (or dies). The apps' own modules are imported in the child, after its
environment is in place, exactly as in a plain spawn.

``[launcher] preload`` names third-party modules (database drivers, SDKs) for the helper to
import as well, one at a time while no spawn request waits, so a spawn never waits for them;
they are imported with the launcher's environment, so they must not read the apps' settings at
import time.

Helper side: ``python -m pytest_unified_launcher._forkserver FD [MODULE ...]`` (no threads, no
event loop at fork time). Launcher side: :class:`ForkServer`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any

PRELOAD = (
    "uvicorn", "fastapi", "pydantic", "starlette.applications", "pytest_unified_launcher._serve",
    # what uvicorn's Config.load() imports lazily
    "uvicorn.protocols.http.h11_impl", "uvicorn.protocols.http.httptools_impl", "uvicorn.protocols.websockets.auto",
    "uvicorn.protocols.websockets.websockets_impl", "uvicorn.protocols.websockets.wsproto_impl",
    "uvicorn.lifespan.on", "uvicorn.loops.auto", "uvicorn.loops.uvloop", "uvicorn.middleware.proxy_headers",
    "uvicorn.middleware.message_logger", "asyncio", "logging.config", "argparse",
    # what serving a WSGI or an ASGI 2 app adds (_asgi.wrap)
    "a2wsgi", "uvicorn.middleware.asgi2",
)
MAX_FDS = 4
log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- helper side


def _child(request: dict[str, Any], fds: list[int], control: socket.socket) -> None:
    """In the forked child: become the service, then run ``_serve``; never returns."""
    code = 70
    try:
        control.close()
        os.setsid()
        log_fd, ready_fd = fds
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        os.close(devnull)
        os.close(log_fd)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        _name_process(request["env"].get("UNIFIED_LAUNCHER_SERVICE", "app"))
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.set_wakeup_fd(-1)
        sys.argv = ["pytest_unified_launcher._serve", *request["args"], "--ready-fd", str(ready_fd)]
        from pytest_unified_launcher import _serve

        _serve.main(sys.argv[1:])  # ends with os._exit
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        os._exit(code)


def _name_process(service: str) -> None:
    """Show the service in ``ps -o comm``/``top`` (the argv stays the helper's: it was forked)."""
    try:
        with open("/proc/self/comm", "w") as fh:
            fh.write(f"ul-{service}"[:15])
    except OSError:
        pass


def serve_forever(control: socket.socket, preload: list[str]) -> None:
    import gc
    import importlib

    for module in PRELOAD:
        try:
            importlib.import_module(module)
        except ImportError:
            pass  # optional extras (httptools, uvloop, websockets) may be absent
    gc.freeze()  # keep the preloaded objects out of the children's collections (less copy-on-write)
    rfd, wfd = os.pipe()
    os.set_blocking(wfd, False)
    signal.set_wakeup_fd(wfd)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    control.sendall(b'{"op": "ready"}\n')
    buffer = b""
    fds_waiting: list[int] = []  # they arrive with a request's first byte, which may come early
    to_preload, failed = list(preload), {}
    import select

    while True:
        # The user's preload modules are imported one at a time, only while no request waits:
        # a spawn never waits for them (early children import what they need themselves).
        readable, _, _ = select.select([control.fileno(), rfd], [], [], 0 if to_preload else None)
        if not readable and to_preload:
            module = to_preload.pop(0)
            try:
                importlib.import_module(module)
            except Exception as exc:  # whatever a module raises at import, the apps can import it
                failed[module] = f"{type(exc).__name__}: {exc}"
            gc.freeze()
            if not to_preload:
                control.sendall(json.dumps({"op": "preloaded", "failed": failed}).encode() + b"\n")
            continue
        if rfd in readable:
            os.read(rfd, 4096)
            _report_exits(control)
        if control.fileno() in readable:
            try:
                data, fds, _, _ = socket.recv_fds(control, 65536, MAX_FDS)
            except OSError:
                data, fds = b"", []
            if not data:
                return  # the launcher is gone: so are we
            buffer += data
            fds_waiting += fds
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                request = json.loads(line)
                mine, fds_waiting = fds_waiting[:2], fds_waiting[2:]
                pid = os.fork()
                if pid == 0:
                    _child(request, mine, control)
                for fd in mine:
                    os.close(fd)
                # Its start time, read while it cannot have been reaped (we reap it): with the pid,
                # it names this child, so the launcher never signals a reused pid.
                reply = {"op": "spawned", "id": request["id"], "pid": pid, "token": _start_time(pid)}
                control.sendall(json.dumps(reply).encode() + b"\n")


def _start_time(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _report_exits(control: socket.socket) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        code = os.waitstatus_to_exitcode(status)
        control.sendall(json.dumps({"op": "exit", "pid": pid, "code": code}).encode() + b"\n")


# --------------------------------------------------------------------------- launcher side


class RemoteProcess:
    """A forked app service, shaped like ``asyncio.subprocess.Process`` (pid, returncode, wait)."""

    def __init__(self, pid: int, token: str | None = None) -> None:
        self.pid = pid
        #: Its start time at fork (see ``_process.start_time``): no signal once that changed.
        self.token = token
        self.returncode: int | None = None
        self._exited: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    def _set_exit(self, code: int) -> None:
        self.returncode = code
        if not self._exited.done():
            self._exited.set_result(code)

    async def wait(self) -> int:
        return await asyncio.shield(self._exited)


class ForkServer:
    """The launcher's handle on one helper process (started lazily, shared by all apps)."""

    def __init__(self, log_path: Path, preload: tuple[str, ...] = ()) -> None:
        self.log_path = log_path
        self.preload = preload
        #: Set once the helper has imported every ``preload`` module it could.
        self.preloaded = asyncio.Event()
        self._sock: socket.socket | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._ready: asyncio.Future[None] | None = None
        self._spawns: dict[int, asyncio.Future[tuple[int, str | None]]] = {}
        self._procs: dict[int, RemoteProcess] = {}
        self._early_exits: dict[int, int] = {}
        self._next_id = 0
        self._reader: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self.failed: str | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    async def start(self, env: dict[str, str]) -> None:
        """Start the helper with ``env``: the launcher's, with its owner marker, which every child
        it forks shows as its own (/proc shows the environment a process was exec'd with), so a
        child forked just before the launcher is killed is still found and reaped."""
        if self._ready is not None:
            return
        loop = asyncio.get_running_loop()
        self._ready = loop.create_future()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock = ours
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            self._proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "pytest_unified_launcher._forkserver", str(theirs.fileno()), *self.preload,
                stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log, pass_fds=[theirs.fileno()],
                env=env, start_new_session=True,
            )
        finally:
            theirs.close()
            os.close(log)
        ours.setblocking(False)
        self._reader = asyncio.ensure_future(self._read())

    async def wait_ready(self, timeout: float) -> bool:
        assert self._ready is not None
        try:
            async with asyncio.timeout(timeout):
                await asyncio.shield(self._ready)
        except (TimeoutError, ConnectionError, OSError) as exc:
            self.failed = self.failed or f"the pre-imported spawner did not start ({exc!r})"
            return False
        return self.failed is None

    async def _read(self) -> None:
        assert self._sock is not None
        loop = asyncio.get_running_loop()
        buffer = b""
        try:
            while True:
                data = await loop.sock_recv(self._sock, 65536)
                if not data:
                    break
                buffer += data
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    self._dispatch(json.loads(line))
        except (OSError, ValueError) as exc:
            self.failed = f"the pre-imported spawner broke ({exc!r})"
        self.failed = self.failed or "the pre-imported spawner exited"
        if self._ready is not None and not self._ready.done():
            self._ready.set_exception(ConnectionError(self.failed))
        for fut in self._spawns.values():
            if not fut.done():
                fut.set_exception(ConnectionError(self.failed))

    def _dispatch(self, message: dict[str, Any]) -> None:
        op = message["op"]
        if op == "ready" and self._ready is not None and not self._ready.done():
            self._ready.set_result(None)
        elif op == "preloaded":
            for module, error in message["failed"].items():
                log.warning("[launcher] preload: the pre-imported spawner could not import %s (%s); "
                            "each app imports it itself", module, error)
            self.preloaded.set()
        elif op == "spawned":
            fut = self._spawns.pop(message["id"], None)
            if fut is not None and not fut.done():
                fut.set_result((message["pid"], message.get("token")))
        elif op == "exit":
            proc = self._procs.pop(message["pid"], None)
            if proc is not None:
                proc._set_exit(message["code"])
            else:
                self._early_exits[message["pid"]] = message["code"]

    async def spawn(self, args: list[str], *, env: dict[str, str], cwd: Path, log_fd: int, ready_fd: int) -> RemoteProcess:
        """Fork one app service; ``args`` are ``_serve``'s (without ``--ready-fd``)."""
        assert self._sock is not None
        if self.failed:
            raise ConnectionError(self.failed)
        async with self._lock:
            self._next_id += 1
            request_id = self._next_id
            fut: asyncio.Future[tuple[int, str | None]] = asyncio.get_running_loop().create_future()
            self._spawns[request_id] = fut
            payload = json.dumps({"id": request_id, "args": args, "env": env, "cwd": str(cwd)}).encode() + b"\n"
            self._sock.setblocking(True)
            try:
                socket.send_fds(self._sock, [payload], [log_fd, ready_fd])
            finally:
                self._sock.setblocking(False)
            pid, token = await fut
        proc = RemoteProcess(pid, token)
        if pid in self._early_exits:
            proc._set_exit(self._early_exits.pop(pid))
        else:
            self._procs[pid] = proc
        return proc

    async def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._reader is not None:
            self._reader.cancel()
        if self._proc is not None and self._proc.returncode is None:
            try:
                async with asyncio.timeout(2):
                    await self._proc.wait()
            except TimeoutError:
                self._proc.kill()
                await self._proc.wait()


if __name__ == "__main__":
    serve_forever(socket.socket(fileno=int(sys.argv[1])), sys.argv[2:])
