"""The per-service lifecycle as a python-statemachine machine.

States and events are declared once; an illegal move raises ``TransitionNotAllowed``; every
transition is stamped with the clock, and the report's timings are read from these stamps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from statemachine import State, StateMachine

from . import _timing


@dataclass(frozen=True)
class Stamp:
    """One transition: which event, from and to which state, and when."""

    event: str
    source: str
    target: str
    at: float


#: A process that runs, healthy or not.
LIVE_STATES = frozenset({"running", "unhealthy"})
#: Nothing to start: its process runs, or (a task) it completed.
UP_STATES = LIVE_STATES | {"completed"}


class ServiceLifecycle(StateMachine):
    """stopped -> starting -> running | completed (tasks) | failed -> stopping -> stopped.

    While it runs, the health monitor moves it running -> unhealthy (``failure_threshold``
    failed probes) -> running (a probe passed: recovered), and to died when its process exits.
    """

    stopped = State(initial=True)
    starting = State()
    running = State()
    unhealthy = State()
    died = State()
    completed = State()
    failed = State()
    stopping = State()

    begin = stopped.to(starting) | failed.to(starting) | completed.to(starting) | died.to(starting)
    ready = starting.to(running)
    complete = starting.to(completed)
    sicken = running.to(unhealthy)
    recover = unhealthy.to(running)
    die = running.to(died) | unhealthy.to(died)
    fail = (starting.to(failed) | running.to(failed) | unhealthy.to(failed) | died.to(failed)
            | stopping.to(failed))
    halt = (
        starting.to(stopping)
        | running.to(stopping)
        | unhealthy.to(stopping)
        | died.to(stopping)
        | completed.to(stopping)
        | failed.to(stopping)
    )
    finish = stopping.to(stopped)

    def __init__(self, name: str = "", **kwargs: Any) -> None:
        self.name = name
        self.stamps: list[Stamp] = []
        super().__init__(**kwargs)

    def after_transition(self, event: str, source: State, target: State) -> None:
        self.stamps.append(Stamp(str(event), source.id, target.id, _timing.monotonic()))

    @property
    def state(self) -> str:
        return str(self.current_state_value)

    def last(self, event: str) -> float | None:
        """When ``event`` last happened, or None."""
        for stamp in reversed(self.stamps):
            if stamp.event == event:
                return stamp.at
        return None

    def last_into(self, target: str) -> float | None:
        for stamp in reversed(self.stamps):
            if stamp.target == target:
                return stamp.at
        return None

    def __repr__(self) -> str:
        return f"<ServiceLifecycle {self.name!r} state={self.state}>"
