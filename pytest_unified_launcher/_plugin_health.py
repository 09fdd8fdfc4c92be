"""A service that turns unhealthy or dies while a test uses it is an error of that test (SPEC 10).

The test subscribes to the launcher's health events for the services of its marker (and their
dependencies) from its setup to its teardown; any ``unhealthy`` or ``died`` among them fails its
teardown, like a fixture's teardown error, naming the service, what happened and when, the last
probe and the log tail. A test that breaks its services on purpose (fault injection) says so:
``@pytest.mark.services("cache", health_errors=False)``.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

#: The events that are a test's error when they hit one of its services.
ERROR_KINDS = ("unhealthy", "died")


def health_errors_wanted(item: pytest.Item) -> bool:
    """False when one of the item's ``services`` markers says ``health_errors=False``."""
    return all(marker.kwargs.get("health_errors", True) for marker in item.iter_markers("services"))


class TestWatch:
    """The health events of one test's services, from its setup to its teardown."""

    def __init__(self, launcher: Any, wanted: list[str]) -> None:
        self.launcher = launcher
        self.started = time.time()
        self.names = set(wanted)
        self.seen: list[Any] = []
        self._lock = threading.Lock()
        self._unsubscribe = launcher.subscribe(self._on_event)

    def _on_event(self, event: Any) -> None:  # on the launcher's loop thread
        if event.service in self.names and event.kind in ERROR_KINDS:
            with self._lock:
                self.seen.append(event)

    def finish(self) -> str | None:
        """Stop listening; the error to report, or None."""
        self._unsubscribe()
        with self._lock:
            events = list(self.seen)
        return describe(self.launcher, events, self.started) if events else None


def describe(launcher: Any, events: list[Any], started: float) -> str:
    """One paragraph per service: what happened, when, its last probe, its log tail."""
    parts = []
    for name in dict.fromkeys(e.service for e in events):
        mine = [e for e in events if e.service == name]
        what = "; then ".join(
            f"{'turned unhealthy' if e.kind == 'unhealthy' else 'died'} at "
            f"{time.strftime('%H:%M:%S', time.localtime(e.at))}.{int(e.at % 1 * 1000):03d} "
            f"({e.at - started:.2f} s into the test): {e.detail}" for e in mine)
        stats = launcher.monitor.stats.get(name)
        last = ""
        if stats is not None and stats.probes:
            last = f"\nlast probe: {'ok' if stats.last_probe is None else stats.last_probe}"
        tail = launcher.services[name].logs(20)
        parts.append(f"service '{name}', which this test uses, {what}{last}"
                     + (f"\n--- last lines of its log ---\n{tail}" if tail else ""))
    return "\n\n".join(parts) + ("\n\n(a test that breaks its services on purpose: "
                                 '@pytest.mark.services(..., health_errors=False))')
