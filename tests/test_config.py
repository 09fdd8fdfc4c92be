"""Unit tests for config parsing: every SPEC 1 mistake is one clear ConfigError, never a traceback."""

from __future__ import annotations

import itertools
import os
import signal
import textwrap
import tomllib
from pathlib import Path
from typing import Any

import pytest

from pytest_unified_launcher.config import (
    KEEP,
    SHARED_WORKERS,
    client_url,
    load_config,
    parse,
    resolve_mode,
)
from pytest_unified_launcher import graph as graph_mod
from pytest_unified_launcher.errors import ConfigError

BASE = """
[services.database]
command = ["postgres", "-p", "${port}"]
[services.cache]
command = "redis-server --port ${port}"
health = { tcp = true }
[services.api]
app = "app:app"
depends_on = ["database", "cache"]
env = { DB = "postgresql://127.0.0.1:${services.database.port}/x" }
[profiles.ci]
launcher = { mode = "multi_process", startup_timeout = 60 }
[profiles.ci.services.api.env]
LOG = "warning"
[profiles.staging.services.api]
url = "http://127.0.0.1:9000"
"""


def _ports() -> Any:
    counter = itertools.count(20000)
    return lambda name, host: next(counter)


def build(text: str, **kwargs: Any) -> Any:
    kwargs.setdefault("environ", {})
    return parse(tomllib.loads(textwrap.dedent(text)), source="launcher.toml",
                 allocate_port=_ports(), tmp_root="/tmp/ul-test", **kwargs)


def test_base_config_resolves_every_placeholder() -> None:
    """Ports are fixed at load time, so dependents' env already holds their addresses."""
    cfg = build(BASE)
    db = cfg.services["database"]
    assert db.command == ("postgres", "-p", str(db.port))
    assert cfg.services["cache"].command[0:2] == ("redis-server", "--port")
    assert cfg.services["api"].env["DB"] == f"postgresql://127.0.0.1:{db.port}/x"
    assert cfg.services["api"].url == f"http://127.0.0.1:{cfg.services['api'].port}"
    assert cfg.mode == "auto" and cfg.startup_budget == 25


def test_profile_overlays_key_by_key() -> None:
    """A profile merges over the base: tables key by key, other values replaced."""
    cfg = build(BASE, profile="ci")
    assert cfg.mode == "multi_process"
    assert cfg.services["api"].startup_timeout == 60
    assert set(cfg.services["api"].env) == {"DB", "LOG"}


def test_profile_that_changes_kind_drops_old_keys() -> None:
    """A profile setting url turns the service external and drops the app key."""
    cfg = build(BASE, profile="staging")
    api = cfg.services["api"]
    assert api.kind == "url" and api.url == "http://127.0.0.1:9000" and api.port == 9000
    assert cfg.graph["api"] == ()  # an external service's dependencies are not started


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("127.0.0.1", "http://127.0.0.1:8000"),
        ("localhost", "http://localhost:8000"),
        ("0.0.0.0", "http://127.0.0.1:8000"),  # bound everywhere, reached on loopback
        ("::1", "http://[::1]:8000"),
        ("::", "http://[::1]:8000"),
    ],
)
def test_client_url(host: str, expected: str) -> None:
    """The URL a client uses: wildcard binds reached on loopback, IPv6 bracketed."""
    assert client_url(host, 8000) == expected


def test_url_placeholders_of_a_wildcard_and_an_ipv6_service() -> None:
    """${url} and ${services.X.url} are usable URLs (they were http://::1:8000, http://0.0.0.0:...)
    while ${host} stays the address to bind."""
    cfg = build("""
        [services.a]
        command = ["x", "--bind", "${host}", "${url}"]
        host = "::"
        port = 8001
        [services.b]
        command = ["y", "${services.a.url}"]
        host = "0.0.0.0"
        port = 8002
        depends_on = ["a"]
        health = { http = "/health" }
    """)
    assert cfg.services["a"].command == ("x", "--bind", "::", "tcp://[::1]:8001")  # not known to be http
    assert cfg.services["b"].command == ("y", "tcp://[::1]:8001")
    assert cfg.services["b"].url == "http://127.0.0.1:8002"
    assert cfg.services["b"].health.url == "http://127.0.0.1:8002/health"


@pytest.mark.parametrize(
    ("url", "environ", "expected"),
    [
        ("http://127.0.0.1:9000", {}, ("127.0.0.1", "9000", "http://127.0.0.1:9000")),
        ("https://api.example.com/v1/", {}, ("api.example.com", "443", "https://api.example.com/v1")),
        ("http://${env.STAGING_HOST}:8080", {"STAGING_HOST": "10.0.0.7"}, ("10.0.0.7", "8080", "http://10.0.0.7:8080")),
    ],
)
def test_an_external_services_address_in_placeholders(url: str, environ: dict[str, str],
                                                     expected: tuple[str, str, str]) -> None:
    """A dependent can name an external service's host, port and url (the url was "no port")."""
    cfg = build(f"""
        [services.api]
        url = "{url}"
        [services.client]
        command = ["x", "${{services.api.host}}", "${{services.api.port}}", "${{services.api.url}}"]
        depends_on = ["api"]
    """, environ=environ)
    assert cfg.services["client"].command[1:] == expected


