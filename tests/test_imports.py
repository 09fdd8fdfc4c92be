"""The static import analysis (_imports) and what it decides: auto runs apps that share a
settings module read under different environments as subprocesses; single_process refuses."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import PY
from pytest_unified_launcher._imports import (
    MAX_FILE_BYTES, Finder, app_modules, closure, module_facts, project_finder, shared_reads,
)


@pytest.mark.parametrize(
    ("source", "reads"),
    [
        ("import os\nX = os.environ['A']", ("A",)),
        ("import os\nX = os.environ.get('A', 'd')", ("A",)),
        ("import os\nX = os.getenv('A')", ("A",)),
        ("import os as o\nX = o.getenv('A')", ("A",)),
        ("from os import environ\nX = environ['A']", ("A",)),
        ("from os import environ as e\nX = e.get('A')", ("A",)),
        ("from os import getenv\nX = getenv('A')", ("A",)),
        ("import os\nDEBUG = 'A' in os.environ", ("A",)),
        ("import os\nif os.environ.get('A'):\n    B = os.environ['B']", ("A", "B")),
        ("import os\nclass C:\n    url = os.environ['A']", ("A",)),
        ("import os\ndef f(x=os.getenv('A')):\n    return os.environ['B']", ("A",)),  # default runs, body not
        ("import os\ndef f():\n    return os.environ['A']", ()),
        ("import os\nf = lambda: os.environ['A']", ()),
        ("import os\nname = 'A'\nX = os.environ[name]", ()),  # not a constant: unknown
        ("environ = {}\nX = environ['A']", ()),  # not os.environ
        ("import os\nX = os.environ.get(f'A{1}')", ()),
        ("this is not python", ()),
        # pydantic-settings: a class instantiated at import reads its fields, upper-cased
        ("from pydantic_settings import BaseSettings\nclass S(BaseSettings):\n    upstream_url: str\n"
         "    debug: bool = False\nsettings = S()", ("DEBUG", "UPSTREAM_URL")),
        ("import pydantic_settings as ps\nclass S(ps.BaseSettings):\n    url: str\n    _p: int = 1\n"
         "    model_config = ps.SettingsConfigDict(env_prefix='app_')\nsettings = S()", ("APP_URL",)),
        ("from pydantic_settings import BaseSettings\nclass S(BaseSettings):\n    url: str\n"
         "    class Config:\n        env_prefix = 'MY_'\ns = S()", ("MY_URL",)),
        ("from pydantic_settings import BaseSettings\nclass S(BaseSettings):\n    url: str\n", ()),  # never made
        ("from pydantic_settings import BaseSettings\nclass S(BaseSettings):\n    url: str\n"
         "def get():\n    return S()", ()),
    ],
)
def test_env_reads_at_import(source: str, reads: tuple[str, ...]) -> None:
    """Variables read while a module is imported: module level, class bodies, defaults; not function bodies."""
    assert module_facts(source, "pkg.mod").env_reads == reads


@pytest.mark.parametrize(
    ("source", "name", "is_package", "imports"),
    [
        ("import a.b, c", "m", False, ("a.b", "c")),
        ("from a import b", "m", False, ("a", "a.b")),
        ("from . import settings", "pkg.main", False, ("pkg", "pkg.settings")),
        ("from .settings import URL", "pkg.main", False, ("pkg.settings", "pkg.settings.URL")),
        ("from .. import x", "pkg.sub.main", False, ("pkg", "pkg.x")),
        ("from .core import y", "pkg", True, ("pkg.core", "pkg.core.y")),
        ("from ... import x", "pkg.main", False, ()),  # past the top: ignored
        ("def f():\n    import lazy", "m", False, ("lazy",)),  # a lazy import still fills sys.modules
    ],
)
def test_imports(source: str, name: str, is_package: bool, imports: tuple[str, ...]) -> None:
    """Absolute names of what a module may import, relative imports resolved against its package."""
    assert module_facts(source, name, is_package=is_package).imports == imports


def _finder(files: dict[str, str]) -> Finder:
    """A finder over ``{"pkg/mod": source}`` (a package is ``pkg/__init__``)."""
    def find(name: str) -> tuple[Path, bytes, bool] | None:
        base = name.replace(".", "/")
        for key, is_package in ((base + "/__init__", True), (base, False)):
            if key in files:
                return Path(key + ".py"), files[key].encode(), is_package
        return None
    return find


PROJECT = {
    "pkg/__init__": "",
    "pkg/settings": "import os\nUPSTREAM_URL = os.environ.get('UPSTREAM_URL')\n",
    "pkg/a": "from fastapi import FastAPI\nfrom pkg import settings\napp = FastAPI()\n",
    "pkg/b": "from .settings import UPSTREAM_URL\nimport fastapi\napp = fastapi.FastAPI()\n",
    "pkg/c": "import os\nTOKEN = os.environ['TOKEN']\n",
    "conf": "from pydantic_settings import BaseSettings\nclass Settings(BaseSettings):\n    db_url: str\n",
    "uses_conf": "from conf import Settings\nsettings = Settings()\n",
}


def _modules(app: str) -> dict[str, tuple[str, ...]]:
    return {name: info.env_reads for name, info in closure(app, _finder(PROJECT)).items()}


def test_closure_follows_project_modules_only() -> None:
    """The walk covers the app's package and what it imports from the project, not third parties."""
    assert _modules("pkg.a") == {"pkg": (), "pkg.a": (), "pkg.settings": ("UPSTREAM_URL",)}
    assert _modules("pkg.b") == {"pkg": (), "pkg.b": (), "pkg.settings": ("UPSTREAM_URL",)}


