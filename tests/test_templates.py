"""PostgreSQL's cached-template start (the example's bin/pg-init, and what `init` writes): fast
from the second start on, and never fed a template another user planted."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from conftest import PY

from pytest_unified_launcher._templates import pg_init_script

EXAMPLE_BIN = Path(__file__).parent.parent / "example_project" / "bin"
POSTGRES_UID = 101
NOBODY = 65534

DATABASE = """
[launcher]
state_dir = "state"
[services.database]
setup = [["bin/pg-init", "${tmp}/data"]]
command = ["bin/pg", "postgres", "-D", "${tmp}/data", "-p", "${port}", "-k", "${tmp}", "-h", "127.0.0.1"]
user = "postgres"
health = { notify = true }
stop_signal = "SIGINT"
tmpfs = true
env = { TMPDIR = "@SHARED@", XDG_CACHE_HOME = "@CACHE@" }
"""


def cli(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PY, "-m", "pytest_unified_launcher", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=180, stdin=subprocess.DEVNULL)


def _folder(mode: int, uid: int = 0) -> Path:
    """A folder under /tmp that the service user can reach (pytest's own tmp is root's, 0700)."""
    path = Path(tempfile.mkdtemp(prefix="ul-test-", dir="/tmp"))
    os.chown(path, uid, uid if uid else 0)
    path.chmod(mode)
    return path


@pytest.fixture
def place() -> Iterator[dict[str, Path]]:
    """A project reachable by `postgres`, a shared sticky /tmp-like folder, a private cache."""
    if os.geteuid() != 0:
        pytest.skip("acts as a second user: needs root")
    folders = {"project": _folder(0o755), "shared": _folder(0o1777), "cache": _folder(0o700, POSTGRES_UID),
               "victim": _folder(0o755, NOBODY)}
    try:
        yield folders
    finally:
        for path in folders.values():
            shutil.rmtree(path, ignore_errors=True)


def _start_and_stop(project: Path, victim: Path | None = None) -> str:
    """`up --detach` then `down`; returns what database's log said."""
    up = cli(project, "up", "--detach")
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        record = json.loads((project / "state" / "up.json").read_text())
        data = Path(psutil.Process(record["services"]["database"]["pid"]).cwd())  # postgres runs in its data dir
        assert data.name == "data" and (victim is None or victim not in (data, *data.parents)), data
        return Path(record["services"]["database"]["log_path"]).read_text()
    finally:
        down = cli(project, "down")
        assert up.returncode != 0 or down.returncode == 0, down.stderr


def _plant(place: dict[str, Path]) -> Path:
    """Another user's cluster, linked from where the old pg-init looked for its template."""
    victim = place["victim"]
    (victim / "PG_VERSION").write_text("15\n")
    (victim / "secret-table").write_text("someone else's data\n")
    for path in victim.iterdir():
        os.chown(path, NOBODY, NOBODY)
    link = place["shared"] / f"unified-launcher-pg-template-{POSTGRES_UID}"
    link.symlink_to(victim)
    os.chown(link, NOBODY, NOBODY, follow_symlinks=False)
    return link


def _assert_unharmed(link: Path, place: dict[str, Path]) -> None:
    victim = place["victim"]
    assert link.is_symlink() and os.readlink(link) == str(victim)
    assert sorted(p.name for p in victim.iterdir()) == ["PG_VERSION", "secret-table"]
    assert (victim / "secret-table").read_text() == "someone else's data\n"
    assert all(p.stat().st_uid == NOBODY for p in victim.iterdir())
    assert stat.S_IMODE(victim.stat().st_mode) == 0o755 and victim.stat().st_uid == NOBODY


