"""The gateway's Redis cache: served from it, refilled after a restart, one database per worker.

Under xdist these run on one worker, one after another (pytest.ini: --dist loadfile, which keeps
a file's tests together): restarting Redis is every worker's restart, which no data isolation
can hide from a test reading the cache meanwhile. (loadgroup's xdist_group would say it per
test, but it groups nothing on pytest 9.2: pytest-xdist issue #1386.)
"""

from __future__ import annotations

import os
from typing import Any

import psycopg
import pytest
import redis

from test_backend import call


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


@pytest.mark.parametrize("n", range(4))
@pytest.mark.services("cache", fresh=True)
def test_each_worker_has_its_own_empty_redis_database(services: Any, n: int) -> None:
    """WORKER_REDIS_URL selects the worker's own database (${worker_index}); the cache's reset
    (FLUSHDB of that database) empties it before each fresh=True test."""
    client = redis.Redis.from_url(os.environ["WORKER_REDIS_URL"])
    try:
        assert client.dbsize() == 0
        client.mset({f"key:{n}:{i}": i for i in range(5)})
        assert client.dbsize() == 5
    finally:
        client.close()