@pytest.mark.parametrize(
    ("environ", "kwargs", "ini", "expected_mode", "expected_timeout"),
    [
        ({}, {}, {}, "auto", 30),
        ({"LAUNCHER_MODE": "single_process"}, {}, {}, "single_process", 30),
        ({"LAUNCHER_MODE": "single_process"}, {"mode": "multi_process"}, {}, "multi_process", 30),
        ({}, {}, {"mode": "multi_process"}, "multi_process", 30),
        ({"LAUNCHER_MODE": "single_process"}, {}, {"mode": "multi_process"}, "single_process", 30),
        ({"LAUNCHER_TIMEOUT": "5"}, {}, {}, "auto", 5),
        ({"LAUNCHER_PROFILE": "ci"}, {}, {}, "multi_process", 60),
        ({"LAUNCHER_PROFILE": "ci", "LAUNCHER_TIMEOUT": "7"}, {}, {}, "multi_process", 7),
        ({"LAUNCHER_MODE": "auto_detect"}, {}, {}, "auto", 30),
        ({}, {"mode": "auto_detect"}, {}, "auto", 30),
        ({}, {}, {"mode": "auto_detect"}, "auto", 30),
    ],
)
def test_precedence(environ: dict[str, str], kwargs: dict[str, Any], ini: dict[str, Any],
                    expected_mode: str, expected_timeout: float) -> None:
    """Option > LAUNCHER_* > ini > profile > file > defaults."""
    cfg = build(BASE, environ=environ, ini=ini, **kwargs)
    assert cfg.mode == expected_mode
    assert cfg.services["api"].startup_timeout == expected_timeout


def test_launcher_variables_come_from_the_given_environ_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """parse() reads the mapping it is given and leaves os.environ alone (other threads use it)."""
    monkeypatch.setenv("LAUNCHER_MODE", "fast")  # would be an error if os.environ were read
    monkeypatch.setenv("LAUNCHER_TIMEOUT", "9")
    before = dict(os.environ)
    cfg = build(BASE, environ={"LAUNCHER_MODE": "multi_process"})
    assert cfg.mode == "multi_process" and cfg.services["api"].startup_timeout == 30
    assert dict(os.environ) == before


ERRORS = [
    # (config text, kwargs, fragments that must all appear in the message)
    ("[services.a]\ncommand = ['x']\nhelth = { tcp = true }\n", {},
     ["launcher.toml", "service 'a'", "unknown key 'helth'", "did you mean 'health'"]),
    ("[services.a]\ncommand = ['x']\nport = 'eighty'\n", {}, ["service 'a'", "key 'port'", "'eighty'"]),
    ("[services.a]\ncommand = ['x']\nretries = 0\n", {}, ["service 'a'", "key 'retries'"]),
    ("[services.a]\ncommand = ['x']\ndepends_on = ['b']\n", {}, ["service 'a'", "depends_on", "'b'"]),
    ("[services.a]\ncommand = ['x']\ndepends_on = ['b']\n[services.b]\ncommand = ['y']\ndepends_on = ['a']\n",
     {}, ["dependency cycle: a -> b -> a"]),
    ("[services.a]\ncommand = ['x', '${nope}']\n", {}, ["service 'a'", "key 'command'", "unknown placeholder '${nope}'"]),
    ("[services.a]\ncommand = ['x']\n[services.b]\ncommand = ['${services.a.port}']\n", {},
     ["service 'b'", "not among this service's dependencies", "add 'a' to depends_on"]),
    ("[services.a]\ncommand = ['x']\n", {"profile": "cii"}, ["unknown profile 'cii'", "the file defines no profiles"]),
    (BASE, {"profile": "cii"}, ["unknown profile 'cii'", "did you mean 'ci'", "known profiles: ci, staging"]),
    ("[services.a]\napp = 'm:app'\ncommand = ['x']\n", {}, ["service 'a'", "exactly one of app"]),
    ("[services.a]\n", {}, ["service 'a'", "exactly one of app"]),
    ("[services.'a b']\ncommand = ['x']\n", {}, ["'a b'", "letters, digits"]),
    ("[launcher]\nmode = 'fast'\n", {}, ["key 'launcher.mode'", "'fast'"]),
    ("[launcher]\nmodee = 'auto'\n", {}, ["unknown key 'modee'", "did you mean 'mode'"]),
    ("[launcher]\npreload = ['psycopg', 'redis asyncio']\n", {},
     ["key 'launcher.preload'", "'redis asyncio' is not a module name", "'redis.asyncio'"]),
    ("[servics.a]\ncommand = ['x']\n", {}, ["unknown top-level table 'servics'", "did you mean 'services'"]),
    ("[services.a]\ncommand = ['x', '${env.UL_UNSET_VAR}']\n", {}, ["UL_UNSET_VAR is not set", ":-value"]),
    ("[services.a]\ncommand = ['x']\nstop_signal = 'SIGFOO'\n", {}, ["unknown signal 'SIGFOO'"]),
    # A number that is no signal: the stop raised EINVAL and orphaned the service (issue 11 item 10).
    ("[services.a]\ncommand = ['x']\nstop_signal = 99\n", {},
     ["service 'a'", "key 'stop_signal'", "99 is not a signal", "SIGTERM", "15"]),
    ("[services.a]\ncommand = ['x']\nstop_signal = 0\n", {}, ["key 'stop_signal'", "0 is not a signal"]),
    ("[services.a]\ncommand = ['x']\nstop_signal = -15\n", {}, ["key 'stop_signal'", "-15 is not a signal"]),
    ("[services.a]\ncommand = ['x']\nstop_signal = 'SIG_DFL'\n", {}, ["key 'stop_signal'", "unknown signal"]),
    ("[services.a]\ncommand = ['x']\nstop_signal = true\n", {}, ["key 'stop_signal'"]),
    ("[services.a]\ncommand = ['x']\nhealth = { tcp = true }\n", {}, ["tcp probe needs a port"]),
    ("[services.a]\ncommand = ['x']\nhealth = { http = '/h', tcp = true }\n", {}, ["set exactly one of http"]),
    ("[services.a]\ncommand = ['x']\nhealth = { log = '([' }\n", {}, ["not a valid regex"]),
    ("[services.a]\ncommand = ['x']\ntask = true\nhealth = { tcp = true }\n", {}, ["a task has no health probe"]),
    # SPEC 10: the monitor's keys and the http table.
    ("[services.a]\ncommand = ['x']\nport = 1\nhealth = { tcp = true, interval = -1 }\n", {},
     ["service 'a'", "key 'health.interval'", "greater than or equal to 0"]),
    ("[services.a]\ncommand = ['x']\nport = 1\nhealth = { tcp = true, failure_threshold = 0 }\n", {},
     ["key 'health.failure_threshold'", "greater than or equal to 1"]),
    ("[services.a]\ncommand = ['x']\nport = 1\nhealth = { http = { path = '/h', statuses = [200] } }\n", {},
     ["unknown key 'statuses'", "did you mean 'status'"]),
    ("[services.a]\ncommand = ['x']\nport = 1\nhealth = { http = { path = '/h', status = [700] } }\n", {},
     ["health.http.status", "less than or equal to 599"]),
    ("[services.a]\ncommand = ['x']\nport = 1\nhealth = { http = { path = '/h', body = '([' } }\n", {},
     ["body pattern '([' is not a valid regex"]),
    ("[services.a]\ncommand = ['x']\nport = 1\nhealth = { http = { path = '/h', key = 'k.pem' } }\n", {},
     ["key is the private key of a client cert: set cert too"]),
    ("[services.a]\ncommand = ['x']\nport = 1\nhealth = { http = { path = '/h', ca_file = 'no-ca.pem' } }\n", {},
     ["service 'a'", "key 'health.http.ca_file'", "no-ca.pem is not a file", "PEM file"]),
    ("[services.a]\ncommand = ['x']\nport = 1\nhealth = { http = 'health' }\n", {},
     ["key 'health.http'", "neither a path (/health) nor an http(s) URL"]),
    ("[services.a]\ncommand = ['x']\n", {"environ": {"LAUNCHER_MODE": "turbo"}}, ["LAUNCHER_MODE", "'turbo'"]),
    ("[services.a]\ncommand = ['x']\n[profiles.ci.services.b]\nport = 1\n", {"profile": "ci"},
     ["profile 'ci' overrides service 'b'"]),
    ("[services.a]\ncommand = ['x']\ninterface = 'wsgi'\n", {},
     ["service 'a'", "key 'interface'", "only for app services", "remove interface"]),
    ("[services.a]\nurl = 'http://127.0.0.1:9'\ninterface = 'asgi'\n", {}, ["key 'interface'", "a url"]),
    ("[services.a]\napp = 'm:app'\ninterface = 'rsgi'\n", {}, ["service 'a'", "key 'interface'", "'rsgi'"]),
]


