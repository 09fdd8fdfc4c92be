"""Starter configs for ``unified-launcher init``, using the binaries found on this machine."""

from __future__ import annotations

import glob
import importlib.util
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

HEADER = """\
# launcher.toml: the services your tests need. Reference: the pytest-unified-launcher README.
# Check it with `unified-launcher check`; run it with `unified-launcher up`; use it in tests with
# @pytest.mark.services("NAME") and the `services` fixture.

[launcher]
mode = "auto"            # apps in the test process when possible (fast, debuggable)
startup_budget = 25      # seconds: the P95 target for a cold start
"""


def _postgres_bin(program: str) -> str:
    found = shutil.which(program)
    if found:
        return program
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{program}"))
    return candidates[-1] if candidates else program


def pg_init_script(run: str) -> str:
    """``bin/pg-init DATADIR``: a fresh cluster copied from a cached template (initdb once).

    ``run`` is how the script runs a PostgreSQL program (``"$here/pg"`` in the example, nothing
    where ``init`` found the binaries' folder). The template is kept only in a cache folder that
    the running user owns, that is no link and that nobody else can write, checked before each
    use: one in a shared ``/tmp`` could be planted by another user (a link to their cluster).
    """
    return PG_INIT.replace("@RUN@", run)


PG_INIT = r"""#!/bin/sh
# pg-init DATADIR: a fresh, empty PostgreSQL cluster in DATADIR. initdb runs once per user and
# PostgreSQL version into a cached template; every start then gets its own copy (~20 ms, not
# ~0.6 s). The cache is private: $XDG_CACHE_HOME, ~/.cache or the home of the user running this
# (a service's `user`), used only when it is that user's, no link, and writable by nobody else;
# never a shared /tmp, where another user could plant a template (a link to their cluster).
set -e
here=$(dirname "$0")
uid=$(id -u)

private() {  # $1: a real folder (not a link) owned by us that nobody else can write
  [ -d "$1" ] && [ ! -L "$1" ] || return 1
  set -- $(stat -c '%u %a' "$1")
  [ "$1" = "$uid" ] && [ $((0$2 & 022)) -eq 0 ]
}

cache_dir() {  # the first private place we can use, made 0700
  home=$(getent passwd "$uid" 2>/dev/null | cut -d: -f6) || home=
  for base in "${XDG_CACHE_HOME:-}" "${HOME:+$HOME/.cache}" "${home:+$home/.cache}"; do
    case "$base" in /*) ;; *) continue ;; esac
    mkdir -p -m 0700 "$base" 2>/dev/null && private "$base" || continue
    mkdir -m 0700 "$base/unified-launcher" 2>/dev/null || true
    if private "$base/unified-launcher"; then echo "$base/unified-launcher"; return 0; fi
  done
  return 1
}

make_cluster() { @RUN@initdb -D "$1" -U postgres --auth=trust -N -E UTF8 --locale=C >/dev/null; }

rm -rf "$1"  # a restart: a fresh cluster again
if ! cache=$(cache_dir); then
  echo "pg-init: no private cache folder (\$XDG_CACHE_HOME, ~/.cache): running initdb"
  make_cluster "$1"
  exit 0
fi
template="$cache/pg-template-$(@RUN@postgres --version 2>/dev/null | sed -n 's/^[^0-9]*\([0-9][0-9.]*\).*/\1/p')"
if [ ! -f "$template/PG_VERSION" ] || ! private "$template"; then
  rm -rf "$template"
  work=$(mktemp -d "$cache/pg-template.XXXXXX")
  make_cluster "$work"
  mv -T "$work" "$template" 2>/dev/null || rm -rf "$work"  # another start was first: use its
  echo "pg-init: built the template cache $template"
fi
cp -a "$template" "$1"
echo "pg-init: copied the cached template $template"
"""


TEMPLATES: dict[str, Callable[[], str]] = {
    "postgres": lambda: f"""
[services.database]      # a private PostgreSQL per session (trust auth, nothing persisted)
setup = [["bin/pg-init", "${{tmp}}/data"]]   # a copy of a cached empty cluster: initdb runs once
                         # (bin/pg-init runs as `user`: keep this folder readable by it, e.g. 0755)
command = ["{_postgres_bin('postgres')}", "-D", "${{tmp}}/data", "-p", "${{port}}", "-k", "${{tmp}}", "-h", "127.0.0.1"]
user = "postgres"        # used only when running as root (PostgreSQL refuses root)
tmpfs = true             # ${{tmp}} in memory (/dev/shm): a cluster is ~1000 files
health = {{ command = ["{_postgres_bin('pg_isready')}", "-h", "127.0.0.1", "-p", "${{port}}"] }}
stop_signal = "SIGINT"
""",
    "redis": lambda: """
[services.cache]         # redis-server, nothing persisted; a database per xdist worker (256, not 16)
command = "redis-server --port ${port} --bind 127.0.0.1 --save '' --appendonly no --databases 256"
health = { tcp = true }
""",
    "fastapi": lambda: """
[services.api]           # your FastAPI app ("module:attribute"), relative to this folder
app = "app.main:app"
health = { http = "/health" }
""",
    "external": lambda: """
[services.payments]      # a service someone else runs: only waited for, never started
url = "http://127.0.0.1:9000"
health = { http = "/health" }
""",
}

