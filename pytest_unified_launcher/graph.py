"""Pure decisions over the dependency graph: validation, cycles, start levels, closures.

The graph is a plain mapping ``name -> dependencies``; nothing here does I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from .errors import ConfigError, UnknownServiceError

Graph = Mapping[str, Sequence[str]]


def validate(graph: Graph, *, source: str | None = None) -> None:
    """Raise a :class:`ConfigError` for an unknown dependency or a cycle (spelled out)."""
    for name in sorted(graph):
        for dep in graph[name]:
            if dep not in graph:
                raise ConfigError(
                    f"depends on '{dep}', which is not a service",
                    source=source,
                    service=name,
                    key="depends_on",
                    fix=_known_fix(dep, graph),
                )
            if dep == name:
                raise ConfigError(
                    f"depends on itself: {name} -> {name}",
                    source=source,
                    service=name,
                    key="depends_on",
                    cycle=[name, name],
                    fix="remove it from its own depends_on",
                )
    cycle = find_cycle(graph)
    if cycle:
        raise ConfigError(
            "dependency cycle: " + " -> ".join(cycle),
            source=source,
            service=cycle[0],
            key="depends_on",
            cycle=cycle,
            fix="break the cycle by removing one of these depends_on entries",
        )


def _known_fix(name: str, known: Iterable[str]) -> str:
    import difflib

    names = sorted(known)
    close = difflib.get_close_matches(name, names, n=1)
    hint = f"did you mean '{close[0]}'? " if close else ""
    return f"{hint}known services: {', '.join(names)}"


def find_cycle(graph: Graph) -> list[str] | None:
    """The first cycle found, as ``[a, b, a]``, visiting names in sorted order; else None."""
    white, grey, black = 0, 1, 2
    color = dict.fromkeys(graph, white)
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        color[node] = grey
        stack.append(node)
        for dep in sorted(graph[node]):
            if color.get(dep) == grey:
                return stack[stack.index(dep) :] + [dep]
            if color.get(dep) == white:
                found = visit(dep)
                if found:
                    return found
        stack.pop()
        color[node] = black
        return None

    for node in sorted(graph):
        if color[node] == white:
            found = visit(node)
            if found:
                return found
    return None


def levels(graph: Graph) -> list[list[str]]:
    """Start levels by Kahn's algorithm; each level sorted by name, so the order is stable.

    Level 0 holds the services without dependencies; a service sits one level above its
    highest dependency. The graph must be acyclic (see :func:`validate`).
    """
    level = level_map(graph)
    out: list[list[str]] = [[] for _ in range(max(level.values(), default=-1) + 1)]
    for name in sorted(level):
        out[level[name]].append(name)
    return out


def level_map(graph: Graph) -> dict[str, int]:
    """``name -> level`` (0 without dependencies, else 1 + the highest dependency level)."""
    pending = {name: len(set(deps)) for name, deps in graph.items()}
    dependents: dict[str, list[str]] = {name: [] for name in graph}
    for name, deps in graph.items():
        for dep in set(deps):
            dependents[dep].append(name)
    level: dict[str, int] = {}
    ready = sorted(name for name, count in pending.items() if count == 0)
    for name in ready:
        level[name] = 0
    while ready:
        following: list[str] = []
        for name in ready:
            for dependent in dependents[name]:
                level[dependent] = max(level.get(dependent, 0), level[name] + 1)
                pending[dependent] -= 1
                if pending[dependent] == 0:
                    following.append(dependent)
        ready = sorted(following)
    if len(level) != len(graph):
        raise ValueError(f"graph has a cycle: {find_cycle(graph)}")
    return level


def closure(graph: Graph, names: Iterable[str]) -> set[str]:
    """The named services plus all their transitive dependencies."""
    wanted = list(names)
    unknown = [n for n in wanted if n not in graph]
    if unknown:
        raise UnknownServiceError(unknown, sorted(graph))
    seen: set[str] = set()
    while wanted:
        name = wanted.pop()
        if name not in seen:
            seen.add(name)
            wanted.extend(graph[name])
    return seen


def dependents_closure(graph: Graph, names: Iterable[str]) -> set[str]:
    """The named services plus everything that depends on them, transitively."""
    reverse: dict[str, list[str]] = {name: [] for name in graph}
    for name, deps in graph.items():
        for dep in deps:
            reverse[dep].append(name)
    return closure(reverse, names)


def subgraph(graph: Graph, names: Iterable[str]) -> dict[str, tuple[str, ...]]:
    """The graph restricted to ``names`` (dependencies outside it dropped)."""
    keep = set(names)
    return {n: tuple(d for d in graph[n] if d in keep) for n in sorted(keep)}


def teardown_levels(graph: Graph) -> list[list[str]]:
    """Levels in stop order: dependents before their dependencies."""
    return list(reversed(levels(graph)))