@pytest.mark.parametrize(("text", "kwargs", "fragments"), ERRORS)
def test_config_mistakes_are_one_clear_message(text: str, kwargs: dict[str, Any], fragments: list[str]) -> None:
    """Each SPEC 1 mistake raises a ConfigError naming where, what and (usually) the fix."""
    with pytest.raises(ConfigError) as info:
        build(text, **kwargs)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, message
    assert info.value.exit_code == 2


def test_toml_syntax_error_names_the_line(tmp_path: Path) -> None:
    """A TOML syntax error names the file and the line."""
    path = tmp_path / "launcher.toml"
    path.write_text("[services.a]\ncommand = = 1\n[launcher]\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert str(path) in str(info.value) and "line 2" in str(info.value)


def test_missing_file() -> None:
    """A missing file is a ConfigError with a fix, not a FileNotFoundError."""
    with pytest.raises(ConfigError, match="file not found"):
        load_config("/nonexistent/launcher.toml", environ={})


def test_placeholders_never_split_arguments() -> None:
    """A substituted value stays one argv element: spaces and shell syntax are not interpreted."""
    cfg = build("[services.a]\ncommand = \"echo ${env.HOSTILE}\"\n",
                environ={"HOSTILE": "x; rm -rf / $(whoami) 'q'"})
    assert cfg.services["a"].command == ("echo", "x; rm -rf / $(whoami) 'q'")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a$$b", "a$b"),
        ("${name}-${host}", "svc-127.0.0.1"),
        ("${tmp}", "/tmp/ul-test/svc"),
        ("${env.UL_X:-dflt}", "dflt"),
    ],
)
def test_placeholder_values(text: str, expected: str) -> None:
    """Each placeholder form expands as documented."""
    cfg = build(f"[services.svc]\ncommand = ['{text}']\n")
    assert cfg.services["svc"].command == (expected,)


def test_tmpfs_puts_tmp_in_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    """tmpfs = true moves that service's ${tmp} to /dev/shm (same session name); others stay."""
    from pytest_unified_launcher import config

    monkeypatch.setattr(config, "MEMORY_MIN_FREE", 0)  # whatever room this machine's /dev/shm has
    cfg = build("""
        [services.db]
        command = ['postgres', '-D', '${tmp}/data']
        tmpfs = true
        [services.cache]
        command = ['redis-server', '--dir', '${tmp}']
    """)
    assert cfg.services["db"].command == ("postgres", "-D", "/dev/shm/ul-test/db/data")
    assert cfg.services["cache"].command == ("redis-server", "--dir", "/tmp/ul-test/cache")


