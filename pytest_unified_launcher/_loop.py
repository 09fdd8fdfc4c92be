"""The launcher's background event loop thread.

In-process apps are served here whatever loop (or none) the caller uses, and sync callers
(the pytest plugin, handles' ``stop()``) submit coroutines to it. uvicorn installs no signal
handlers off the main thread, so Ctrl-C still reaches pytest.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")
log = logging.getLogger(__name__)


class LoopThread:
    def __init__(self, name: str = "unified-launcher") -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        while True:
            try:
                self.loop.run_forever()
                return  # stopped by close()
            except (SystemExit, KeyboardInterrupt) as exc:
                # A task raised it (app code calling sys.exit in a request or its lifespan):
                # asyncio lets that escape the loop, which every start and stop here needs, so
                # the loop goes on; the task that raised it carries it as its exception.
                log.warning("%s raised in a task on the launcher's loop; the loop goes on", type(exc).__name__)

    def in_loop(self) -> bool:
        return threading.current_thread() is self._thread

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the loop and wait; an interrupt (Ctrl-C) cancels it, then re-raises."""
        if self.in_loop():
            coro.close()
            raise RuntimeError("blocking call from the launcher's own loop thread; use the async API")
        future = self.submit(coro)
        try:
            return future.result()
        except BaseException:
            future.cancel()
            raise

    async def call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Await ``coro`` on this loop from any loop."""
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self.loop:
            return await coro
        return await asyncio.wrap_future(self.submit(coro))

    def close(self) -> None:
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=5)
        if not self._thread.is_alive():
            self.loop.close()