def test_settings_class_instantiated_in_another_module() -> None:
    """A settings class imported from a project module and instantiated at import reads its fields there."""
    assert _modules("uses_conf")["uses_conf"] == ("DB_URL",)


def test_closure_is_bounded() -> None:
    """A project past the file bound is analysed as far as the bound goes."""
    files = {f"m{i}": f"import m{i + 1}" for i in range(100)}
    assert len(closure("m0", _finder(files), max_files=10)) == 10


A = {"pkg.settings": "UPSTREAM_URL"}


@pytest.mark.parametrize(
    ("env_a", "env_b", "base", "conflict"),
    [
        ({}, {"UPSTREAM_URL": "http://a"}, {}, True),  # the case: a inherits, b sets
        ({"UPSTREAM_URL": "x"}, {"UPSTREAM_URL": "y"}, {}, True),
        ({"UPSTREAM_URL": "x"}, {"UPSTREAM_URL": "x"}, {}, False),
        ({}, {"UPSTREAM_URL": "x"}, {"UPSTREAM_URL": "x"}, False),  # b sets what a inherits
        ({}, {}, {"UPSTREAM_URL": "x"}, False),
        ({"OTHER": "1"}, {"OTHER": "2"}, {}, False),  # a variable the shared module does not read
    ],
)
def test_shared_reads(env_a: dict[str, str], env_b: dict[str, str], base: dict[str, str], conflict: bool) -> None:
    """Two apps conflict on a shared module when their values of a variable it reads differ."""
    find = _finder(PROJECT)
    got = shared_reads({"a": (closure("pkg.a", find), env_a), "b": (closure("pkg.b", find), env_b)}, base)
    assert [(c.module, c.var, c.first, c.second) for c in got] == ([("pkg.settings", "UPSTREAM_URL", "a", "b")]
                                                                    if conflict else [])


def test_unshared_module_is_no_conflict() -> None:
    """Apps that read one variable in modules of their own do not conflict."""
    find = _finder(PROJECT)
    assert shared_reads({"a": (closure("pkg.c", find), {"TOKEN": "1"}),
                         "b": (closure("pkg.settings", find), {"TOKEN": "2"})}, {}) == []


def test_reader_stays_under_the_root(tmp_path: Path) -> None:
    """Only files under the app directory are read: a link out of it and site-packages are not."""
    root = tmp_path / "root"
    (root / "pkg").mkdir(parents=True)
    (root / "pkg" / "__init__.py").write_text("import os\nX = os.environ['X']\nimport outside, fastapi\n")
    (tmp_path / "outside.py").write_text("import os\nY = os.environ['Y']\n")
    (root / "outside.py").symlink_to(tmp_path / "outside.py")
    (root / "big.py").write_bytes(b"import os\n" + b"#" * MAX_FILE_BYTES + b"\nZ = os.environ['Z']\n")
    find = project_finder(root)
    assert find("outside") is None and find("fastapi") is None and find("pkg") is not None
    assert set(app_modules("pkg:app", root)) == {"pkg"}
    big = find("big")
    assert big is not None and len(big[1]) == MAX_FILE_BYTES  # read up to the bound, no further


# --------------------------------------------------------------------------- end to end

SETTINGS = "import os\nUPSTREAM_URL = os.environ.get('UPSTREAM_URL')\n"
APP_A = """
from fastapi import FastAPI
from pkg import settings

app = FastAPI()

@app.get("/health")
def health():
    return {"ok": True}
"""
APP_B = """
from fastapi import FastAPI, Response
from pkg import settings

app = FastAPI()

@app.get("/health")
def health(response: Response):
    if settings.UPSTREAM_URL is None:  # it kept app a's value: unset
        response.status_code = 503
    return {"upstream": settings.UPSTREAM_URL}
"""


