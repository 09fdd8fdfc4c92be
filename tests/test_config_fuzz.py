"""Malformed configs generated with hypothesis: always a clean ConfigError or a valid config."""

from __future__ import annotations

import itertools
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pytest_unified_launcher.config import LauncherConfig, parse
from pytest_unified_launcher.errors import ConfigError

NAMES = st.sampled_from(["a", "b", "c", "db", "api", "x y", "", "é", "a.b"])
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-10, 70000), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["${port}", "${services.a.port}", "${services.zz.url}", "${env.HOME}", "${env.NOPE}",
                     "$$", "${", "${tmp}/x", "auto", "SIGINT", "/health", "http://127.0.0.1:1/x", "([", "true"]),
)
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                        st.dictionaries(st.text(max_size=6), inner, max_size=3)),
                      max_leaves=6)
SERVICE_KEYS = ["app", "command", "url", "depends_on", "dependencies", "port", "host", "env", "cwd", "setup", "user",
                "task", "health", "startup_timeout", "stop_signal", "stop_timeout", "retries", "watch", "bogus"]
LAUNCHER_KEYS = ["mode", "startup_timeout", "startup_budget", "xdist", "state_dir", "log_level", "auto_restart",
                 "dev_mode", "test_env", "nope"]


@st.composite
def services(draw: Any) -> dict[str, Any]:
    names = draw(st.lists(NAMES, min_size=0, max_size=4, unique=True))
    out: dict[str, Any] = {}
    for name in names:
        svc: dict[str, Any] = {}
        kind = draw(st.sampled_from(["app", "command", "url", None]))
        if kind == "command":
            svc["command"] = draw(st.one_of(st.just(["srv", "${port}"]), st.text(max_size=10), VALUES))
        elif kind == "app":
            svc["app"] = draw(st.one_of(st.just("m:app"), VALUES))
        elif kind == "url":
            svc["url"] = draw(st.one_of(st.just("http://127.0.0.1:9000"), VALUES))
        for key in draw(st.lists(st.sampled_from(SERVICE_KEYS), max_size=4, unique=True)):
            if key in ("depends_on", "dependencies"):
                svc[key] = draw(st.one_of(st.lists(NAMES, max_size=3), VALUES))
            elif key == "health":
                svc[key] = draw(st.one_of(
                    st.dictionaries(st.sampled_from(["http", "tcp", "command", "log", "notify", "timeout", "x"]),
                                    SCALARS, max_size=3), VALUES))
            else:
                svc[key] = draw(VALUES)
        out[name] = svc
    return out


@st.composite
def configs(draw: Any) -> dict[str, Any]:
    data: dict[str, Any] = {"services": draw(services())}
    if draw(st.booleans()):
        data["launcher"] = {k: draw(VALUES) for k in draw(st.lists(st.sampled_from(LAUNCHER_KEYS), max_size=3, unique=True))}
    if draw(st.booleans()):
        data["profiles"] = draw(st.dictionaries(NAMES, st.one_of(st.builds(lambda s: {"services": s}, services()), VALUES),
                                                max_size=2))
    if draw(st.booleans()):
        data[draw(st.sampled_from(["servics", "launcher", "x"]))] = draw(VALUES)
    return data


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(configs(), st.one_of(st.none(), NAMES))
def test_any_config_is_a_clean_error_or_valid(data: dict[str, Any], profile: str | None) -> None:
    """Whatever the mapping, parse() returns a config or raises ConfigError: never a traceback."""
    counter = itertools.count(20000)
    try:
        result = parse(data, source="fuzz.toml", profile=profile, environ={"HOME": "/root"},
                       allocate_port=lambda n, h: next(counter), tmp_root="/tmp/ul-fuzz")
    except ConfigError as exc:
        text = str(exc)
        assert text.startswith("launcher config error") and "fuzz.toml" in text
    else:
        assert isinstance(result, LauncherConfig)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from("abcdef"), st.lists(st.sampled_from("abcdefg"), max_size=3), max_size=6))
def test_random_graphs(graph: dict[str, list[str]]) -> None:
    """Random graphs (cycles, unknown names): a spelled-out ConfigError or consistent levels."""
    data = {"services": {n: {"command": ["x"], "depends_on": deps} for n, deps in graph.items()}}
    try:
        cfg = parse(data, source="g.toml", environ={}, allocate_port=lambda n, h: 1, tmp_root="/tmp/ul-fuzz")
    except ConfigError as exc:
        assert exc.key == "depends_on"
        if exc.cycle:
            assert exc.cycle[0] == exc.cycle[-1] and " -> ".join(exc.cycle) in str(exc)
        return
    from pytest_unified_launcher.graph import level_map

    levels = level_map(cfg.graph)
    for name, deps in cfg.graph.items():
        assert all(levels[d] < levels[name] for d in deps)