def _recreate_worker_database(port: str) -> str:
    """psql arguments that make ``test_${worker}`` new: dropped, then created from template1."""
    return (f'["{_postgres_bin("psql")}", "-h", "127.0.0.1", "-p", "{port}", "-U", "postgres", "-d", "postgres", "-q",\n'
            '         "-c", "DROP DATABASE IF EXISTS test_${worker} WITH (FORCE)",\n'
            '         "-c", "CREATE DATABASE test_${worker} TEMPLATE template1"]')


#: Per-worker data (SPEC 9), added by `init` after the chosen services: each xdist worker gets its
#: own database and Redis database, made empty again before each ``fresh=True`` test.
ISOLATION: dict[str, Callable[[], str]] = {
    "postgres": lambda: f"""
# Each xdist worker's own database, test_${{worker}} (test_main without xdist): made by worker_db,
# and made new and EMPTY again (from template1) by database's reset before each
# @pytest.mark.services("worker_db", fresh=True) test. Once your tests need tables, keep them
# across resets: migrate in worker_db into test_${{worker}}_tmpl and clone that in the reset
# (TEMPLATE test_${{worker}}_tmpl), or reset with a function that TRUNCATEs your tables
# (reset = "tests.resets:truncate", called as truncate(handle, worker); faster too).
[services.worker_db]     # once in each xdist worker (once without xdist)
command = {_recreate_worker_database("${services.database.port}")}
task = true
scope = "worker"
depends_on = ["database"]
""",
}

TEST_ENV = {
    "postgres": 'DATABASE_URL = "postgresql://postgres@127.0.0.1:${services.database.port}/test_${worker}"\n',
    "redis": 'REDIS_URL = "redis://127.0.0.1:${services.cache.port}/${worker_index}"\n',
}

TEST_FILE = '''"""Generated by `unified-launcher init`: one test per service, using the marker."""

import socket
import urllib.request

import pytest
{tests}'''

TEST = '''

@pytest.mark.services("{name}")
def test_{ident}_is_up(services):
    handle = services["{name}"]
    assert handle.state == "running"
    if handle.port:
        socket.create_connection((handle.host, handle.port), timeout=5).close()
'''

APP_TEST = '''

@pytest.mark.services("{name}")  # starts {name} and everything it depends on
def test_{ident}_answers(services):
    with urllib.request.urlopen(services["{name}"].url + "/health", timeout=5) as response:
        assert response.status == 200
'''


#: With a container engine on PATH, `init` also writes a ``containers`` profile: the same
#: database and cache from their official images (SPEC 8).
IMAGE_PROFILES = {
    "postgres": """
[profiles.containers.services.database]   # PostgreSQL 16 from its image, the cluster in memory
image = "docker.io/library/postgres:16"
container_port = 5432
env = { POSTGRES_HOST_AUTH_METHOD = "trust" }
tmpfs = ["/var/lib/postgresql/data"]
health = { exec = ["pg_isready", "-h", "127.0.0.1", "-U", "postgres"] }
""",
    "redis": """
[profiles.containers.services.cache]      # Redis 7 from its image
image = "docker.io/library/redis:7"
command = ["redis-server", "--save", "", "--appendonly", "no", "--databases", "256"]
container_port = 6379
health = { exec = ["redis-cli", "ping"] }
""",
}


