"""Serving ASGI apps with uvicorn without its main loop: fast start, prompt stop.

Used in the test process (single_process mode) and by ``_serve`` (multi_process mode), so both
modes import apps the same way and stop them the same way: close the listener, let in-flight
requests finish, run the lifespan shutdown. uvicorn's own ``Server.shutdown`` waits a fixed
0.1 s plus a 0.1 s main-loop tick; this does not.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import inspect
import re
import socket
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal


class AppImportError(Exception):
    """The ``"module:attribute"`` string does not lead to an app the launcher can serve."""


#: What an app speaks. ``interface = "asgi"`` lets detection pick ASGI 2 or 3.
Interface = Literal["asgi3", "asgi2", "wsgi"]


def load_app(target: str, app_dir: Path | None = None, interface: str | None = None) -> Any:
    """Import ``"module:attribute"`` and return it as an ASGI 3 app ready for uvicorn.

    The attribute may be an ASGI app (3 or 2), a WSGI app (served through a2wsgi), a FastAPI
    APIRouter, or a zero-argument factory returning one; ``interface`` ("asgi"/"wsgi") overrides
    the detection.
    """
    app, kind = resolve_app(import_target(target, app_dir), target, interface)
    return wrap(app, kind)


def import_target(target: str, app_dir: Path | None = None) -> Any:
    """The object ``"module:attribute"`` names, imported from ``app_dir`` first."""
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
    return obj


def _candidates(owner: Any, missing: str) -> str:
    """'; did you mean ...' from the owner's public attributes that could serve as an app."""
    import difflib

    names = sorted(name for name, value in vars(owner).items() if not name.startswith("_")
                   and callable(value) and not inspect.isclass(value))
    close = difflib.get_close_matches(missing, names, n=1)
    if close:
        return f"; did you mean '{close[0]}'?"
    return f"; it defines: {', '.join(names[:8])}" if names else ""


def resolve_app(obj: Any, target: str = "app", interface: str | None = None) -> tuple[Any, Interface]:
    """The app behind ``obj`` (a router wrapped, a factory called) and the interface it speaks."""
    try:
        from fastapi import APIRouter, FastAPI
    except ImportError:  # pragma: no cover - fastapi is a dependency
        APIRouter = FastAPI = ()  # type: ignore[assignment,misc]
    if isinstance(obj, FastAPI):
        return obj, "asgi3"
    if isinstance(obj, APIRouter):
        app = FastAPI()
        app.include_router(obj)
        return app, "asgi3"
    if (inspect.isfunction(obj) or inspect.ismethod(obj)) and _positional(obj) == 0:
        return resolve_app(obj(), target, interface)  # a factory
    if not callable(obj):
        raise AppImportError(f"{target!r} is a {type(obj).__name__}, not an ASGI app, a WSGI app, an APIRouter "
                             "or a factory returning one")
    detected, why = detect_interface(obj)
    if interface == "wsgi":
        if detected in ("asgi3", "asgi2") and _is_async(obj):
            raise AppImportError(f"{target!r} has interface = \"wsgi\" but {why}, which makes it ASGI; "
                                 "remove interface = \"wsgi\"")
        return obj, "wsgi"
    if interface == "asgi":
        return obj, "asgi2" if detected == "asgi2" else "asgi3"
    if detected is None:
        raise AppImportError(f"{target!r} is neither an ASGI nor a WSGI app: {why}; an ASGI app is called as "
                             "(scope, receive, send), a WSGI app as (environ, start_response); if it is one, "
                             "say which with interface = \"asgi\" or \"wsgi\" on the service")
    return obj, detected


def detect_interface(obj: Any) -> tuple[Interface | None, str]:
    """ASGI 3, ASGI 2 or WSGI, from how ``obj`` is called, and the evidence, for messages.

    uvicorn's ``interface="auto"`` only asks whether the callable is a coroutine function and
    otherwise assumes ASGI 2, so a Flask app gets ASGI calls and fails on every request. Here the
    positional parameters decide: (scope, receive, send) is ASGI 3, (environ, start_response)
    WSGI (Flask, Django's WSGIHandler, Bottle, Falcon, werkzeug middleware), (scope) ASGI 2; a
    class is judged by its constructor (ASGI 2 and WSGI allow an app class instantiated per call).
    """
    what = "a class" if inspect.isclass(obj) else "a function" if inspect.isroutine(obj) else f"a {type(obj).__name__}"
    count = _positional(obj)
    if count is None:
        # *args or an unreadable signature (a C extension): the remaining evidence is by name.
        if _is_async(obj):
            return "asgi3", f"it is {what} with an async __call__"
        if callable(getattr(obj, "wsgi_app", None)):
            return "wsgi", f"it is {what} with a wsgi_app method (Flask's shape)"
        return None, f"it is {what} whose parameters cannot be read (*args, or compiled)"
    takes = f"it is {what} called with {count} positional argument{'' if count == 1 else 's'}"
    if count == 3:
        return "asgi3", takes
    if count == 2 and not _is_async(obj):
        return "wsgi", takes
    if count == 1 and not (_is_async(obj) and not inspect.isclass(obj)):
        return "asgi2", takes
    return None, takes + (" (async)" if _is_async(obj) else "")