def _project(path: Path, mode: str) -> None:
    (path / "pkg").mkdir()
    (path / "pkg" / "__init__.py").write_text("")
    (path / "pkg" / "settings.py").write_text(SETTINGS)
    (path / "pkg" / "a.py").write_text(APP_A)
    (path / "pkg" / "b.py").write_text(APP_B)
    (path / "launcher.toml").write_text(textwrap.dedent(f"""
        [launcher]
        mode = "{mode}"
        state_dir = "state"
        startup_timeout = 3
        [services.a]
        app = "pkg.a:app"
        health = {{ http = "/health" }}
        [services.b]
        app = "pkg.b:app"
        depends_on = ["a"]
        health = {{ http = "/health" }}
        env = {{ UPSTREAM_URL = "${{services.a.url}}" }}
    """))


TEST = """
import json, urllib.request
import pytest

@pytest.mark.services("b")
def test_b_sees_its_own_upstream(services):
    with urllib.request.urlopen(services["b"].url + "/health", timeout=10) as r:
        assert json.loads(r.read()) == {"upstream": services["a"].url}
"""


def test_auto_runs_apps_sharing_a_settings_module_as_subprocesses(pytester: pytest.Pytester,
                                                                   no_orphans: None) -> None:
    """auto: two apps importing one settings module that reads a variable they set differently
    run as subprocesses, and the mode line names the apps, the module and the variable (in one
    process the second app kept the first's value and failed its health check)."""
    _project(pytester.path, "auto")
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    pytester.makepyfile(test_it=TEST)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*mode: multi_process (auto: apps 'a' and 'b' both import pkg.settings*"
                                 "reads UPSTREAM_URL*"])


def test_single_process_refuses_apps_sharing_a_settings_module(pytester: pytest.Pytester,
                                                               no_orphans: None) -> None:
    """Explicit single_process is a usage error (exit 4) before any test, a config error naming
    the module, the variable and the fix (it waited out b's health check)."""
    _project(pytester.path, "single_process")
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    pytester.makepyfile(test_it=TEST)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*launcher config error in *launcher.toml, service 'b', key 'env.UPSTREAM_URL': "
                                 "in single_process mode, apps 'a' and 'b' both import pkg.settings*UPSTREAM_URL*",
                                 '*fix: use mode = "multi_process" (or "auto"), or give both apps the same UPSTREAM_URL'])
    assert "health check" not in result.stdout.str() + result.stderr.str()
    assert "Traceback" not in result.stdout.str() + result.stderr.str()


def test_check_warns_about_a_shared_settings_module(tmp_path: Path) -> None:
    """`unified-launcher check` warns, one line per conflict, naming apps, module and variable."""
    _project(tmp_path, "auto")
    result = subprocess.run([PY, "-m", "pytest_unified_launcher", "check", "--no-import"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stdout.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "'a' and 'b'" in warnings[0] and "pkg.settings" in warnings[0] \
        and "UPSTREAM_URL" in warnings[0]


APP_FOLLOWS_ENV = """
import os
from fastapi import FastAPI, Response
from pkg import settings

app = FastAPI()

@app.get("/health")
def health(response: Response):
    if settings.UPSTREAM_URL != os.environ.get("UPSTREAM_URL"):  # it kept a value read earlier
        response.status_code = 503
    return {"upstream": settings.UPSTREAM_URL}
"""


async def test_in_process_app_needing_a_module_read_under_another_value_fails_fast(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_orphans: None) -> None:
    """An in-process app whose settings module this process imported earlier under another value of
    a variable it reads fails at once, naming the module (it failed its health check at the timeout)."""
    from pytest_unified_launcher import UnifiedLauncher
    from pytest_unified_launcher.config import load_config
    from pytest_unified_launcher.errors import ServiceStartupError

    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "settings.py").write_text(SETTINGS)
    (tmp_path / "pkg" / "web.py").write_text(APP_FOLLOWS_ENV)
    (tmp_path / "launcher.toml").write_text(textwrap.dedent("""
        [launcher]
        state_dir = "state"
        [services.web]
        app = "pkg.web:app"
        startup_timeout = 3
        health = { http = "/health" }
    """))
    try:
        monkeypatch.setenv("UPSTREAM_URL", "http://one")
        async with UnifiedLauncher(load_config(tmp_path / "launcher.toml", mode="single_process", environ={})) as first:
            await first.start()  # imports pkg.settings with http://one
        monkeypatch.setenv("UPSTREAM_URL", "http://two")
        async with UnifiedLauncher(load_config(tmp_path / "launcher.toml", mode="single_process", environ={})) as second:
            with pytest.raises(ServiceStartupError) as info:
                await second.start()
    finally:
        for name in [n for n in sys.modules if n == "pkg" or n.startswith("pkg.")]:
            del sys.modules[name]
    assert "module pkg.settings was already imported in this process by 'web' with another value of " \
           "UPSTREAM_URL" in str(info.value)
    assert "timed out" not in str(info.value)
