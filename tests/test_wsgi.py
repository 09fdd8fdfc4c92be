"""WSGI apps (Flask, Django's WSGIHandler, plain callables) are detected and served in both modes."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import textwrap
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import APPS, PY
from pytest_unified_launcher import ServiceStartupError, UnifiedLauncher, load_config
from pytest_unified_launcher._asgi import AppImportError, detect_interface, import_target, resolve_app

MODES = ["single_process", "multi_process"]


@pytest.fixture(autouse=True)
def _isolated_imports(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Apps are imported from the config's folder: undo sys.path and the imports after each test."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    yield
    for name in ("flaskapp", "wsgi_shapes"):
        sys.modules.pop(name, None)


def get(url: str | None, path: str = "/health") -> tuple[int, str]:
    assert url is not None, "the service has no URL"
    with urllib.request.urlopen(url + path, timeout=5) as resp:
        return resp.status, resp.read().decode()


def project(tmp_path: Path, services: str) -> Path:
    """A launcher.toml with ``services`` beside copies of the test apps; returns the config path."""
    for name in ("flaskapp.py", "wsgi_shapes.py"):
        shutil.copy(APPS / name, tmp_path / name)
    path = tmp_path / "launcher.toml"
    path.write_text('[launcher]\nstate_dir = "state"\nstartup_timeout = 10\n' + textwrap.dedent(services))
    return path


@pytest.mark.parametrize(
    ("target", "interface"),
    [
        ("flaskapp:app", "wsgi"),
        ("flaskapp:create_app", "wsgi"),
        ("wsgi_shapes:plain_wsgi", "wsgi"),
        ("wsgi_shapes:WSGIClass", "wsgi"),
        ("wsgi_shapes:wsgi_instance", "wsgi"),
        ("wsgi_shapes:wrapped_wsgi", "wsgi"),
        ("wsgi_shapes:asgi3", "asgi3"),
        ("wsgi_shapes:asgi3_sync_wrapper", "asgi3"),
        ("wsgi_shapes:ASGI2App", "asgi2"),
        ("web:app", "asgi3"),
    ],
)
def test_interface_is_detected_from_how_the_app_is_called(target: str, interface: str) -> None:
    """Flask, WSGI functions, classes and objects are WSGI; async (scope, receive, send) is ASGI 3."""
    assert resolve_app(import_target(target, APPS), target)[1] == interface


def test_django_handlers_are_detected(tmp_path: Path) -> None:
    """Django's WSGIHandler is WSGI and its ASGIHandler ASGI 3 (judged in a fresh interpreter: Django
    settings are process-wide)."""
    code = textwrap.dedent("""
        import os, sys
        sys.path.insert(0, sys.argv[1])
        os.environ["DJPROJ_DB"] = sys.argv[2]
        from pytest_unified_launcher._asgi import import_target, resolve_app
        print(" ".join(resolve_app(import_target(t))[1] for t in ("djproj.wsgi:application", "djproj.asgi:application")))
    """)
    out = subprocess.run([PY, "-c", code, str(APPS), str(tmp_path / "db.sqlite3")], capture_output=True, text=True,
                         check=True).stdout
    assert out.split() == ["wsgi", "asgi3"]


@pytest.mark.parametrize(
    ("target", "interface", "message"),
    [
        ("wsgi_shapes:not_an_app", None, "'wsgi_shapes:not_an_app' is neither an ASGI nor a WSGI app: it is a NotAnApp "
         "whose parameters cannot be read (*args, or compiled); an ASGI app is called as (scope, receive, send), a WSGI "
         "app as (environ, start_response); if it is one, say which with interface = \"asgi\" or \"wsgi\" on the service"),
        ("wsgi_shapes:four_args", None, "'wsgi_shapes:four_args' is neither an ASGI nor a WSGI app: it is a function "
         "called with 4 positional arguments;"),
        ("wsgi_shapes:asgi3", "wsgi", "'wsgi_shapes:asgi3' has interface = \"wsgi\" but it is a function called with 3 "
         "positional arguments, which makes it ASGI; remove interface = \"wsgi\""),
    ],
)
def test_neither_asgi_nor_wsgi_is_one_clear_message(target: str, interface: str | None, message: str) -> None:
    """A callable that fits neither interface is named, with how each is called and the fix."""
    with pytest.raises(AppImportError) as info:
        resolve_app(import_target(target, APPS), target, interface)
    assert str(info.value) == message or str(info.value).startswith(message)


def test_interface_key_says_it_outright() -> None:
    """interface = "wsgi" serves a callable detection cannot read; "asgi" picks ASGI 2 or 3 itself."""
    not_an_app = import_target("wsgi_shapes:not_an_app", APPS)
    assert resolve_app(not_an_app, "x", "wsgi")[1] == "wsgi"
    assert resolve_app(not_an_app, "x", "asgi")[1] == "asgi3"
    assert resolve_app(import_target("wsgi_shapes:ASGI2App", APPS), "x", "asgi")[1] == "asgi2"
    assert detect_interface(import_target("wsgi_shapes:plain_wsgi", APPS))[0] == "wsgi"


@pytest.mark.parametrize("mode", MODES)
async def test_flask_and_wsgi_callables_serve_in_both_modes(tmp_path: Path, mode: str, no_orphans: None) -> None:
    """A Flask app, a factory returning one and a bare WSGI function answer 200 through their handle's url."""
    path = project(tmp_path, """
        [services.flask]
        app = "flaskapp:app"
        health = { http = "/health" }
        env = { GREETING = "hello" }
        [services.factory]
        app = "flaskapp:create_app"
        [services.bare]
        app = "wsgi_shapes:plain_wsgi"
        health = { http = "/" }
        [services.asgi_wrapper]
        app = "wsgi_shapes:asgi3_sync_wrapper"
        health = { http = "/" }
    """)
    async with UnifiedLauncher(load_config(path, mode=mode, environ={})) as launcher:
        handles = await launcher.start()
        status, body = get(handles["flask"].url)
        assert status == 200 and json.loads(body)["greeting"] == "hello"
        assert json.loads(get(handles["factory"].url)[1])["kind"] == "flask"
        assert get(handles["bare"].url, "/") == (200, "plain wsgi")
        assert get(handles["asgi_wrapper"].url, "/") == (200, "asgi3")
        assert handles["flask"].runner == ("in_process" if mode == "single_process" else "subprocess")