def _positional(obj: Any) -> int | None:
    """How many positional arguments calling ``obj`` needs; None if it takes *args or is unreadable."""
    try:
        signature = inspect.signature(obj)
    except (TypeError, ValueError):
        return None
    count = 0
    for p in signature.parameters.values():
        if p.kind is p.VAR_POSITIONAL:
            return None
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty:
            count += 1
    return count


def _is_async(obj: Any) -> bool:
    """Whether calling ``obj`` runs a coroutine (an async function, or an async ``__call__``)."""
    while isinstance(obj, functools.partial):
        obj = obj.func
    if inspect.isclass(obj):
        return hasattr(obj, "__await__")
    call = obj if inspect.isroutine(obj) else inspect.getattr_static(type(obj), "__call__", None)
    return inspect.iscoroutinefunction(call) or inspect.iscoroutinefunction(getattr(call, "__wrapped__", None))


def wrap(app: Any, kind: Interface) -> Any:
    """``app`` as ASGI 3: WSGI through a2wsgi (threads), ASGI 2 through uvicorn's adapter."""
    if kind == "wsgi":
        from a2wsgi import WSGIMiddleware

        return WSGIMiddleware(app)
    if kind == "asgi2":
        from uvicorn.middleware.asgi2 import ASGI2Middleware

        return ASGI2Middleware(app)
    return app


def is_django(obj: Any) -> bool:
    """Whether ``obj`` is one of Django's own handlers (WSGIHandler, ASGIHandler)."""
    return type(obj).__module__.startswith("django.")


#: Why a Django app cannot run in a process where pytest-django guards the database.
DJANGO_GUARD = "pytest-django blocks database access in the test process"
_IMPORTS_DJANGO = re.compile(rb"^[ \t]*(?:from[ \t]+django[ \t.]|import[ \t]+django\b)", re.MULTILINE)


def pytest_django_guard() -> bool:
    """Whether pytest-django guards the database in this process: it is loaded and has Django
    configured (it blocks ``ensure_connection`` for every thread outside ``django_db`` tests)."""
    conf = sys.modules.get("django.conf")
    if "pytest_django.plugin" not in sys.modules or conf is None:
        return False
    try:
        return bool(conf.settings.configured)
    except Exception:  # a broken settings module: pytest-django reports that itself
        return False


def is_django_app(target: str, app_dir: Path | None = None, env: dict[str, str] | None = None) -> bool:
    """Whether ``"module:attribute"`` is a Django app, judged without importing it: the module is
    Django's own, the service sets DJANGO_SETTINGS_MODULE, or the module's source imports django."""
    module_name = target.partition(":")[0]
    if module_name == "django" or module_name.startswith("django.") or "DJANGO_SETTINGS_MODULE" in (env or {}):
        return True
    from importlib.machinery import PathFinder

    path = [str(app_dir)] if app_dir is not None else []
    spec = None
    parts = module_name.split(".")
    for i in range(len(parts)):
        try:
            spec = PathFinder.find_spec(".".join(parts[: i + 1]), path + (sys.path if i == 0 else []))
        except (ImportError, ValueError):
            return False
        if spec is None:
            return False
        path = list(spec.submodule_search_locations or [])
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return False
    try:
        with open(spec.origin, "rb") as fh:
            return _IMPORTS_DJANGO.search(fh.read(1 << 20)) is not None
    except OSError:
        return False


def django_guard_reason(services: Iterable[Any], app_dir: Path | None) -> str | None:
    """Why app services must run as subprocesses here: the first Django app, when pytest-django
    guards this process's database (in-process it would answer every request 500); else None."""
    if not pytest_django_guard():
        return None
    for svc in sorted(services, key=lambda s: s.name):
        if svc.kind == "app" and svc.app and is_django_app(svc.app, app_dir, svc.env):
            return f"app '{svc.name}' is a Django app, and {DJANGO_GUARD}"
    return None


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
    """One uvicorn server on a pre-bound socket, driven without ``Server.main_loop``.

    ``app`` is ASGI 3, as :func:`load_app` returns it (a WSGI app comes wrapped in a2wsgi).
    """

    def __init__(self, app: Any, host: str, port: int, *, log_level: str = "warning") -> None:
        import uvicorn

        self.config = uvicorn.Config(
            app, host=host, port=port, interface="asgi3", lifespan="auto", log_config=None,
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
            async with asyncio.timeout(timeout):
                await self._startup(sock)
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
        # uvicorn ends a failed lifespan startup with sys.exit(3). Raised in a task, SystemExit
        # would escape the event loop itself and stop its thread.
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
        executor = getattr(self.config.app, "executor", None)  # a2wsgi's threads for a WSGI app
        if executor is not None and hasattr(executor, "shutdown"):
            executor.shutdown(wait=False, cancel_futures=True)
