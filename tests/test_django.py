"""Django apps beside pytest-django: the default mode runs them where its database guard cannot."""

from __future__ import annotations

import shutil
from typing import Any

import pytest

from conftest import APPS

TEST_WEB = """
    import json, os, urllib.request
    import pytest

    @pytest.mark.services("web")
    def test_health_reads_the_database(services):
        with urllib.request.urlopen(services["web"].url + "/health", timeout=5) as resp:
            body = json.loads(resp.read())
        assert resp.status == 200 and body["ok"] and body["kind"] == "django"
        assert body["pid"] != os.getpid()
"""


def django_project(pytester: pytest.Pytester, app: str, launcher: str = "") -> pytest.Pytester:
    """A pytester project with the tiny Django project, pytest-django pointed at its settings."""
    shutil.copytree(APPS / "djproj", pytester.path / "djproj", ignore=shutil.ignore_patterns("__pycache__", "*.sqlite3"))
    pytester.makefile(".toml", launcher=f"""
        [launcher]
        state_dir = "state"
        startup_timeout = 10
        {launcher}
        [services.web]
        app = "{app}"
        health = {{ http = "/health" }}
        env = {{ DJPROJ_DB = "${{tmp}}/db.sqlite3" }}
    """)
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n"
                     "DJANGO_SETTINGS_MODULE = djproj.settings\npythonpath = .\n")
    pytester.makepyfile(TEST_WEB)
    return pytester


@pytest.mark.parametrize("app", ["djproj.asgi:application", "djproj.wsgi:application"])
def test_default_mode_runs_django_apps_as_subprocesses_under_pytest_django(
    pytester: pytest.Pytester, app: str, no_orphans: None
) -> None:
    """With pytest-django active, auto runs a Django app as a subprocess (its database guard would
    answer every request 500 in the test process) and the mode line says why."""
    django_project(pytester, app)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*web*0*subprocess*",
                                 "mode: multi_process (auto: app 'web' is a Django app, and pytest-django blocks "
                                 "database access in the test process)"])


def test_explicit_single_process_runs_django_apps_as_subprocesses_too(pytester: pytest.Pytester, no_orphans: None) -> None:
    """single_process asked for under pytest-django still serves a Django app (as a subprocess), and says so."""
    django_project(pytester, "djproj.asgi:application", 'mode = "single_process"')
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["mode: single_process (single_process asked for, but app 'web' is a Django app, and "
                                 "pytest-django blocks database access in the test process: apps run as subprocesses)"])


def test_without_pytest_django_a_django_app_stays_in_process(pytester: pytest.Pytester, no_orphans: None) -> None:
    """Without pytest-django (-p no:django) nothing blocks the database: auto keeps the app in process."""
    django_project(pytester, "djproj.asgi:application")
    pytester.makepyfile(TEST_WEB.replace('assert body["pid"] != os.getpid()', 'assert body["pid"] == os.getpid()'))
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:django")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*web*0*in_process*", "mode: single_process (auto: *"])


def test_a_django_app_auto_could_not_see_fails_fast_in_process(pytester: pytest.Pytester, no_orphans: None) -> None:
    """A Django handler re-exported by a module that never names django, in process under pytest-django,
    fails its start at once with the fix (it was every request 500 until startup_timeout)."""
    django_project(pytester, "djentry:app")
    shutil.copy(APPS / "djentry.py", pytester.path / "djentry.py")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*'djentry:app' is a Django app, and pytest-django blocks database access in the "
                                 "test process, so it would answer every request with an error; run it as a "
                                 'subprocess: mode = "multi_process"*'])
    result.stdout.no_fnmatch_line("*timed out*")


EXAMPLE_BIN = APPS.parent.parent / "example_project" / "bin"
#: The README's Django environment, small: PostgreSQL, the project's migrate task, the ASGI app.
DJANGO_ENV = f"""
[launcher]
state_dir = "state"
startup_timeout = 30
[launcher.test_env]
DATABASE_URL = "postgresql://postgres@127.0.0.1:${{services.database.port}}/postgres"
REDIS_URL = "redis://127.0.0.1:${{services.cache.port}}/0"
[services.database]
setup = [["{EXAMPLE_BIN}/pg-init", "${{tmp}}/data"]]
command = ["{EXAMPLE_BIN}/pg", "postgres", "-D", "${{tmp}}/data", "-p", "${{port}}", "-k", "${{tmp}}",
           "-h", "127.0.0.1", "-c", "fsync=off"]
user = "postgres"
health = {{ command = ["{EXAMPLE_BIN}/pg", "pg_isready", "-q", "-U", "postgres", "-h", "127.0.0.1", "-p", "${{port}}"] }}
stop_signal = "SIGINT"
[services.migrate]
command = ["${{python}}", "-m", "djproj.manage", "migrate", "--verbosity", "0"]
task = true
depends_on = ["database"]
env = {{ DATABASE_URL = "postgresql://postgres@127.0.0.1:${{services.database.port}}/postgres" }}
[services.cache]
command = "redis-server --port ${{port}} --bind 127.0.0.1 --save '' --appendonly no"
[services.worker]
command = ["${{python}}", "-m", "celery", "-A", "djproj", "worker", "--pool", "solo", "--without-gossip",
           "--without-mingle", "--without-heartbeat", "--loglevel", "info"]
depends_on = ["migrate", "cache"]
health = {{ log = 'ready\\.' }}
env = {{ DATABASE_URL = "postgresql://postgres@127.0.0.1:${{services.database.port}}/postgres", REDIS_URL = "redis://127.0.0.1:${{services.cache.port}}/0" }}
[services.web]
app = "djproj.asgi:application"
depends_on = ["migrate"]
health = {{ http = "/health" }}
env = {{ DATABASE_URL = "postgresql://postgres@127.0.0.1:${{services.database.port}}/postgres" }}
"""