def test_example_pg_init_ignores_a_planted_template_and_caches_privately(place: dict[str, Path],
                                                                         no_orphans: None) -> None:
    """The example's bin/pg-init builds its template in a private cache once and copies it on the
    next start; a template another user planted in the shared temp folder (a link to their
    cluster) is neither used nor touched (the old script copied the link as the data dir)."""
    project = place["project"]
    shutil.copytree(EXAMPLE_BIN, project / "bin")
    (project / "launcher.toml").write_text(
        DATABASE.replace("@SHARED@", str(place["shared"])).replace("@CACHE@", str(place["cache"])))
    link = _plant(place)
    first = _start_and_stop(project, place["victim"])
    assert "pg-init: built the template cache " + str(place["cache"] / "unified-launcher") in first, first
    second = _start_and_stop(project, place["victim"])
    assert "pg-init: copied the cached template" in second and "built the template" not in second, second
    _assert_unharmed(link, place)
    cache = place["cache"] / "unified-launcher"
    assert cache.stat().st_uid == POSTGRES_UID and stat.S_IMODE(cache.stat().st_mode) == 0o700


def test_pg_init_refuses_a_cache_folder_others_can_write(place: dict[str, Path], no_orphans: None) -> None:
    """A cache folder writable by others is not trusted: pg-init goes on to the next private place
    (the user's home) and leaves that folder as it was."""
    project = place["project"]
    shutil.copytree(EXAMPLE_BIN, project / "bin")
    place["cache"].chmod(0o777)
    (project / "launcher.toml").write_text(
        DATABASE.replace("@SHARED@", str(place["shared"])).replace("@CACHE@", str(place["cache"])))
    log = _start_and_stop(project)
    assert "pg-init: copied the cached template" in log and str(place["cache"]) not in log, log
    assert list(place["cache"].iterdir()) == []


def test_init_writes_the_same_pg_init_as_the_example(place: dict[str, Path], no_orphans: None) -> None:
    """`init --with postgres` writes an executable bin/pg-init (the example's script) and its
    second start copies the cached template instead of running initdb."""
    project = place["project"]
    assert cli(project, "init", "--with", "postgres").returncode == 0
    script = project / "bin" / "pg-init"
    assert os.access(script, os.X_OK)
    assert script.read_text().replace(script.read_text().split("make_cluster() { ")[1].split("initdb")[0], "") == \
        pg_init_script("")
    config = (project / "launcher.toml").read_text()
    assert 'setup = [["bin/pg-init", "${tmp}/data"]]' in config
    database = next(line for line in config.splitlines() if line.startswith("[services.database]"))
    (project / "launcher.toml").write_text(
        config.replace("[launcher]\n", '[launcher]\nstate_dir = "state"\n')
        .replace(database, database + f'\nenv = {{ XDG_CACHE_HOME = "{place["cache"]}" }}'))
    _start_and_stop(project)
    assert "pg-init: copied the cached template" in _start_and_stop(project)


def test_example_pg_init_is_the_generated_script() -> None:
    """The example's bin/pg-init is the script `init` writes (fixed alike, kept alike)."""
    assert (EXAMPLE_BIN / "pg-init").read_text() == pg_init_script('"$here/pg" ')


MANAGE_PY = '''#!/usr/bin/env python
import os
import sys

if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "djproj.settings")
    from django.core.management import execute_from_command_line
    execute_from_command_line(sys.argv)
'''


def django_site(root: Path, celery: bool = True, asgi: bool = True) -> Path:
    """tests/apps/djproj laid out as startproject does: manage.py beside the djproj package."""
    shutil.copytree(EXAMPLE_BIN.parent.parent / "tests" / "apps" / "djproj", root / "djproj",
                    ignore=shutil.ignore_patterns("__pycache__", "*.sqlite3", "manage.py"))
    (root / "manage.py").write_text(MANAGE_PY)
    if not celery:
        (root / "djproj" / "celery.py").unlink()
    if not asgi:
        (root / "djproj" / "asgi.py").unlink()
    return root


