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
    """The first cycle found, as ``[a, b, a]``, visiting names in sorted order; else None.

    Iterative (an explicit stack), so a chain of 10,000 services cannot hit the recursion limit.
    """
    white, grey, black = 0, 1, 2
    color = dict.fromkeys(graph, white)
    for root in sorted(graph):
        if color[root] != white:
            continue
        path = [root]
        todo = [iter(sorted(graph[root]))]
        color[root] = grey
        while todo:
            dep = next(todo[-1], None)
            if dep is None:
                color[path.pop()] = black
                todo.pop()
                continue
            if color.get(dep) == grey:
                return path[path.index(dep) :] + [dep]
            if color.get(dep) == white:
                color[dep] = grey
                path.append(dep)
                todo.append(iter(sorted(graph[dep])))
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


class Reach:
    """The transitive dependencies of one service, walked only as far as the questions need.

    ``target in Reach(graph, name)`` answers whether ``name`` may name ``target`` in a placeholder.
    A direct dependency is answered at once; the walk is shared by every question about ``name``,
    so checking a whole config costs the edges actually walked, not a closure per service.
    """

    def __init__(self, graph: Graph, name: str) -> None:
        self.graph = graph
        self.direct = frozenset(graph[name])
        self.found: set[str] = set()
        self.todo = list(graph[name])

    def __contains__(self, target: object) -> bool:
        if target in self.direct or target in self.found:
            return True
        while self.todo:
            dep = self.todo.pop()
            if dep not in self.found:
                self.found.add(dep)
                self.todo.extend(self.graph[dep])
                if dep == target:
                    return True
        return False


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
