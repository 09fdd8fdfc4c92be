"""Unit tests for the per-service state machine."""

from __future__ import annotations

import pytest
from statemachine.exceptions import TransitionNotAllowed

from pytest_unified_launcher.lifecycle import ServiceLifecycle


@pytest.mark.parametrize(
    ("events", "state"),
    [
        ([], "stopped"),
        (["begin"], "starting"),
        (["begin", "ready"], "running"),
        (["begin", "complete"], "completed"),
        (["begin", "fail"], "failed"),
        (["begin", "fail", "begin", "ready"], "running"),
        (["begin", "ready", "fail"], "failed"),
        (["begin", "ready", "halt", "finish"], "stopped"),
        (["begin", "halt", "finish", "begin"], "starting"),
        (["begin", "complete", "halt", "finish"], "stopped"),
        (["begin", "ready", "sicken"], "unhealthy"),
        (["begin", "ready", "sicken", "recover"], "running"),
        (["begin", "ready", "die"], "died"),
        (["begin", "ready", "sicken", "die"], "died"),
        (["begin", "ready", "die", "fail"], "failed"),
        (["begin", "ready", "die", "halt", "finish"], "stopped"),
        (["begin", "ready", "sicken", "halt", "finish"], "stopped"),
        (["begin", "ready", "die", "begin", "ready"], "running"),
    ],
)
def test_legal_paths(events: list[str], state: str) -> None:
    """Each legal sequence of events ends in the expected state."""
    machine = ServiceLifecycle("svc")
    for event in events:
        machine.send(event)
    assert machine.state == state


@pytest.mark.parametrize(
    ("events", "illegal"),
    [
        ([], "ready"),
        ([], "halt"),
        (["begin", "ready"], "begin"),
        (["begin", "ready"], "complete"),
        (["begin", "ready", "halt"], "ready"),
        ([], "finish"),
        (["begin"], "sicken"),
        (["begin", "ready"], "recover"),
        (["begin", "complete"], "die"),
        (["begin", "ready", "die"], "recover"),
        (["begin", "ready", "die"], "sicken"),
    ],
)
def test_illegal_transitions_raise(events: list[str], illegal: str) -> None:
    """An illegal move raises instead of silently changing state."""
    machine = ServiceLifecycle("svc")
    for event in events:
        machine.send(event)
    with pytest.raises(TransitionNotAllowed):
        machine.send(illegal)


def test_transitions_are_stamped_in_order() -> None:
    """Every transition is time-stamped, and the stamps never go backwards."""
    machine = ServiceLifecycle("svc")
    for event in ["begin", "ready", "halt", "finish"]:
        machine.send(event)
    assert [s.event for s in machine.stamps] == ["begin", "ready", "halt", "finish"]
    assert [s.target for s in machine.stamps] == ["starting", "running", "stopping", "stopped"]
    times = [s.at for s in machine.stamps]
    assert times == sorted(times)
    assert machine.last("ready") == times[1]
    assert machine.last_into("stopped") == times[3]
