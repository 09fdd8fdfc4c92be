"""pytest-django's ``django_db`` tests on the launcher's database, not a ``test_<name>`` copy.

pytest-django creates ``test_<name>`` for the test process, while the launcher's web app,
``runserver`` and a Celery worker use the database the launcher's PostgreSQL serves: a row the
API writes is invisible to the test's ORM and the other way round. This module overrides
``django_db_setup`` as pytest-django documents for an existing database: the launcher starts
that database and every task that depends on it (the project's own ``migrate``), and the tests
use it as it is. It applies only when each of Django's databases is served by a service the
launcher runs (matched by port on this machine), so a developer's own database is never used;
``launcher_django_db = test`` in the ini opts out. The plugin registers this module only when
pytest-django is loaded.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

INI = "launcher_django_db"
CHOICES = ("launcher", "test")
#: Hosts that reach a service the launcher runs on this machine.
LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1", "0.0.0.0", "::"})


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini(
        INI,
        "django_db tests use the launcher's database ('launcher', the default) or pytest-django's own "
        "test_<name> ('test')",
        default="launcher",
    )


def pytest_configure(config: pytest.Config) -> None:
    value = str(config.getini(INI)).strip()
    if value not in CHOICES:
        raise pytest.UsageError(f"ini {INI} = {value!r}: choose one of {', '.join(CHOICES)}")


@pytest.fixture(scope="session")
def django_db_setup(request: pytest.FixtureRequest) -> None:
    """The launcher's database (started, migrated by the project's task) for ``django_db`` tests,
    or pytest-django's own ``test_<name>`` when that database is not the launcher's."""
    names = launcher_databases(request.config)
    if names is None:
        request.getfixturevalue("django_db_setup")  # the one this overrides: pytest-django's
        return
    request.getfixturevalue("launcher").start(names)


def launcher_databases(config: pytest.Config) -> list[str] | None:
    """The services to start for Django's databases (each one's server and the tasks that
    depend on it), or None when the tests should get pytest-django's ``test_<name>``."""
    if str(config.getini(INI)).strip() != "launcher":
        return None
    from .plugin import _session

    lconfig = _session(config).lconfig
    if lconfig is None:
        return None
    from django.conf import settings  # type: ignore[import-untyped]

    servers = matching_services(settings.DATABASES, lconfig.services)
    if servers is None:
        return None
    return servers + dependent_tasks(servers, lconfig.services)


def matching_services(databases: dict[str, dict[str, Any]], services: Mapping[str, Any]) -> list[str] | None:
    """The service serving each of Django's databases, or None if one is not the launcher's.

    A database matches a command service (one the launcher runs, not an external ``url``) on a
    loopback host and the service's port; SQLite and a database elsewhere do not.
    """
    found: list[str] = []
    for db in databases.values():
        host, port = str(db.get("HOST") or ""), str(db.get("PORT") or "")
        if host not in LOCAL_HOSTS or not port.isdigit():
            return None
        name = next((n for n, s in sorted(services.items())
                     if s.kind == "command" and not s.task and s.port == int(port)), None)
        if name is None:
            return None
        if name not in found:
            found.append(name)
    return found or None


def dependent_tasks(servers: list[str], services: Mapping[str, Any]) -> list[str]:
    """The tasks (migrations, seed data) that depend, directly or not, on one of ``servers``."""

    def needs(name: str, seen: set[str]) -> bool:
        for dep in services[name].depends_on:
            if dep in servers or (dep not in seen and dep in services and needs(dep, seen | {dep})):
                return True
        return False

    return [name for name, svc in sorted(services.items()) if svc.task and needs(name, {name})]
