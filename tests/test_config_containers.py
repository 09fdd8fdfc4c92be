"""SPEC 8's config keys, pure: how an ``image`` service resolves, every mistake's message, and
the engine command line it becomes (no engine runs here)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from test_config import build

from pytest_unified_launcher._containers import Engine, EngineNotFound, _removal_outcome, find_engine, run_args
from pytest_unified_launcher.errors import ConfigError

CACHE = """
[services.cache]
image = "redis:7"
container_port = 6379
"""


def test_an_image_service_resolves_to_a_container() -> None:
    cfg = build(CACHE + """
        command = ["redis-server", "--save", ""]
        pull = "always"
        cwd = "/data"
        mounts = ["vol:/data", "/etc/hosts:/etc/extra-hosts:ro"]
        tmpfs = ["/tmp"]
        ulimits = { nofile = 4096, nproc = { soft = 100, hard = 200 } }
        health = { exec = ["redis-cli", "ping"], interval = 1 }
        [services.api]
        command = ["x"]
        depends_on = ["cache"]
        env = { REDIS = "${services.cache.url}" }
    """)
    cache = cfg.services["cache"]
    assert cache.kind == "image" and cache.port_auto and cache.url == f"redis://127.0.0.1:{cache.port}"
    assert cache.command == ("redis-server", "--save", "")
    spec = cache.container
    assert spec is not None and spec.image == "redis:7" and spec.port == 6379 and spec.pull == "always"
    assert spec.workdir == "/data" and spec.tmpfs == ("/tmp",)
    assert spec.mounts == ("vol:/data", "/etc/hosts:/etc/extra-hosts:ro")
    assert spec.ulimits == (("nofile", 4096, 4096), ("nproc", 100, 200))
    assert cache.health.kind == "exec" and cache.health.argv == ("redis-cli", "ping") and cache.health.monitored
    assert cfg.services["api"].env["REDIS"] == cache.url  # ${services.x.url} is the host side


@pytest.mark.parametrize(("image", "scheme"), [
    ("postgres:16", "postgresql"), ("docker.io/library/redis:7-alpine", "redis"), ("valkey/valkey:8", "redis"),
    ("nginx@sha256:abc", "http"), ("localhost/ul-redis:1", "tcp"), ("example/kafka:3", "tcp"),
])
def test_the_url_scheme_follows_the_image(image: str, scheme: str) -> None:
    cfg = build(f'[services.s]\nimage = "{image}"\ncontainer_port = 1\n')
    assert cfg.services["s"].url.startswith(f"{scheme}://")


def test_a_relative_mount_is_relative_to_the_config_file(tmp_path: Path) -> None:
    (tmp_path / "sql").mkdir()
    from pytest_unified_launcher.config import parse

    cfg = parse({"services": {"db": {"image": "postgres:16", "mounts": ["./sql:/docker-entrypoint-initdb.d:ro"]}}},
                source=tmp_path / "launcher.toml", environ={})
    assert cfg.services["db"].container.mounts == (f"{tmp_path}/sql:/docker-entrypoint-initdb.d:ro",)  # type: ignore[union-attr]
    assert cfg.services["db"].port is None  # nothing published without container_port


def test_a_profile_can_swap_a_process_for_an_image() -> None:
    """A ``containers`` profile replaces the command service's program, setup, user and probe."""
    text = """
        [services.db]
        command = ["postgres", "-p", "${port}"]
        setup = [["initdb"]]
        user = "postgres"
        health = { notify = true }
        stop_signal = "SIGINT"
        [profiles.containers.services.db]
        image = "postgres:16"
        container_port = 5432
        health = { exec = ["pg_isready"] }
    """
    plain, swapped = build(text).services["db"], build(text, profile="containers").services["db"]
    assert plain.kind == "command" and swapped.kind == "image"
    assert swapped.command == () and swapped.setup == () and swapped.user is None
    assert swapped.health.kind == "exec" and swapped.stop_signal == plain.stop_signal == 2


def test_the_engine_comes_from_the_file_or_the_environment() -> None:
    assert build(CACHE).container_engine == "auto"
    assert build("[launcher]\ncontainer_engine = 'docker'\n" + CACHE).container_engine == "docker"
    assert build(CACHE, environ={"LAUNCHER_CONTAINER_ENGINE": "podman"}).container_engine == "podman"


