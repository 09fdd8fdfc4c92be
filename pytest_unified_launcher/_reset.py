"""A service's ``reset`` hook: bring its data back to a clean state between tests.

A command runs to its end like a setup step (the service's env, cwd and user; recorded while it
runs, so a launcher killed meanwhile still has it reaped); a ``"module:function"`` hook is
imported and called with the service's handle and the worker in a daemon thread, off the
launcher's loop (a hook may block on its database). Both are bounded by the service's
``startup_timeout``; a failure is a :class:`ServiceResetError` that names the hook and ends with
what it printed (a function: its own frames of the traceback).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import importlib
import inspect
import os
import shlex
import sys
import tempfile
import threading
import traceback
from collections.abc import Callable
from typing import Any

from ._process import cannot_run, run_to_end, tail_of, user_ids
from .config import ServiceConfig
from .errors import ServiceResetError
from .runners import RunContext
from .runners.subprocess import describe_exit


async def run_reset(svc: ServiceConfig, ctx: RunContext, *, handle: Any, worker: str) -> None:
    """Run ``svc.reset`` once; raise :class:`ServiceResetError` when it fails."""
    hook = svc.reset
    assert hook is not None
    if hook.function is not None:
        function = import_hook(svc, hook.function, str(ctx.root))
        try:
            async with asyncio.timeout(svc.startup_timeout):
                await _in_daemon_thread(function, handle, worker)
        except TimeoutError:
            raise ServiceResetError(
                svc.name, f"reset {hook.function} did not finish within {svc.startup_timeout:.1f} s (the service's "
                "startup_timeout); a function cannot be stopped, so it is left to finish in the background "
                "(a TRUNCATE waiting for another connection's lock?)") from None
        except Exception as exc:
            raise ServiceResetError(svc.name, f"reset {hook.function} raised {type(exc).__name__}: {exc}",
                                    log_tail=_user_frames(exc)) from None
        return
    env = ctx.service_env(svc)
    with tempfile.TemporaryFile() as output:
        try:
            code = await run_to_end(
                hook.argv, env=env, cwd=svc.cwd, log_file=output.fileno(), ids=user_ids(svc.user),
                timeout=svc.startup_timeout, stop_timeout=min(2.0, svc.stop_timeout),
                on_spawn=lambda pid: ctx.on_spawn(svc.name, pid),
                on_exit=lambda pid: ctx.on_exit(svc.name, pid),
            )
        except (FileNotFoundError, PermissionError) as exc:
            raise ServiceResetError(svc.name, cannot_run("reset command", hook.argv[0], exc, svc.cwd)) from None
        except TimeoutError:
            raise ServiceResetError(
                svc.name, f"reset `{shlex.join(hook.argv)}` did not finish within {svc.startup_timeout:.1f} s "
                "(the service's startup_timeout)", log_tail=tail_of(output)) from None
        if code != 0:
            raise ServiceResetError(svc.name, f"reset `{shlex.join(hook.argv)}` {describe_exit(code)}",
                                    log_tail=tail_of(output))


def _in_daemon_thread(function: Callable[[Any, str], object], handle: Any, worker: str) -> asyncio.Future[None]:
    """``function(handle, worker)`` in a daemon thread: one that hangs can be given up on, and
    does not keep the interpreter from exiting (asyncio.to_thread's pool threads are joined at exit)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[None] = loop.create_future()

    def settle(error: BaseException | None) -> None:
        if not future.done():
            future.set_exception(error) if error is not None else future.set_result(None)

    def run() -> None:
        try:
            function(handle, worker)
        except BaseException as exc:
            loop.call_soon_threadsafe(settle, exc)
        else:
            loop.call_soon_threadsafe(settle, None)

    threading.Thread(target=run, name=f"unified-launcher-reset-{worker}", daemon=True).start()
    return future


def import_hook(svc: ServiceConfig, spec: str, root: str) -> Callable[[Any, str], object]:
    """``module:function``, imported with the config's folder on ``sys.path`` (as apps are), and
    callable as ``function(handle, worker)``."""
    module_name, _, attr = spec.partition(":")
    if root not in sys.path:
        sys.path.append(root)  # last: a project module never shadows the standard library
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ServiceResetError(svc.name, f"cannot import the reset hook's module {module_name!r}: {exc}") from None
    function = getattr(module, attr, None)
    if function is None:
        raise ServiceResetError(svc.name, f"reset {spec}: module {module_name!r} has no attribute {attr!r}")
    if not callable(function):
        raise ServiceResetError(svc.name, f"reset {spec}: {attr} is not a function (its type is {type(function).__name__})")
    try:
        inspect.signature(function).bind(None, "main")
    except TypeError as exc:
        raise ServiceResetError(svc.name, f"reset {spec} must take two arguments, (handle, worker): {exc}") from None
    except ValueError:
        pass  # no signature to read (a builtin): let the call tell
    return function  # type: ignore[no-any-return]


def _user_frames(exc: BaseException) -> str:
    """The traceback from the hook's own frames on (not the thread pool's or ours), at most 20 lines."""
    frames = traceback.extract_tb(exc.__traceback__)
    ours = (os.path.dirname(__file__), os.path.dirname(asyncio.__file__), os.path.dirname(concurrent.futures.__file__))
    while len(frames) > 1 and frames[0].filename.startswith(ours):
        frames.pop(0)
    lines = "".join(traceback.format_list(frames) + traceback.format_exception_only(exc)).splitlines()
    return "\n".join(lines[-20:])
