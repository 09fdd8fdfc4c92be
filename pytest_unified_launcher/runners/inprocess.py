"""In-process app services (single_process mode): uvicorn servers on the launcher's loop.

A WSGI app (Flask, Django's ``get_wsgi_application()``) is served through a2wsgi, its requests
on a2wsgi's worker threads.

The app is imported in the test process, after its ``env`` is put in ``os.environ``, so
breakpoints and coverage work in app code. Each server has its own pre-bound port.
"""

from __future__ import annotations

import contextvars
import logging
import os
import sys
from pathlib import Path
from typing import Any

from .. import _timing
from ..errors import ServiceStartupError
from ..health import HealthTimeout, ProbeUnusable, make_probe, wait_healthy
from . import Runner

_current: contextvars.ContextVar[InProcessRunner | None] = contextvars.ContextVar(
    "unified_launcher_inprocess_service", default=None
)


class _ServiceLogHandler(logging.Handler):
    """Writes uvicorn's records to the log file of the service whose task logged them."""

    def emit(self, record: logging.LogRecord) -> None:
        runner = _current.get()
        if runner is None:
            return
        try:
            with open(runner.log_path, "a", encoding="utf-8") as fh:
                fh.write(self.format(record) + "\n")
        except OSError:
            pass


_handler: _ServiceLogHandler | None = None


def _install_handler() -> None:
    global _handler
    if _handler is None:
        _handler = _ServiceLogHandler()
        _handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        logging.getLogger("uvicorn").addHandler(_handler)


class InProcessRunner(Runner):
    kind = "in_process"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.server: Any = None
        self._stopped = False

    @property
    def log_path(self) -> Path:
        return self.ctx.log_dir / self.svc.log_name

    def alive(self) -> bool:
        return self.server is not None and not self._stopped

    def _fail(self, cause: str, **kwargs: Any) -> ServiceStartupError:
        return ServiceStartupError(self.svc.name, cause, log_tail=self.logs(20), **kwargs)

    async def start(self, deadline: float) -> None:
        from .._asgi import (
            DJANGO_GUARD, AppImportError, AppServer, LifespanFailed, bind, import_target, is_django,
            pytest_django_guard, resolve_app, wrap,
        )

        svc = self.svc
        assert svc.app is not None and svc.port is not None
        _current.set(self)
        _install_handler()
        os.close(self._open_log())
        svc.tmp.mkdir(parents=True, exist_ok=True)
        os.environ.update(svc.env)
        self.spawned_at = _timing.monotonic()
        self._check_stale_imports()
        before = set(sys.modules)
        try:
            app, interface = resolve_app(import_target(svc.app, self.ctx.root), svc.app, svc.interface)
        except AppImportError as exc:
            raise self._fail(str(exc)) from None
        except Exception as exc:
            import traceback

            with open(self.log_path, "a", encoding="utf-8") as fh:
                traceback.print_exc(file=fh)
            raise self._fail(f"importing {svc.app!r} raised {type(exc).__name__}: {exc}") from None
        from .._imports import record_imports

        record_imports(svc.name, svc.app, self.ctx.root, before, sys.modules, os.environ)
        if is_django(app) and pytest_django_guard():  # what auto's look at the source could not see
            raise self._fail(f"{svc.app!r} is a Django app, and {DJANGO_GUARD}, so it would answer every request "
                             'with an error; run it as a subprocess: mode = "multi_process"')
        app = wrap(app, interface)
        imported_in = _timing.monotonic() - self.spawned_at
        if _timing.monotonic() > deadline:
            # The import ran on the launcher's loop, as under uvicorn, so nothing could cut it short.
            raise self._fail(
                f"importing {svc.app!r} took {imported_in:.1f} s, over its startup_timeout of "
                f"{svc.startup_timeout:.1f} s (does the module connect to something at import time? "
                "that belongs in the app's lifespan)", timeout=svc.startup_timeout,
            )
        try:
            sock = bind(svc.host, svc.port)
        except OSError as exc:
            from .subprocess import port_holder

            holder = port_holder(svc.port)
            err = self._fail(
                f"port {svc.port} already in use" + (f" by {holder}" if holder else "")
                + f" ({exc.strerror}); stop that process or choose another port"
            )
            err.port_in_use = svc.port
            raise err from None
        self.server = AppServer(app, svc.host, svc.port, log_level=self.ctx.log_level)
        try:
            await self.server.start(sock, timeout=max(0.0, deadline - _timing.monotonic()))
        except LifespanFailed as exc:
            self.server = None
            raise self._fail(str(exc)) from None
        except TimeoutError:
            self.server = None
            timeout = svc.startup_timeout
            raise self._fail(f"the app's lifespan startup did not finish within {timeout:.1f} s", timeout=timeout) from None

    def _check_stale_imports(self) -> None:
        """Fail now, not at the health timeout, when a project module this app needs was imported
        here by another app under another value of a variable it reads (it would keep that one)."""
        from .._imports import stale_import

        svc = self.svc
        assert svc.app is not None
        wanted = {**self.ctx.base_env, **svc.env}
        stale = stale_import(svc.app, self.ctx.root, wanted, sys.modules)
        if stale:
            module, var, first = stale
            raise self._fail(f"module {module} was already imported in this process by '{first}' with another "
                             f"value of {var}, which it reads when imported, so this app would keep that value; "
                             'run the apps as subprocesses (mode = "multi_process"), or give them the same '
                             f"{var}")

    async def wait_ready(self, deadline: float) -> None:
        # The socket listens already; one probe confirms the app answers (e.g. /health).
        if self.svc.health.kind in ("tcp", "alive"):
            return
        probe = make_probe(
            self.svc, self.svc.health, log_path=self.log_path,
            env=dict(os.environ), spawned_at=self.spawned_at or _timing.monotonic(),
        )
        try:
            await wait_healthy(probe, deadline=deadline, timeout=self.svc.startup_timeout, rate=self.probe_rate,
                               log_path=self.log_path)
        except HealthTimeout as exc:
            raise self._health_timeout(exc.timeout, exc.last) from None
        except ProbeUnusable as exc:
            raise self._probe_unusable(exc) from None

    async def stop(self) -> None:
        if self.server is not None and not self._stopped:
            self._stopped = True
            token = _current.set(self)
            try:
                await self.server.stop(timeout=self.svc.stop_timeout)
            finally:
                _current.reset(token)