def render_init(chosen: list[str], target: Path, *, engine: str | None = None) -> dict[Path, str]:
    """The files `init` writes for ``chosen`` (names from :data:`TEMPLATES`; the CLI checks them);
    ``engine``: the container engine found on PATH, if any (adds the ``containers`` profile)."""
    env = "".join(TEST_ENV[c] for c in chosen if c in TEST_ENV)
    text = HEADER + ("\n[launcher.test_env]      # exported before conftest.py: each xdist worker's own data\n" + env
                     if env else "")
    for c in chosen:
        text += TEMPLATES[c]()
        if c == "postgres":
            text = text.rstrip("\n") + "\nreset = " + _recreate_worker_database("${port}") + "\n"
        if c == "redis":
            text += 'reset = "redis-cli -p ${port} -n ${worker_index} FLUSHDB"   # a worker\'s own database, emptied\n'
    text += "".join(ISOLATION[c]() for c in chosen if c in ISOLATION)
    images = [IMAGE_PROFILES[c] for c in chosen if c in IMAGE_PROFILES]
    if engine is not None and images:
        text += (f"\n# `pytest --launcher-profile=containers`: the same services from images ({engine} is on\n"
                 "# PATH); tests, resets and the rest of the graph stay as they are.\n" + "".join(images))
    services = {"postgres": "database", "redis": "cache", "fastapi": "api", "external": "payments"}
    if "fastapi" in chosen:
        deps = [services[c] for c in chosen if c in ("postgres", "redis")]
        if deps:
            text = text.replace('app = "app.main:app"\n', f'app = "app.main:app"\ndepends_on = {deps!r}\n'.replace("'", '"'))
    files = {target: text}
    tests = "".join((APP_TEST if c == "fastapi" else TEST).format(name=services[c], ident=services[c].replace("-", "_"))
                    for c in chosen)
    files[target.parent / "tests" / "test_services.py"] = TEST_FILE.format(tests=tests)
    if "postgres" in chosen:
        folder = str(Path(_postgres_bin("initdb")).parent)
        files[target.parent / "bin" / "pg-init"] = pg_init_script("" if folder == "." else folder + "/")
    if "fastapi" in chosen:
        files[target.parent / "app" / "__init__.py"] = ""
        files[target.parent / "app" / "main.py"] = (
            'from fastapi import FastAPI\n\napp = FastAPI()\n\n\n@app.get("/health")\n'
            'def health() -> dict[str, str]:\n    return {"status": "ok"}\n'
        )
    return files


# --------------------------------------------------------------------------- Django


@dataclass(frozen=True)
class DjangoProject:
    """What `init` read from a Django project (never imported: it may need the services first)."""

    settings: str            # "mysite.settings"
    package: str             # "mysite": where asgi.py, wsgi.py and celery.py live
    asgi: bool               # <package>/asgi.py exists: serve it, else <package>.wsgi
    celery: str | None       # why there is no worker (None: there is one)
    source: str              # "manage.py", or how the settings were guessed

    def summary(self) -> str:
        worker = "Celery worker" if self.celery is None else f"no Celery worker ({self.celery})"
        return (f"found {self.source} (settings {self.settings}): proposing PostgreSQL, migrate, "
                f"web ({'ASGI' if self.asgi else 'WSGI'}), Redis, {worker}")


_SETTINGS = re.compile(r"""DJANGO_SETTINGS_MODULE['"]\s*,\s*['"]([A-Za-z_][\w.]*)['"]""")


def find_django(folder: Path, forced: bool = False) -> DjangoProject | None:
    """The Django project whose manage.py is in ``folder``, read as text; ``forced`` guesses the
    settings (a ``*/settings.py``, else ``mysite.settings``) where manage.py does not name them."""
    try:
        found = _SETTINGS.search((folder / "manage.py").read_text(errors="replace"))
    except OSError:
        found = None
    if found:
        return _describe(folder, found.group(1), "manage.py")
    if not forced:
        return None
    guesses = sorted(p.parent.name for p in folder.glob("*/settings.py") if p.parent.name.isidentifier())
    settings = f"{guesses[0]}.settings" if guesses else "mysite.settings"
    return _describe(folder, settings, "no manage.py naming DJANGO_SETTINGS_MODULE, guessed")


def _describe(folder: Path, settings: str, source: str) -> DjangoProject:
    package = settings.split(".")[0]
    module = folder.joinpath(*settings.split("."))
    settings_file = module.with_suffix(".py") if module.with_suffix(".py").is_file() else module / "__init__.py"
    try:
        mentions = "CELERY" in settings_file.read_text(errors="replace")
    except OSError:
        mentions = False
    beside = {settings_file.parent / "celery.py", folder / package / "celery.py"}
    if importlib.util.find_spec("celery") is None:
        celery: str | None = "celery is not installed"
    elif any(p.is_file() for p in beside) or mentions:
        celery = None
    else:
        celery = f"no {package}/celery.py, and the settings do not mention CELERY"
    return DjangoProject(settings, package, (folder / package / "asgi.py").is_file(), celery, source)


DJANGO_DB = "postgresql://postgres@127.0.0.1:${services.database.port}/postgres"
DJANGO_REDIS = "redis://127.0.0.1:${services.cache.port}/0"

