"""Serving ASGI apps with uvicorn without its main loop: fast start, prompt stop.

Used in the test process (single_process mode) and by ``_serve`` (multi_process mode), so both
modes import apps the same way and stop them the same way: close the listener, let in-flight
requests finish, run the lifespan shutdown. uvicorn's own ``Server.shutdown`` waits a fixed
0.1 s plus a 0.1 s main-loop tick; this does not.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import socket
import sys
from pathlib import Path
from typing import Any


class AppImportError(Exception):
    """The ``"module:attribute"`` string does not lead to an ASGI app."""


def load_app(target: str, app_dir: Path | None = None) -> Any:
    """Import ``"module:attribute"``: an ASGI app, a FastAPI APIRouter, or a zero-arg factory."""
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise AppImportError(f'app {target!r} must be written "module:attribute", e.g. "myapp.main:app"')
    if app_dir is not None and str(app_dir) not in sys.path:
        sys.path.insert(0, str(app_dir))
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise AppImportError(
                f"cannot import module '{module_name}' (looked in {app_dir or 'sys.path'}): {exc}"
            ) from exc
        raise
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise AppImportError(f"module '{module_name}' has no attribute '{attr}'" + _candidates(obj, part)) from None
    return as_asgi(obj, target)


def _candidates(owner: Any, missing: str) -> str:
    """'; did you mean ...' from the owner's public attributes that could serve as an app."""
    import difflib

    names = sorted(name for name, value in vars(owner).items() if not name.startswith("_")
                   and callable(value) and not inspect.isclass(value))
    close = difflib.get_close_matches(missing, names, n=1)
    if close:
        return f"; did you mean '{close[0]}'?"
    return f"; it defines: {', '.join(names[:8])}" if names else ""


def as_asgi(obj: Any, target: str = "app") -> Any:
    try:
        from fastapi import APIRouter, FastAPI
    except ImportError:  # pragma: no cover - fastapi is a dependency
        APIRouter = FastAPI = ()  # type: ignore[assignment,misc]
    if isinstance(obj, FastAPI):
        return obj
    if isinstance(obj, APIRouter):
        app = FastAPI()
        app.include_router(obj)
        return app
    if inspect.isfunction(obj) or inspect.ismethod(obj):
        params = [
            p for p in inspect.signature(obj).parameters.values()
            if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
        if not params:
            return as_asgi(obj(), target)
    if callable(obj):
        return obj
    raise AppImportError(f"{target!r} is a {type(obj).__name__}, not an ASGI app, APIRouter or factory")


def bind(host: str, port: int) -> socket.socket:
    """A listening socket, bound before the server starts so a clash is reported precisely."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.listen(2048)
    sock.setblocking(False)
    sock.set_inheritable(False)
    return sock


class LifespanFailed(Exception):
    pass


class AppServer:
    """One uvicorn server on a pre-bound socket, driven without ``Server.main_loop``."""

    def __init__(self, app: Any, host: str, port: int, *, log_level: str = "warning") -> None:
        import uvicorn

        self.config = uvicorn.Config(
            app, host=host, port=port, lifespan="auto", log_config=None,
            log_level=log_level, access_log=False, timeout_graceful_shutdown=5,
        )
        self.server = uvicorn.Server(self.config)
        self.sock: socket.socket | None = None

    async def start(self, sock: socket.socket, timeout: float | None = None) -> None:
        """Run the app's lifespan startup (within ``timeout``: TimeoutError) and serve on ``sock``."""
        config = self.config
        if not config.loaded:
            config.load()
        self.server.lifespan = config.lifespan_class(config)
        self.sock = sock
        try:
            await asyncio.wait_for(self._startup(sock), timeout)
        except LifespanFailed:
            sock.close()
            raise
        except TimeoutError:
            self._cancel_lifespan()
            sock.close()
            raise
        # Headers main_loop would set on its first tick.
        self.server.server_state.default_headers = list(config.encoded_headers)

    async def _startup(self, sock: socket.socket) -> None:
        # uvicorn ends a failed lifespan startup with sys.exit(3). Raised inside the task that
        # wait_for makes, SystemExit would escape the event loop itself and stop its thread.
        try:
            await self.server.startup(sockets=[sock])
        except SystemExit:
            raise LifespanFailed("the app's lifespan startup failed") from None

    def _cancel_lifespan(self) -> None:
        """Cancel the lifespan task uvicorn started and keeps no handle to (LifespanOn.main)."""
        lifespan = self.server.lifespan
        for task in asyncio.all_tasks():
            frame = getattr(task.get_coro(), "cr_frame", None)
            if frame is not None and frame.f_locals.get("self") is lifespan:
                task.cancel()

    async def stop(self, timeout: float = 5.0) -> None:
        server = self.server
        for srv in getattr(server, "servers", []):
            srv.close()
        if self.sock is not None:
            self.sock.close()
        state = server.server_state
        for connection in list(state.connections):
            connection.shutdown()
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        # uvicorn offers no event for "last connection closed": poll briefly (ms, not its 0.1 s).
        while (state.connections or state.tasks) and loop.time() < end:  # noqa: ASYNC110
            await asyncio.sleep(0.001)
        for task in list(state.tasks):
            task.cancel()
        if getattr(server, "started", False) and not server.force_exit:
            await server.lifespan.shutdown()
        server.started = False