TEST_SHARED_ROWS = """
    import json, urllib.parse, urllib.request
    import pytest
    from djproj.models import Item

    def api(url, **form):
        data = urllib.parse.urlencode(form).encode() if form else None
        with urllib.request.urlopen(url + "/items", data=data, timeout=5) as resp:
            return json.loads(resp.read())["names"]

    @pytest.mark.django_db
    @pytest.mark.services("web")
    def test_the_orm_reads_what_the_api_wrote(services):
        api(services["web"].url, name="from-api")
        assert Item.objects.filter(name="from-api").exists()

    @pytest.mark.django_db(transaction=True)
    @pytest.mark.services("web")
    def test_the_api_reads_what_the_test_committed(services):
        Item.objects.create(name="from-orm")
        assert "from-orm" in api(services["web"].url)
"""

TEST_CELERY = """
    import time
    import pytest
    from djproj.models import Item

    @pytest.mark.django_db
    @pytest.mark.services("worker")
    def test_the_orm_reads_what_a_celery_task_wrote(services):
        from djproj.celery import add_item

        add_item.delay("from-celery")
        deadline = time.monotonic() + 20
        while not Item.objects.filter(name="from-celery").exists():
            assert time.monotonic() < deadline, "the worker never wrote the row"
            time.sleep(0.05)
"""


@pytest.fixture
def django_env(pytester: pytest.Pytester) -> pytest.Pytester:
    """The Django project on the launcher's PostgreSQL, with no conftest: the plugin registers
    _django itself when pytest-django is active."""
    shutil.copytree(APPS / "djproj", pytester.path / "djproj", ignore=shutil.ignore_patterns("__pycache__", "*.sqlite3"))
    pytester.makefile(".toml", launcher=DJANGO_ENV)
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n"
                     "DJANGO_SETTINGS_MODULE = djproj.settings\npythonpath = .\n")
    pytester.makepyfile(test_shared_rows=TEST_SHARED_ROWS)
    return pytester


def test_django_db_tests_share_the_launchers_database(django_env: pytest.Pytester, no_orphans: None) -> None:
    """django_db tests use the launcher's PostgreSQL (migrated by the project's task): the ORM sees
    the API's and a Celery task's rows, the API the test's committed rows (pytest-django made
    test_postgres apart)."""
    django_env.makepyfile(test_celery=TEST_CELERY)
    result = django_env.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=3)


def test_launcher_django_db_test_opts_out(django_env: pytest.Pytester, no_orphans: None) -> None:
    """launcher_django_db = test gives pytest-django's own test_<name> again (as before this module):
    the ORM and the API each see only their own rows."""
    django_env.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n"
                       "DJANGO_SETTINGS_MODULE = djproj.settings\npythonpath = .\nlauncher_django_db = test\n")
    result = django_env.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(["*AssertionError*", "*mode: multi_process (auto: app 'web' is a Django app*"])


@pytest.mark.parametrize("xdist", ["shared", "per_worker"])
def test_django_db_tests_under_xdist(django_env: pytest.Pytester, xdist: str, no_orphans: None) -> None:
    """Under `-n 2` the workers' django_db tests use the launcher's database too, in one shared
    environment and in one environment per worker (the API, the ORM and Celery see the same rows)."""
    django_env.makepyfile(test_celery=TEST_CELERY)
    args = ["-n", "2", "--dist", "loadfile", f"--launcher-xdist={xdist}"]
    if xdist == "shared":  # one database for both workers: a transactional test's flush would race the other file
        (django_env.path / "test_celery.py").unlink()
    result = django_env.runpytest_subprocess("-p", "no:cacheprovider", *args)
    result.assert_outcomes(passed=2 if xdist == "shared" else 3)


def _services() -> Any:
    from pytest_unified_launcher.config import parse

    ports = iter([5432, 6379, 8000])
    return parse({"services": {
        "db": {"command": "postgres -p ${port}", "port": 5432},
        "cache": {"command": "redis-server --port ${port}", "port": 6379},
        "remote": {"url": "postgresql://127.0.0.1:5433"},
        "migrate": {"command": "true", "task": True, "depends_on": ["db"]},
        "seed": {"command": "true", "task": True, "depends_on": ["migrate"]},
        "warm": {"command": "true", "task": True, "depends_on": ["cache"]},
    }}, allocate_port=lambda name, host: next(ports), environ={}).services


@pytest.mark.parametrize(("databases", "expected"), [
    ({"default": {"HOST": "127.0.0.1", "PORT": "5432"}}, ["db"]),
    ({"default": {"HOST": "localhost", "PORT": 5432}, "replica": {"HOST": "::1", "PORT": "5432"}}, ["db"]),
    ({"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": "db.sqlite3"}}, None),  # no server
    ({"default": {"HOST": "db.example.com", "PORT": "5432"}}, None),                        # not on this machine
    ({"default": {"HOST": "127.0.0.1", "PORT": "5433"}}, None),                             # an external url service
    ({"default": {"HOST": "127.0.0.1", "PORT": "5432"}, "other": {"HOST": "127.0.0.1", "PORT": "9999"}}, None),
    ({}, None),
])
def test_which_services_serve_djangos_databases(databases: dict[str, dict[str, Any]], expected: Any) -> None:
    from pytest_unified_launcher._django import matching_services

    assert matching_services(databases, _services()) == expected


def test_the_tasks_that_prepare_a_database_are_started_with_it() -> None:
    from pytest_unified_launcher._django import dependent_tasks

    services = _services()
    assert dependent_tasks(["db"], services) == ["migrate", "seed"]   # seed needs db through migrate
    assert dependent_tasks(["cache"], services) == ["warm"]