def test_init_in_a_django_project_proposes_its_environment(tmp_path: Path) -> None:
    """init beside manage.py reads its settings module and writes PostgreSQL (the shared bin/pg-init),
    migrate, the ASGI app, Redis and the Celery worker, which check accepts; nothing existing is overwritten."""
    site = django_site(tmp_path / "site")
    (site / "tests").mkdir()
    (site / "tests" / "test_services.py").write_text("# mine\n")
    result = cli(site, "init")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("found manage.py (settings djproj.settings): proposing PostgreSQL, migrate, "
                                    "web (ASGI), Redis, Celery worker\n"), result.stdout
    assert "kept existing tests/test_services.py" in result.stdout
    assert (site / "tests" / "test_services.py").read_text() == "# mine\n"
    text = (site / "launcher.toml").read_text()
    assert 'app = "djproj.asgi:application"' in text and 'command = ["${python}", "manage.py", "migrate", "--noinput"]' in text
    assert '"-A", "djproj", "worker"' in text and "health = { log = 'ready\\.' }" in text
    assert (site / "pytest.ini").read_text() == "[pytest]\nDJANGO_SETTINGS_MODULE = djproj.settings\n"
    plain = tmp_path / "plain"
    plain.mkdir()
    assert cli(plain, "init", "--with", "postgres").returncode == 0
    assert (site / "bin" / "pg-init").read_text() == (plain / "bin" / "pg-init").read_text()
    check = cli(site, "check", "--no-import")
    assert check.returncode == 0, check.stderr
    assert all(f" {name} " in check.stdout for name in ("database", "cache", "migrate", "web", "worker"))


def test_init_django_without_celery_py_or_asgi_py(tmp_path: Path) -> None:
    """Without a celery.py (nor CELERY in the settings) there is no worker; without asgi.py the app is
    the WSGI one; a project's own pytest settings are left alone (init says what to add)."""
    site = django_site(tmp_path, celery=False, asgi=False)
    (site / "pyproject.toml").write_text("[tool.pytest.ini_options]\naddopts = '-q'\n")
    result = cli(site, "init")
    assert result.returncode == 0, result.stderr
    assert ("found manage.py (settings djproj.settings): proposing PostgreSQL, migrate, web (WSGI), Redis, "
            "no Celery worker (no djproj/celery.py, and the settings do not mention CELERY)") in result.stdout
    assert "note: pytest-django needs DJANGO_SETTINGS_MODULE = djproj.settings" in result.stdout
    assert not (site / "pytest.ini").exists()
    text = (site / "launcher.toml").read_text()
    assert 'app = "djproj.wsgi:application"' in text and "[services.worker]" not in text
    assert 'services("worker")' not in (site / "tests" / "test_services.py").read_text()
    assert cli(site, "check", "--no-import").returncode == 0


def test_init_with_django_forces_it_and_stands_alone(tmp_path: Path) -> None:
    """--with django without manage.py guesses the settings from */settings.py; mixed with others it is exit 2."""
    site = django_site(tmp_path)
    (site / "manage.py").unlink()
    mixed = cli(site, "init", "--with", "django,redis")
    assert mixed.returncode == 2 and "django stands alone" in mixed.stderr and "Traceback" not in mixed.stderr
    result = cli(site, "init", "--with", "django")
    assert result.returncode == 0, result.stderr
    assert "guessed (settings djproj.settings)" in result.stdout
    assert 'app = "djproj.asgi:application"' in (site / "launcher.toml").read_text()


def test_init_django_project_tests_pass(tmp_path: Path, no_orphans: None) -> None:
    """The Django starter's own tests pass as written on real PostgreSQL, Redis and Celery: the ORM sees
    the migrated database, the web app answers at its URL."""
    tmp_path.chmod(0o755)  # a project folder: its bin/pg-init runs as the service user `postgres`
    site = django_site(tmp_path)
    assert cli(site, "init").returncode == 0
    result = subprocess.run([PY, "-m", "pytest", "-p", "no:cacheprovider", "-q"], cwd=site, capture_output=True,
                            text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "4 passed" in result.stdout
    assert "mode: multi_process (auto: app 'web' is a Django app" in result.stdout
