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


def watch_test(item: pytest.Item, launcher: Any, wanted: list[str]) -> None:
    """Fail the item's teardown if one of ``wanted`` turns unhealthy or dies until then."""
    started = time.time()
    names = set(wanted)
    seen: list[Any] = []
    lock = threading.Lock()

    def on_event(event: Any) -> None:  # on the launcher's loop thread
        if event.service in names and event.kind in ERROR_KINDS:
            with lock:
                seen.append(event)

    unsubscribe = launcher.subscribe(on_event)

    def check() -> None:
        unsubscribe()
        with lock:
            events = list(seen)
        if events:
            pytest.fail(describe(launcher, events, started), pytrace=False)

    item.addfinalizer(check)


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
        parts.append(f"service '{name}' {what} while this test used it{last}"
                     + (f"\n--- last lines of its log ---\n{tail}" if tail else ""))
    return "\n\n".join(parts) + ("\n\n(a test that breaks its services on purpose: "
                                 '@pytest.mark.services(..., health_errors=False))')
