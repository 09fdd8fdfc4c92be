"""Unit tests for the pure graph functions."""

from __future__ import annotations

import pytest

from pytest_unified_launcher import graph
from pytest_unified_launcher.errors import ConfigError, UnknownServiceError

EXAMPLE = {
    "database": (),
    "cache": (),
    "migrate": ("database",),
    "api_gateway": ("migrate", "cache"),
    "agent": ("api_gateway",),
}


@pytest.mark.parametrize(
    ("g", "expected"),
    [
        ({}, []),
        ({"a": ()}, [["a"]]),
        ({"b": (), "a": ()}, [["a", "b"]]),
        ({"database": (), "cache": (), "api_gateway": ("database", "cache"), "agent": ("api_gateway",)},
         [["cache", "database"], ["api_gateway"], ["agent"]]),
        (EXAMPLE, [["cache", "database"], ["migrate"], ["api_gateway"], ["agent"]]),
        ({"a": (), "b": ("a",), "c": ("a", "b")}, [["a"], ["b"], ["c"]]),
    ],
)
def test_levels(g: dict[str, tuple[str, ...]], expected: list[list[str]]) -> None:
    """Levels follow Kahn's algorithm, each level sorted, a service one above its highest dependency."""
    assert graph.levels(g) == expected
    assert graph.teardown_levels(g) == list(reversed(expected))


@pytest.mark.parametrize(
    ("g", "cycle"),
    [
        ({"a": ("b",), "b": ("a",)}, ["a", "b", "a"]),
        ({"a": ("b",), "b": ("c",), "c": ("a",)}, ["a", "b", "c", "a"]),
        ({"x": (), "a": ("b",), "b": ("c",), "c": ("b",)}, ["b", "c", "b"]),
    ],
)
def test_cycles_are_spelled_out(g: dict[str, tuple[str, ...]], cycle: list[str]) -> None:
    """A cycle is reported as the path around it, a -> b -> a."""
    with pytest.raises(ConfigError) as info:
        graph.validate(g, source="launcher.toml")
    assert info.value.cycle == tuple(cycle)
    assert " -> ".join(cycle) in str(info.value)


def test_self_dependency() -> None:
    """A service that depends on itself is a one-step cycle."""
    with pytest.raises(ConfigError, match="a -> a"):
        graph.validate({"a": ("a",)})


def test_unknown_dependency_suggests_closest() -> None:
    """An unknown dependency names the service, the key and the closest known name."""
    with pytest.raises(ConfigError) as info:
        graph.validate({"cache": (), "api": ("cahce",)}, source="launcher.toml")
    text = str(info.value)
    assert "service 'api'" in text and "depends_on" in text and "did you mean 'cache'" in text


@pytest.mark.parametrize(
    ("names", "expected"),
    [
        (["agent"], {"agent", "api_gateway", "migrate", "database", "cache"}),
        (["migrate"], {"migrate", "database"}),
        (["cache", "database"], {"cache", "database"}),
        ([], set()),
    ],
)
def test_closure(names: list[str], expected: set[str]) -> None:
    """The closure of a subset is the subset plus its transitive dependencies."""
    assert graph.closure(EXAMPLE, names) == expected


def test_closure_unknown_lists_known() -> None:
    """Asking for an unknown service lists the known ones."""
    with pytest.raises(UnknownServiceError) as info:
        graph.closure(EXAMPLE, ["nope"])
    assert "agent" in str(info.value) and "'nope'" in str(info.value)


def test_dependents_closure() -> None:
    """Dependents of a service are found transitively (for dev-mode restarts)."""
    assert graph.dependents_closure(EXAMPLE, ["database"]) == {"database", "migrate", "api_gateway", "agent"}