@pytest.mark.parametrize("mode", MODES)
async def test_neither_asgi_nor_wsgi_fails_at_start(tmp_path: Path, mode: str, no_orphans: None) -> None:
    """An app that is neither ASGI nor WSGI fails its start at once with the detection's message."""
    path = project(tmp_path, """
        [services.odd]
        app = "wsgi_shapes:four_args"
        health = { http = "/health" }
    """)
    async with UnifiedLauncher(load_config(path, mode=mode, environ={})) as launcher:
        with pytest.raises(ServiceStartupError) as info:
            await launcher.start()
    assert "'wsgi_shapes:four_args' is neither an ASGI nor a WSGI app" in str(info.value)
    assert "did not become healthy" not in str(info.value)


def test_check_reports_an_app_that_is_neither(tmp_path: Path) -> None:
    """`check` imports each app in a fresh interpreter and reports one that is neither ASGI nor WSGI."""
    project(tmp_path, """
        [services.flask]
        app = "flaskapp:app"
        [services.odd]
        app = "wsgi_shapes:four_args"
    """)
    result = subprocess.run([PY, "-m", "pytest_unified_launcher", "check"], cwd=tmp_path, capture_output=True,
                            text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "service 'odd'" in lines[0] and "app" in lines[0], result.stderr
    assert "'wsgi_shapes:four_args' is neither an ASGI nor a WSGI app" in lines[0]


def test_check_names_each_apps_interface(tmp_path: Path) -> None:
    """`check` says which interface each app speaks, so a wrong guess is seen before a run."""
    project(tmp_path, """
        [services.flask]
        app = "flaskapp:app"
        [services.bare]
        app = "wsgi_shapes:asgi3"
    """)
    result = subprocess.run([PY, "-m", "pytest_unified_launcher", "check"], cwd=tmp_path, capture_output=True,
                            text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "app flask: flaskapp:app is WSGI (served through a2wsgi)" in result.stdout
    assert "app bare: wsgi_shapes:asgi3 is ASGI 3" in result.stdout


def _pytester_project(pytester: pytest.Pytester, app: str, mode: str) -> Any:
    shutil.copytree(APPS / "djproj", pytester.path / "djproj", ignore=shutil.ignore_patterns("__pycache__", "*.sqlite3"))
    pytester.makefile(".toml", launcher=f"""
        [launcher]
        state_dir = "state"
        startup_timeout = 10
        mode = "{mode}"
        [launcher.test_env]
        WEB_URL = "${{services.web.url}}"
        [services.web]
        app = "{app}"
        health = {{ http = "/health" }}
        env = {{ DJPROJ_DB = "${{tmp}}/db.sqlite3" }}
    """)
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    pytester.makepyfile("""
        import json, os, urllib.request
        import pytest

        @pytest.mark.services("web")
        def test_web(services):
            assert services["web"].url == os.environ["WEB_URL"]
            with urllib.request.urlopen(services["web"].url + "/health", timeout=5) as resp:
                assert resp.status == 200
                assert json.loads(resp.read())["kind"] == "django"
    """)
    return pytester


@pytest.mark.parametrize("mode", MODES)
def test_django_wsgi_app_serves_in_both_modes(pytester: pytest.Pytester, mode: str, no_orphans: None) -> None:
    """Django's get_wsgi_application() serves in the test process and as a subprocess (no pytest-django)."""
    _pytester_project(pytester, "djproj.wsgi:application", mode)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:django")
    result.assert_outcomes(passed=1)


@pytest.mark.parametrize("mode", MODES)
def test_interface_key_serves_what_detection_cannot_tell(tmp_path: Path, mode: str, no_orphans: None) -> None:
    """interface = "wsgi" in launcher.toml serves a WSGI callable hidden behind *args in both modes
    (a subprocess app was not told the key); check reports it WSGI too."""
    path = project(tmp_path, """
        [services.star]
        app = "wsgi_shapes:star_wsgi"
        interface = "wsgi"
        health = { http = "/" }
    """)

    async def serve() -> tuple[int, str]:
        async with UnifiedLauncher(load_config(path, mode=mode, environ={})) as launcher:
            handles = await launcher.start()
            return get(handles["star"].url, "/")

    assert asyncio.run(serve()) == (200, "plain wsgi")
    result = subprocess.run([PY, "-m", "pytest_unified_launcher", "check"], cwd=tmp_path, capture_output=True,
                            text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert "app star: wsgi_shapes:star_wsgi is WSGI (served through a2wsgi)" in result.stdout, result.stderr