DJANGO_ENV = f"""
[launcher.test_env]      # exported before pytest-django reads your settings
DATABASE_URL = "{DJANGO_DB}"
REDIS_URL = "{DJANGO_REDIS}"
# Your settings must build DATABASES from DATABASE_URL (e.g. dj-database-url): then the tests, the
# web app and the worker share the launcher's PostgreSQL, and django_db tests use it as it is.
"""

DJANGO_SERVICES = f"""
[services.migrate]       # your own migrations, once per start of the database
command = ["${{python}}", "manage.py", "migrate", "--noinput"]
task = true
depends_on = ["database"]
env = {{ DATABASE_URL = "{DJANGO_DB}" }}

[services.web]           # found @FOUND@ (with pytest-django, it runs as a subprocess)
app = "@APP@"
depends_on = ["migrate", "cache"]
health = {{ tcp = true }}  # or {{ http = "/health/" }} once a view answers 2xx there
env = {{ DATABASE_URL = "{DJANGO_DB}", REDIS_URL = "{DJANGO_REDIS}" }}
"""

DJANGO_WORKER = f"""
[services.worker]        # Celery, app from @PACKAGE@/celery.py
command = ["${{python}}", "-m", "celery", "-A", "@PACKAGE@", "worker", "--pool", "solo",
           "--without-gossip", "--without-mingle", "--without-heartbeat", "--loglevel", "info"]
depends_on = ["migrate", "cache"]
health = {{ log = 'ready\\.' }}   # Celery logs "celery@host ready." once it consumes
env = {{ DATABASE_URL = "{DJANGO_DB}", REDIS_URL = "{DJANGO_REDIS}" }}
"""

DJANGO_TEST_FILE = '''"""Generated by `unified-launcher init` for @SETTINGS@: the ORM and the web app on one PostgreSQL.

Which rows another process (the web app, the Celery worker) can read depends on the marker:
- @pytest.mark.django_db: the test runs inside a transaction that is rolled back at its end. It
  reads what the web app and the worker committed; they never see the test's own rows.
- @pytest.mark.django_db(transaction=True), or the `transactional_db` fixture: the test's writes
  are committed, so the web app and the worker read them; afterwards every table is flushed.
"""

import socket
import urllib.error
import urllib.request

import pytest
from django.db import connection


@pytest.mark.django_db  # rolled back at the end: the web app could not read rows this test writes
@pytest.mark.services("web")  # starts web and what it depends on: database, migrate, cache
def test_web_and_the_orm_share_the_migrated_database(services):
    assert "django_migrations" in connection.introspection.table_names()  # the migrate task ran here
    try:
        with urllib.request.urlopen(services["web"].url + "/", timeout=5) as response:
            status = response.status
    except urllib.error.HTTPError as exc:  # a 404 (or 400 for ALLOWED_HOSTS) still proves it serves
        status = exc.code
    assert status < 500
{tests}'''


def render_django(project: DjangoProject, target: Path) -> dict[Path, str]:
    """The files `init` writes for a Django project: PostgreSQL (the same bin/pg-init as
    ``--with postgres``), Redis, the migrate task, the web app, the Celery worker if it has one."""
    app = f"{project.package}.{'asgi' if project.asgi else 'wsgi'}:application"
    found = f"{project.package}/{'asgi' if project.asgi else 'wsgi'}.py" if (target.parent / project.package).is_dir() \
        else "no project folder; check the app"
    text = (HEADER + DJANGO_ENV + TEMPLATES["postgres"]() + TEMPLATES["redis"]()
            + DJANGO_SERVICES.replace("@APP@", app).replace("@FOUND@", found))
    names = ["database", "cache"]
    if project.celery is None:
        text += DJANGO_WORKER.replace("@PACKAGE@", project.package)
        names.append("worker")
    files = {path: body for path, body in render_init(["postgres"], target).items() if path.parent.name == "bin"}
    files[target] = text
    tests = "".join(TEST.format(name=name, ident=name) for name in names)
    files[target.parent / "tests" / "test_services.py"] = DJANGO_TEST_FILE.replace("@SETTINGS@", project.settings).format(
        tests=tests)
    if not has_pytest_config(target.parent):
        files[target.parent / "pytest.ini"] = f"[pytest]\nDJANGO_SETTINGS_MODULE = {project.settings}\n"
    return files


def has_pytest_config(folder: Path) -> bool:
    """Whether pytest already has settings here (a pytest.ini we wrote would shadow them)."""
    marks = {"pytest.ini": "", "pyproject.toml": "[tool.pytest", "setup.cfg": "[tool:pytest]", "tox.ini": "[pytest]"}
    for name, mark in marks.items():
        try:
            if mark in (folder / name).read_text(errors="replace"):
                return True
        except OSError:
            continue
    return False