ERRORS = [
    ("[services.a]\nimage = 'redis:7'\nurl = 'http://x:1'\n", {}, ["exactly one of app", "image", "got url, image"]),
    ("[services.a]\ncommand = 'x'\ncontainer_port = 1\n", {},
     ["service 'a', key 'container_port'", "container_port is for image services", "has a command",
      'fix: remove container_port, or run the service from an image (image = "...")']),
    ("[services.a]\napp = 'm:a'\npull = 'never'\nmounts = ['a:/b']\n", {},
     ["key 'pull'", "pull is for image services (a container), and this one has an app"]),
    ("[services.a]\ncommand = 'x'\ntmpfs = ['/x']\n", {},
     ["key 'tmpfs'", "a list of container paths is for image services", "tmpfs = true puts ${tmp} in memory"]),
    ("[services.a]\ncommand = 'x'\nhealth = { exec = 'true' }\n", {},
     ["key 'health.exec'", "runs a command inside a container", "fix: use health.command"]),
    ("[services.a]\nimage = 'r'\nport = 1\n", {},
     ["key 'container_port'", "container_port (the port inside the container) is not set",
      "fix: set container_port, e.g. container_port = 6379"]),
    ("[services.a]\nimage = 'r'\nstop_command = 'x'\n", {}, ["stop_command is for command services"]),
    ("[services.a]\nimage = 'r'\npull = 'sometimes'\n", {}, ["key 'pull'", "'missing'", "'always'", "'never'"]),
    ("[services.a]\nimage = 'r'\ncontainer_port = 70000\n", {}, ["key 'container_port'", "65535"]),
    ("[services.a]\nimage = 'r'\nulimits = { nofle = 1 }\n", {}, ["key 'ulimits.nofle'", "did you mean 'nofile'"]),
    ("[services.a]\nimage = 'r'\nulimits = { nofile = { soft = 9, hard = 8 } }\n", {},
     ["ulimit nofile: soft 9 is above hard 8"]),
    ("[services.a]\nimage = 'r'\nulimits = { nofile = { soft = 9 } }\n", {}, ["key 'ulimits.nofile'", "is not a limit", "soft = 1024, hard = 4096"]),
    ("[services.a]\nimage = 'r'\nmounts = ['/only-one-part']\n", {}, ["key 'mounts[0]'", "SOURCE:TARGET"]),
    ("[services.a]\nimage = 'r'\nmounts = ['./x:relative']\n", {}, ["container path 'relative' is not absolute"]),
    ("[services.a]\nimage = 'r'\nmounts = ['vol:/x:rx']\n", {}, ["unknown options 'rx'", "ro or rw"]),
    ("[services.a]\nimage = 'r'\nmounts = ['./no-such-dir:/x']\n", {}, ["does not exist", "relative to the config file"]),
    ("[services.a]\nimage = 'r'\ntmpfs = ['tmp']\n", {}, ["key 'tmpfs[0]'", "not absolute"]),
    ("[services.a]\nimage = 'r'\ncwd = 'app'\n", {}, ["key 'cwd'", "inside the container", "/app"]),
    ("[services.a]\nimage = 'two words'\n", {}, ["key 'image'", "not an image reference"]),
    # An image that is an option: "--name=x" after --replace removed another container.
    ("[services.a]\nimage = '--name=victim'\ncommand = ['redis:7']\n", {}, ["key 'image'", "not an image reference"]),
    ("[services.a]\nimage = '${env.IMG}'\n", {"environ": {"IMG": "-v=/:/host"}}, ["not an image reference"]),
    ("[services.a]\nimage = 'r'\nhealth = { exec = [] }\n", {}, ["key 'health'", "set exactly one of", "exec"]),
    ("[launcher]\ncontainer_engine = 'lxc'\n", {}, ["key 'launcher.container_engine'", "'podman'", "'docker'"]),
    ("[services.a]\nimage = 'r'\n", {"environ": {"LAUNCHER_CONTAINER_ENGINE": "rkt"}},
     ["LAUNCHER_CONTAINER_ENGINE", "'rkt'"]),
]