def test_tmpfs_falls_back_to_disk_when_memory_is_short(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where /dev/shm has less room than MEMORY_MIN_FREE (a container's 64 MB), ${tmp} stays on disk."""
    from pytest_unified_launcher import config

    monkeypatch.setattr(config, "MEMORY_MIN_FREE", 1 << 62)
    cfg = build("[services.db]\ncommand = ['postgres', '-D', '${tmp}/data']\ntmpfs = true\n")
    assert cfg.services["db"].command == ("postgres", "-D", "/tmp/ul-test/db/data")


def test_ports_only_where_needed() -> None:
    """A command service gets a port only if it sets one or uses ${port}; a task gets none."""
    cfg = build("""
        [services.a]
        command = ['sleep', '1']
        [services.b]
        command = ['srv', '${port}']
        [services.c]
        command = ['migrate']
        task = true
        [services.d]
        command = ['srv']
        port = 7001
    """)
    assert cfg.services["a"].port is None and cfg.services["a"].health.kind == "alive"
    assert cfg.services["b"].port is not None and cfg.services["b"].health.kind == "tcp"
    assert cfg.services["c"].port is None and cfg.services["c"].health.kind == "exit"
    assert cfg.services["d"].port == 7001 and not cfg.services["d"].port_auto


def test_test_env_sees_every_service() -> None:
    """[launcher.test_env] may name any service's address."""
    cfg = build(BASE + '\n[launcher.test_env]\nAPI = "${services.api.url}/v1"\n'.replace("[launcher.test_env]", "[launcher.test_env]"))
    assert cfg.test_env["API"] == cfg.services["api"].url + "/v1"


@pytest.mark.parametrize(
    ("mode", "shared", "keep", "conflict", "expected", "subprocess_apps"),
    [
        ("auto", False, False, False, "single_process", False),
        ("auto", True, False, False, "multi_process", True),
        ("auto", False, True, False, "multi_process", True),
        ("auto", False, False, True, "multi_process", True),
        ("single_process", True, False, False, "single_process", True),
        ("multi_process", False, False, False, "multi_process", True),
    ],
)
def test_resolve_mode(mode: str, shared: bool, keep: bool, conflict: bool, expected: str, subprocess_apps: bool) -> None:
    """auto picks single_process unless xdist sharing, --launcher-keep or an env conflict forbids it."""
    extra = '[services.b]\napp = "m:b"\nenv = { X = "2" }\n' if conflict else ""
    cfg = build(f'[launcher]\nmode = "{mode}"\n[services.a]\napp = "m:a"\nenv = {{ X = "1" }}\n{extra}')
    because = SHARED_WORKERS if shared else KEEP if keep else None
    got, reason, as_sub = resolve_mode(cfg, subprocess_apps_because=because)
    assert (got, as_sub) == (expected, subprocess_apps)
    assert reason and (because is None or because in reason)


@pytest.mark.parametrize(
    ("mode", "as_root", "expected", "subprocess_apps"),
    [
        ("auto", True, "multi_process", True),
        ("auto", False, "single_process", False),  # not root: `user` does not apply
        ("single_process", True, "single_process", True),
    ],
)
def test_app_with_a_user_runs_as_a_subprocess_under_root(mode: str, as_root: bool, expected: str,
                                                         subprocess_apps: bool) -> None:
    """An app with `user` cannot run as that user inside the test process, so it is a subprocess."""
    cfg = build(f'[launcher]\nmode = "{mode}"\n[services.a]\napp = "m:a"\nuser = "postgres"\n')
    got, reason, as_sub = resolve_mode(cfg, as_root=as_root)
    assert (got, as_sub) == (expected, subprocess_apps)
    assert ("app 'a' runs as user postgres" in reason) == as_root


def test_single_process_env_conflict_is_an_error() -> None:
    """Explicit single_process with two apps setting one variable differently is a config error."""
    cfg = build('[launcher]\nmode = "single_process"\n[services.a]\napp = "m:a"\nenv = { X = "1" }\n'
                '[services.b]\napp = "m:b"\nenv = { X = "2" }\n')
    with pytest.raises(ConfigError, match="set X to different values"):
        resolve_mode(cfg)


def test_relative_paths_resolve_against_the_config_folder(tmp_path: Path) -> None:
    """cwd and state_dir are relative to the config file's folder."""
    path = tmp_path / "launcher.toml"
    path.write_text("[services.a]\ncommand = ['x']\ncwd = 'sub'\n")
    cfg = load_config(path, environ={})
    assert cfg.services["a"].cwd == (tmp_path / "sub").resolve()
    assert cfg.state_dir == (tmp_path / ".launcher").resolve()


def test_pyproject_table(tmp_path: Path) -> None:
    """[tool.unified-launcher] in pyproject.toml is read like a launcher.toml."""
    path = tmp_path / "pyproject.toml"
    path.write_text("[tool.unified-launcher.services.a]\ncommand = ['x']\n")
    assert list(load_config(path, environ={}).services) == ["a"]


def test_auto_ports_are_distinct_and_outside_the_ephemeral_range(tmp_path: Path) -> None:
    """load_config reserves distinct ports below the kernel's ephemeral range."""
    from pytest_unified_launcher import _ports

    path = tmp_path / "launcher.toml"
    path.write_text("".join(f"[services.s{i}]\ncommand = ['x', '${{port}}']\n" for i in range(20)))
    ports = list(load_config(path, environ={}).ports.values())
    other = list(load_config(path, environ={}).ports.values())
    low, high = _ports.ephemeral_range()
    assert len(set(ports + other)) == 40
    assert all(not low <= p <= high for p in ports)


def test_python_placeholder_is_the_launchers_interpreter() -> None:
    """${python} runs Python tasks with the interpreter (and virtualenv) the launcher runs in."""
    import sys

    cfg = build("[services.t]\ncommand = ['${python}', '-m', 'tool']\ntask = true\n")
    assert cfg.services["t"].command == (sys.executable, "-m", "tool")


@pytest.mark.parametrize(("value", "expected"), [
    ("'SIGINT'", signal.SIGINT), ("'int'", signal.SIGINT), ("'sigquit'", signal.SIGQUIT),
    ("2", signal.SIGINT), ("'SIGRTMIN'", signal.SIGRTMIN), (str(int(signal.SIGRTMAX)), signal.SIGRTMAX),
])
def test_stop_signal_names_and_numbers(value: str, expected: int) -> None:
    """stop_signal takes a name (any case, SIG optional) or the number of a real signal."""
    cfg = build(f"[services.a]\ncommand = ['x']\nstop_signal = {value}\n")
    assert cfg.services["a"].stop_signal == int(expected)


@pytest.mark.parametrize(("line", "expected"), [("", None), ("interface = 'asgi'", "asgi"),
                                                 ("interface = 'wsgi'", "wsgi")])
def test_interface_of_an_app(line: str, expected: str | None) -> None:
    """interface = "asgi" | "wsgi" is kept on the app's ServiceConfig; unset it is None (detected)."""
    cfg = build(f"[services.web]\napp = 'flaskapp:app'\n{line}\n")
    assert cfg.services["web"].interface == expected


def test_profile_that_makes_an_app_external_drops_its_interface() -> None:
    """A profile that turns an app into a url service drops interface with app (no error)."""
    cfg = build("""
        [services.web]
        app = 'flaskapp:app'
        interface = 'wsgi'
        [profiles.staging.services.web]
        url = 'http://127.0.0.1:9000'
    """, profile="staging")
    assert cfg.services["web"].kind == "url" and cfg.services["web"].interface is None


def _plant(kind: str, path: Path) -> None:
    """Make ``path`` one of the hostile config files of issue 11 item 11."""
    if kind == "utf8":
        path.write_bytes(b"[services.a]\ncommand = ['caf\xe9']\n")
    elif kind == "inline_tables":
        path.write_text("x = " + "{a = " * 5000 + "1" + "}" * 5000 + "\n")
    elif kind == "arrays":
        path.write_text("x = " + "[" * 100_000 + "]" * 100_000 + "\n")
    elif kind == "dev_zero":
        path.symlink_to("/dev/zero")
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "directory":
        path.mkdir()
    elif kind == "huge":
        path.write_text("# padding\n" * (11 * 1024 * 1024 // 10) + "[services.a]\ncommand = ['x']\n")


BAD_FILES = [
    # (what is planted, fragments of the one-line error)
    ("utf8", ["is not UTF-8", "line 2", "save it as UTF-8"]),
    ("inline_tables", ["nested more than", "line 1", "flatten"]),
    ("arrays", ["nested more than", "line 1", "flatten"]),
    ("dev_zero", ["not a regular file", "character device"]),
    ("fifo", ["not a regular file", "FIFO"]),
    ("directory", ["not a regular file", "directory"]),
    ("huge", ["larger than 10 MiB"]),
]


@pytest.mark.parametrize(("kind", "fragments"), BAD_FILES, ids=[k for k, _ in BAD_FILES])
def test_hostile_config_files_are_one_clear_error(tmp_path: Path, kind: str, fragments: list[str]) -> None:
    """Bad encoding, deep nesting, special files and huge files are one ConfigError naming the file.

    Run in a child with a deadline: on the old code a FIFO hung the read forever.
    """
    import subprocess
    import sys

    path = tmp_path / "launcher.toml"
    _plant(kind, path)
    code = ("import sys\nfrom pytest_unified_launcher.config import load_config\nfrom pytest_unified_launcher.errors "
            "import ConfigError\ntry:\n    load_config(sys.argv[1], environ={})\nexcept ConfigError as exc:\n"
            "    print(exc)\n    sys.exit(exc.exit_code)\n")
    try:
        done = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail(f"reading a {kind} config hung")
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
    message = done.stdout
    assert message.startswith(f"launcher config error in {path}: "), message
    for fragment in fragments:
        assert fragment in message, message


def test_check_exits_2_on_a_file_that_is_not_utf8(tmp_path: Path) -> None:
    """`unified-launcher check` on a non-UTF-8 file: exit 2 and one line, no traceback."""
    import subprocess
    import sys

    path = tmp_path / "launcher.toml"
    _plant("utf8", path)
    done = subprocess.run([sys.executable, "-m", "pytest_unified_launcher", "--config", str(path), "check"],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr and "is not UTF-8" in done.stdout + done.stderr


def test_a_10000_service_chain_parses() -> None:
    """A 10,000-service dependency chain validates (no RecursionError; linear: see benchmarks/core.py)."""
    services: dict[str, Any] = {"s0": {"command": ["srv", "${port}"]}}
    for i in range(1, 10_000):
        services[f"s{i}"] = {"command": ["srv", "${port}", f"${{services.s{i - 1}.url}}"], "depends_on": [f"s{i - 1}"]}
    cfg = parse({"services": services}, source="launcher.toml", environ={},
                allocate_port=_ports(), tmp_root="/tmp/ul-test")
    assert cfg.services["s9999"].depends_on == ("s9998",)
    assert cfg.services["s9999"].command[2] == cfg.services["s9998"].url


def test_a_10000_service_cycle_is_spelled_out() -> None:
    """A cycle through 10,000 services is found without recursion and named from its first service."""
    graph = {f"s{i:05}": (f"s{(i + 1) % 10_000:05}",) for i in range(10_000)}
    with pytest.raises(ConfigError, match=r"dependency cycle: s00000 -> s00001 -> .* -> s09999 -> s00000"):
        graph_mod.validate(graph, source="launcher.toml")


URL_KINDS = [
    # (service table, the scheme of its url and of ${services.x.url}); issue 19 item 5
    ("app = 'm:app'", "http"),
    ("app = 'm:app'\ninterface = 'wsgi'", "http"),
    ("command = ['srv', '${port}']\nhealth = { http = '/health' }", "http"),
    ("command = ['${python}', '-m', 'uvicorn', 'm:app', '--port', '${port}']", "http"),
    ("command = 'gunicorn -b 127.0.0.1:${port} m:app'", "http"),
    ("command = ['${python}', '-m', 'proj.manage', 'runserver', '127.0.0.1:${port}']", "http"),
    ("command = ['postgres', '-D', '${tmp}', '-p', '${port}']", "postgresql"),
    ("command = ['/usr/lib/postgresql/15/bin/postgres', '-p', '${port}']", "postgresql"),
    ("command = ['bin/pg', 'postgres', '-p', '${port}']", "postgresql"),  # the example's wrapper
    ("command = ['pg_ctl', 'start', '-o', '-p ${port}']", "postgresql"),
    ("command = ['my-db', '${port}']\nhealth = { command = ['pg_isready', '-p', '${port}'] }", "postgresql"),
    ("command = 'redis-server --port ${port}'", "redis"),
    ("command = ['valkey-server', '--port', '${port}']", "redis"),
    ("command = ['kv', '${port}']\nhealth = { command = ['redis-cli', '-p', '${port}', 'ping'] }", "redis"),
    ("command = ['srv', '${port}']", "tcp"),
    ("command = ['srv', '${port}']\nhealth = { tcp = true }", "tcp"),
    ("command = ['srv', '${port}']\nscheme = 'amqp'", "amqp"),
    ("command = ['postgres', '-p', '${port}']\nscheme = 'postgres'", "postgres"),
    ("command = ['srv', '${port}']\nscheme = 'https'", "https"),
]


@pytest.mark.parametrize(("table", "scheme"), URL_KINDS)
def test_url_of_each_kind_of_service(table: str, scheme: str) -> None:
    """A service's url (handles, status, ${services.x.url}) has the scheme of what it serves."""
    cfg = build(f"[services.x]\n{table}\n[services.user]\ncommand = ['c', '${{services.x.url}}']\n"
                "depends_on = ['x']\n[launcher.test_env]\nX_URL = '${services.x.url}'\n")
    x = cfg.services["x"]
    assert x.url == f"{scheme}://127.0.0.1:{x.port}"
    assert cfg.services["user"].command[1] == x.url == cfg.test_env["X_URL"]


def test_http_probe_of_a_non_http_service_still_uses_http() -> None:
    """scheme changes the url only: a relative http probe is still an http:// GET on the port."""
    cfg = build("[services.x]\ncommand = ['srv', '${port}']\nscheme = 'amqp'\nhealth = { http = '/up' }\n")
    x = cfg.services["x"]
    assert x.url == f"amqp://127.0.0.1:{x.port}" and x.health.url == f"http://127.0.0.1:{x.port}/up"


def test_services_without_a_port_have_no_url() -> None:
    """A command service without a port, and a task, have no url."""
    cfg = build("[services.a]\ncommand = ['sleep', '9']\n[services.t]\ncommand = ['migrate']\ntask = true\n")
    assert cfg.services["a"].url is None and cfg.services["t"].url is None


def test_the_examples_urls(tmp_path: Path) -> None:
    """The example project: the gateway stays http (agent and test_env use it), the database and cache get theirs."""
    example = Path(__file__).resolve().parent.parent / "example_project" / "launcher.toml"
    cfg = parse(tomllib.loads(example.read_text()), source=example, environ={}, allocate_port=_ports(),
                tmp_root="/tmp/ul-test")
    gateway = cfg.services["api_gateway"]
    assert gateway.url == f"http://127.0.0.1:{gateway.port}" == cfg.test_env["GATEWAY_URL"]
    assert cfg.services["agent"].env["GATEWAY_URL"] == gateway.url
    assert cfg.services["database"].url == f"postgresql://127.0.0.1:{cfg.services['database'].port}"
    assert cfg.services["cache"].url == f"redis://127.0.0.1:{cfg.services['cache'].port}"


@pytest.mark.parametrize(("table", "fragments"), [
    ("url = 'http://127.0.0.1:9'\nscheme = 'redis'", ["key 'scheme'", "url"]),
    ("command = ['x', '${port}']\nscheme = 'not a scheme'", ["key 'scheme'", "'not a scheme'"]),
    ("command = ['x', '${port}']\nscheme = 'redis://'", ["key 'scheme'", "without ://"]),
])
def test_scheme_mistakes(table: str, fragments: list[str]) -> None:
    """scheme is a bare URL scheme, and not for external services (their url has one)."""
    with pytest.raises(ConfigError) as info:
        build(f"[services.x]\n{table}\n")
    for fragment in fragments:
        assert fragment in str(info.value), str(info.value)


# --------------------------------------------------------------------------- [env] and env_file (SPEC 11)

ENV_BASE = """
[env]
DATABASE_URL = "postgresql://127.0.0.1:${services.database.port}/app"
DEBUG = true
[launcher.test_env]
DEBUG = "tests"
[services.database]
command = ["postgres", "-p", "${port}"]
[services.api]
command = ["serve", "${port}"]
depends_on = ["database"]
env = { DEBUG = "api" }
[services.worker]
command = ["work"]
"""


def test_top_level_env_reaches_every_service_and_the_tests_each_own_value_winning() -> None:
    """[env] is written once: every service and test_env get it; their own values win."""
    cfg = build(ENV_BASE)
    url = f"postgresql://127.0.0.1:{cfg.services['database'].port}/app"
    assert {n: s.env["DATABASE_URL"] for n, s in cfg.services.items()} == dict.fromkeys(cfg.services, url)
    assert [cfg.services[n].env["DEBUG"] for n in ("database", "api", "worker")] == ["true", "api", "true"]
    assert cfg.test_env == {"DATABASE_URL": url, "DEBUG": "tests"}


def test_a_profile_may_set_env() -> None:
    cfg = build(ENV_BASE + '[profiles.ci.env]\nDEBUG = "ci"\n', profile="ci")
    assert cfg.services["worker"].env["DEBUG"] == "ci" and cfg.test_env["DEBUG"] == "tests"


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ('X = "${port}"', "unknown placeholder '${port}'"),
        ('X = "${services.nope.url}"', "unknown service 'nope'"),
        ('X = "${env.UNSET_VAR_FOR_TEST}"', "UNSET_VAR_FOR_TEST is not set"),
        ("X = [1]", "env"),
    ],
    ids=["own-port", "unknown-service", "unset-variable", "not-a-value"],
)
def test_env_mistakes_are_one_config_error(env: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=None) as info:
        build(f"[env]\n{env}\n[services.a]\ncommand = ['x']\n")
    assert expected in str(info.value)


def write_project(tmp_path: Path, config: str, files: dict[str, str | bytes]) -> Path:
    for name, content in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(content.encode() if isinstance(content, str) else content)
    path = tmp_path / "launcher.toml"
    path.write_text(textwrap.dedent(config))
    return path


def test_env_files_are_read_in_order_with_env_winning(tmp_path: Path) -> None:
    """dotenv syntax (quotes, export, comments); a later file wins, env wins over files; a bare
    NAME comes from the environment (or is left out); values take the config's placeholders."""
    path = write_project(tmp_path, """
        [services.db]
        command = ["db", "${port}"]
        [services.api]
        command = ["api"]
        depends_on = ["db"]
        env_file = [".env", "sub/.env.test"]
        env = { LEVEL = "from-env" }
    """, {".env": "# defaults\nexport A=1\nB='two words'\nLEVEL=file\nFROM_HOST\nMISSING\n",
          "sub/.env.test": 'A=overridden\nDB="postgresql://x:${services.db.port}/t"\nLITERAL=$$HOME\n'})
    cfg = load_config(path, environ={"FROM_HOST": "host-value"})
    env = cfg.services["api"].env
    assert env["A"] == "overridden" and env["B"] == "two words" and env["LEVEL"] == "from-env"
    assert env["FROM_HOST"] == "host-value" and "MISSING" not in env
    assert env["DB"] == f"postgresql://x:{cfg.services['db'].port}/t" and env["LITERAL"] == "$HOME"


@pytest.mark.parametrize(
    ("env_file", "files", "expected"),
    [
        ('".env.missing"', {}, "env file {root}/.env.missing does not exist"),
        ('"folder"', {"folder/x": ""}, "env file {root}/folder is not a regular file"),
        ('".env"', {".env": b"A=\xff\n"}, "env file {root}/.env is not UTF-8"),
        ('".env"', {".env": "A=${nope}\n"}, "unknown placeholder '${nope}'"),
        ("3", {}, "env_file"),
    ],
    ids=["missing", "folder", "not-utf8", "bad-placeholder", "not-a-path"],
)
def test_env_file_mistakes_name_the_file_and_the_service(tmp_path: Path, env_file: str,
                                                         files: dict[str, str | bytes], expected: str) -> None:
    for name in files:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
    path = write_project(tmp_path, f"[services.api]\ncommand = ['x']\nenv_file = {env_file}\n", files)
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    message = str(info.value)
    assert expected.replace("{root}", str(tmp_path.resolve())) in message and "api" in message


@pytest.mark.parametrize(
    ("service", "expected"),
    [
        ('app = "x:app"\nstop_command = ["true"]', "stop_command is for command services"),
        ('command = ["x"]\nstop_command = []', "the stop command is empty"),
        ('command = ["x"]\nstop_command = "redis-cli -p ${nope}"', "unknown placeholder '${nope}'"),
    ],
    ids=["app", "empty", "placeholder"],
)
def test_stop_command_mistakes(service: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        build(f"[services.svc]\n{service}\n")
    assert expected in str(info.value)


def test_stop_command_takes_placeholders() -> None:
    cfg = build('[services.cache]\ncommand = ["redis-server", "--port", "${port}"]\n'
                'stop_command = "redis-cli -p ${port} shutdown nosave"\n')
    cache = cfg.services["cache"]
    assert cache.stop_command == ("redis-cli", "-p", str(cache.port), "shutdown", "nosave")


DEPS = """
[services.db]
command = ["db"]
[services.migrate]
command = ["migrate"]
task = true
[services.api]
command = ["api"]
depends_on = {deps}
"""


@pytest.mark.parametrize(
    ("deps", "expected"),
    [
        ('["db", "migrate"]', [("db", "healthy", True, False), ("migrate", "completed", True, False)]),
        ('[{ service = "db", condition = "started" }]', [("db", "started", True, False)]),
        ('[{ service = "db", condition = "service_healthy", restart = true }]', [("db", "healthy", True, True)]),
        ('[{ service = "migrate", condition = "service_completed_successfully" }]',
         [("migrate", "completed", True, False)]),
        ('[{ service = "search", required = false }, "db"]', [("db", "healthy", True, False)]),
        ('["db", "db", { service = "db" }]', [("db", "healthy", True, False)]),
    ],
    ids=["plain-names", "started", "compose-healthy-restart", "compose-completed", "optional-missing", "repeated"],
)
def test_depends_on_entries_resolve_with_their_conditions(deps: str, expected: list[tuple[str, str, bool, bool]]) -> None:
    """A plain name waits for healthy (completed for a task); tables say the condition, compose's
    names included; an optional dependency the config lacks is left out and noted."""
    api = build(DEPS.format(deps=deps)).services["api"]
    assert [(d.service, d.condition, d.required, d.restart) for d in api.dependencies] == expected
    assert api.depends_on == tuple(e[0] for e in expected)
    assert api.skipped == (("search",) if "search" in deps else ())


@pytest.mark.parametrize(
    ("deps", "expected"),
    [
        ('[{ service = "db", condition = "completed" }]', "condition 'completed' on 'db', which is a long-running"),
        ('[{ service = "migrate", condition = "healthy" }]', "condition 'healthy' on 'migrate', which is a task"),
        ('[{ service = "db", condition = "ready" }]', "condition"),
        ('[{ service = "nope" }]', "nope"),
        ('["db", { service = "db", condition = "started" }]', "depends on 'db' twice, differently"),
        ('[{ condition = "started" }]', "service"),
    ],
    ids=["completed-on-service", "healthy-on-task", "unknown-condition", "unknown-required", "twice", "no-service"],
)
def test_depends_on_mistakes(deps: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        build(DEPS.format(deps=deps))
    assert expected in str(info.value) and "api" in str(info.value)


# --------------------------------------------------------------------------- replicas (SPEC 11)

REPLICAS = """
[services.cache]
command = ["redis-server", "--port", "${port}"]
[services.worker]
command = ["work", "--id", "${replica}", "--name", "${name}", "--port", "${port}", "--cache", "${services.cache.port}"]
replicas = 3
depends_on = [{ service = "cache", condition = "started" }]
[services.api]
command = ["api", "${services.worker-1.url}"]
depends_on = ["worker"]
"""


def test_replicas_are_instances_with_their_own_ports_and_index() -> None:
    """replicas = 3: worker-0 .. worker-2, each its own port and ${replica}; a dependency on
    worker is one on each instance; services["worker"] names the group."""
    cfg = build(REPLICAS)
    members = ("worker-0", "worker-1", "worker-2")
    assert cfg.groups == {"worker": members} and set(cfg.services) == {"cache", "api", *members}
    ports = {cfg.services[m].port for m in members}
    assert len(ports) == 3 and cfg.services["cache"].port not in ports
    for i, m in enumerate(members):
        svc = cfg.services[m]
        assert svc.command == ("work", "--id", str(i), "--name", m, "--port", str(svc.port),
                               "--cache", str(cfg.services["cache"].port))
        assert [(d.service, d.condition) for d in svc.dependencies] == [("cache", "started")]
    assert cfg.services["api"].depends_on == members
    assert cfg.services["api"].command[1] == cfg.services["worker-1"].url
    assert cfg.expand(["api", "worker"]) == ["api", *members]
    assert build(BASE).groups == {}


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ('[services.x]\ncommand = ["x", "${services.worker.url}"]\ndepends_on = ["worker"]',
         "'worker' has 3 replicas, each with its own address"),
        ('[services.worker-1]\ncommand = ["x"]', "replica 'worker-1' of 'worker' has the name of another service"),
        ('[profiles.p.services.worker]\nreplicas = 0', "replicas"),
    ],
    ids=["group-address", "name-clash", "zero"],
)
def test_replica_mistakes(extra: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        build(REPLICAS + extra, profile="p" if "profiles" in extra else None)
    assert expected in str(info.value)


@pytest.mark.parametrize(("health", "kind", "interval", "threshold", "monitored"), [
    ("", "tcp", 2.0, 3, True),
    ("health = { interval = 0 }", "tcp", 0.0, 3, False),
    ("health = { interval = 0.5, failure_threshold = 5 }", "tcp", 0.5, 5, True),
    ("health = { http = '/h', interval = 10 }", "http", 10.0, 3, True),
    ("health = { log = 'ready' }", "log", 2.0, 3, False),
    ("health = { notify = true }", "notify", 2.0, 3, False),
])
def test_health_monitor_settings(health: str, kind: str, interval: float, threshold: int, monitored: bool) -> None:
    """interval (default 2 s, 0 = off) and failure_threshold (default 3) on any probe, the
    default probe included; log and notify probes have nothing to ask again once ready."""
    config = build(f"[services.a]\ncommand = ['x']\nport = 1\n{health}\n")
    check = config.services["a"].health
    assert (check.kind, check.interval, check.failure_threshold, check.monitored) == (kind, interval, threshold, monitored)


def test_an_http_table_resolves_statuses_body_headers_and_tls_files(tmp_path: Path) -> None:
    """health.http as a table: its path joins the service's URL, TLS files resolve against the
    config's folder, header values take placeholders."""
    (tmp_path / "ca.pem").write_text("x")
    path = tmp_path / "launcher.toml"
    path.write_text("[services.a]\ncommand = ['x']\nport = 1\n"
                    "health = { http = { path = '/h', status = [200, 204], body = 'ok', "
                    "headers = { X-Port = '${port}' }, ca_file = 'ca.pem' } }\n")
    from pytest_unified_launcher import load_config

    check = load_config(path, environ={}).services["a"].health
    assert check.url == "http://127.0.0.1:1/h" and check.status == (200, 204) and check.body == "ok"
    assert check.headers == (("X-Port", "1"),) and check.ca_file == tmp_path / "ca.pem"
    assert "expecting 200/204" in check.describe()
