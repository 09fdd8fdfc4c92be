"""End-to-end tests of the example backend, with real PostgreSQL and Redis."""

from __future__ import annotations

import fcntl
import json
import os
import urllib.request
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
import redis


def call(method: str, url: str, body: dict[str, Any] | None = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


def _hold_cache_lock(tmp_path_factory: pytest.TempPathFactory, mode: int) -> Iterator[None]:
    # Under xdist every worker's basetemp is inside one run folder: the lock file is shared.
    path = tmp_path_factory.getbasetemp().parent / "example-cache.lock"
    with open(path, "a") as lock:
        fcntl.flock(lock, mode)
        yield


@pytest.fixture
def reads_the_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Held (shared) by tests that assert what Redis holds: with `--launcher-xdist shared` all
    workers use one Redis, and another worker's test restarts it."""
    yield from _hold_cache_lock(tmp_path_factory, fcntl.LOCK_SH)


@pytest.fixture
def restarts_the_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Held (exclusive) by the test that restarts Redis, so no cache-reading test runs meanwhile."""
    yield from _hold_cache_lock(tmp_path_factory, fcntl.LOCK_EX)


@pytest.mark.usefixtures("reads_the_cache")
@pytest.mark.services("api_gateway")
def test_item_lands_in_postgres_then_is_served_from_redis(services: Any) -> None:
    """A write goes to PostgreSQL; the first read fills Redis, the second is served from it."""
    gw = services["api_gateway"].url
    item = call("POST", f"{gw}/items", {"name": "lamp"})
    db_url = f"postgresql://postgres@127.0.0.1:{services['database'].port}/postgres"
    with psycopg.connect(db_url) as conn:
        assert conn.execute("SELECT name FROM items WHERE id = %s", (item["id"],)).fetchone() == ("lamp",)
    assert call("GET", f"{gw}/items/{item['id']}")["source"] == "database"
    assert call("GET", f"{gw}/items/{item['id']}")["source"] == "cache"
    cache = redis.Redis(port=services["cache"].port)
    assert cache.get(f"item:{item['id']}") == b"lamp"
    cache.close()


@pytest.mark.services("agent")
def test_agent_reaches_the_gateway(services: Any) -> None:
    """The agent answers through the gateway at the address the launcher gave it."""
    item = call("POST", f"{services['api_gateway'].url}/items", {"name": "chair"})
    answer = call("GET", f"{services['agent'].url}/describe/{item['id']}")
    assert answer["answer"] == f"item {item['id']} is called 'chair'"
    assert answer["via"].startswith(services["api_gateway"].url)


@pytest.mark.usefixtures("restarts_the_cache")
@pytest.mark.services("api_gateway")
def test_gateway_recovers_after_cache_restart(services: Any) -> None:
    """Restarting Redis loses the cache (nothing persisted); the gateway falls back, then refills it."""
    gw = services["api_gateway"].url
    item = call("POST", f"{gw}/items", {"name": "desk"})
    call("GET", f"{gw}/items/{item['id']}")
    assert call("GET", f"{gw}/items/{item['id']}")["source"] == "cache"
    old_pid = services["cache"].pid
    services["cache"].restart()
    assert services["cache"].pid != old_pid and services["cache"].state == "running"
    assert call("GET", f"{gw}/items/{item['id']}")["source"] == "database"
    assert call("GET", f"{gw}/items/{item['id']}")["source"] == "cache"


def test_settings_read_at_import_time_see_the_services() -> None:
    """[launcher.test_env] is in os.environ before conftest.py and test modules are imported."""
    assert os.environ["GATEWAY_URL"].startswith("http://127.0.0.1:")
    assert os.environ["DATABASE_URL"].startswith("postgresql://postgres@127.0.0.1:")