@pytest.mark.parametrize(("text", "kwargs", "fragments"), ERRORS)
def test_container_mistakes_are_one_clear_message(text: str, kwargs: dict[str, Any], fragments: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        build(text, **kwargs)
    message = str(info.value)
    assert all(fragment in message for fragment in fragments), message


def test_the_engine_command_line(tmp_path: Path) -> None:
    """Labels, publish, env from a file, user, workdir, mounts, tmpfs, ulimits, image, command:
    every option as --option=value, so no value is ever read as an option."""
    svc = build(CACHE + """
        command = ["redis-server"]
        user = "999"
        cwd = "/data"
        mounts = ["vol:/data"]
        tmpfs = ["/tmp"]
        ulimits = { nofile = 4096 }
        stop_signal = "SIGINT"
        stop_timeout = 3
    """).services["cache"]
    env_file = tmp_path / "cache.env"
    args = run_args(svc, name="ul-s-cache", session="s", is_podman=True, env_file=env_file)
    assert args[:2] == ["run", "--rm"] and args[-2:] == ["redis:7", "redis-server"]
    for option in ["--name=ul-s-cache", "--label=io.unified-launcher.session=s",
                   "--label=io.unified-launcher.service=cache", "--pull=never", "--log-driver=none",
                   "--stop-signal=2", "--stop-timeout=3", f"--publish=127.0.0.1:{svc.port}:6379",
                   f"--env-file={env_file}", "--user=999", "--workdir=/data", "--volume=vol:/data", "--tmpfs=/tmp",
                   "--ulimit=nofile=4096:4096"]:
        assert option in args, option
    assert all(a.startswith("--") and ("=" in a or a in ("--rm", "--replace")) for a in args[1:-2]), args
    assert "--replace" in args and "--replace" not in run_args(svc, name="n", session="s", is_podman=False)


@pytest.mark.parametrize(("env", "problem"), [
    ({"A": "1", "B_2": "x=y z"}, None),
    ({"A-B": "1"}, "env name 'A-B' cannot be passed to a container"),
    ({"PREFIX*": "1"}, "env name 'PREFIX*' cannot be passed"),
    ({"A": "two\nlines"}, "env A's value has a line break"),
])
def test_the_env_file(env: dict[str, str], problem: str | None) -> None:
    from pytest_unified_launcher._containers import env_file_text

    if problem is None:
        assert env_file_text(env) == "A=1\nB_2=x=y z\n"
    else:
        with pytest.raises(ValueError, match=problem.replace("*", "\\*")):
            env_file_text(env)


def test_a_missing_engine_names_the_fix(tmp_path: Path) -> None:
    empty = {"PATH": str(tmp_path)}
    with pytest.raises(EngineNotFound, match="neither podman nor docker is on PATH; install podman"):
        find_engine("auto", empty)
    fake = tmp_path / "docker"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    with pytest.raises(EngineNotFound, match='container_engine = "podman" but podman is not on PATH; install it, '
                                             'or set container_engine = "docker"'):
        find_engine("podman", empty)
    assert find_engine("auto", empty).name == "docker"


@pytest.mark.parametrize("engine", [None, "podman"])
def test_init_offers_images_when_an_engine_is_found(tmp_path: Path, engine: str | None) -> None:
    """`init --with postgres,redis` adds a `containers` profile (official images) only with an
    engine on PATH; the file parses with and without it, the swap changing only those two."""
    import tomllib

    from pytest_unified_launcher._templates import render_init
    from pytest_unified_launcher.config import parse

    target = tmp_path / "launcher.toml"
    text = render_init(["postgres", "redis", "fastapi"], target, engine=engine)[target]
    data = tomllib.loads(text)
    assert ("profiles" in data) == (engine is not None)
    plain = parse(data, source=target, environ={}, allocate_port=lambda n, h: 20000 + len(n))
    assert {s.kind for s in plain.services.values()} <= {"command", "app"}
    if engine is not None:
        swapped = parse(data, source=target, environ={}, profile="containers",
                        allocate_port=lambda n, h: 20000 + len(n))
        kinds = {n: s.kind for n, s in swapped.services.items()}
        assert kinds["database"] == kinds["cache"] == "image" and kinds["api"] == "app"
        assert swapped.services["database"].url.startswith("postgresql://")  # type: ignore[union-attr]


@pytest.mark.parametrize(("engine", "grace", "steps"), [
    # podman's rm stops (signal, then SIGKILL after --time) and removes in one command
    ("podman", 10, [("rm", "--force", "--ignore", "--volumes", "--time=10")]),
    ("podman", 0, [("rm", "--force", "--ignore", "--volumes", "--time=0")]),
    # docker's rm --force is an immediate SIGKILL: its graceful stop comes first
    ("docker", 10, [("stop", "--time=10"), ("rm", "--force", "--volumes")]),
    ("docker", 2.6, [("stop", "--time=3"), ("rm", "--force", "--volumes")]),
    ("docker", -1, [("stop", "--time=0"), ("rm", "--force", "--volumes")]),
])
def test_one_removal_for_every_caller(engine: str, grace: float, steps: list[tuple[str, ...]]) -> None:
    """A stop, an adopted service's stop and the reaper remove containers the same way."""
    assert Engine(engine, f"/usr/bin/{engine}").removal(grace) == steps


@pytest.mark.parametrize(("results", "outcome"), [
    ([(0, "ul-a")], (0, "")),
    ([(1, "Error: no such container ul-a")], (0, "")),  # already gone: nothing to remove
    # docker: stop failed for one name, rm worked: the stop's real failure is still reported
    ([(1, "Error response from daemon: No such container: a\nError: cannot stop b: device busy"), (0, "b")],
     (1, "Error: cannot stop b: device busy")),
    # one name gone, another failing: the gone one does not hide the failure
    ([(1, "Error: no such container x\nError: removing y: permission denied")], (1, "Error: removing y: permission denied")),
    ([(0, ""), (124, "rm --force: TimeoutError")], (1, "rm --force: TimeoutError")),
])
def test_a_removal_reports_every_failure_but_a_container_already_gone(results: list[tuple[int, str]],
                                                                      outcome: tuple[int, str]) -> None:
    assert _removal_outcome(results) == outcome


@pytest.mark.parametrize(("engine", "settle"), [("podman", 0.0), ("docker", 0.05)])
def test_only_dockers_port_proxy_needs_a_settling_tcp_probe(engine: str, settle: float) -> None:
    assert Engine(engine, f"/usr/bin/{engine}").tcp_settle == settle
