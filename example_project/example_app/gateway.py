"""The API gateway: stores items in PostgreSQL and serves reads from Redis when it can.

Settings are read from the environment, which the launcher fills from launcher.toml.
"""

from __future__ import annotations

import logging
import os
from contextlib import asynccontextmanager
from typing import Any

import psycopg
import redis
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel

log = logging.getLogger(__name__)


class ItemIn(BaseModel):
    name: str


def _db() -> psycopg.Connection[Any]:
    return psycopg.connect(os.environ["DATABASE_URL"], autocommit=True)


@asynccontextmanager
async def lifespan(app: FastAPI) -> Any:
    app.state.cache = redis.Redis.from_url(os.environ["REDIS_URL"], socket_timeout=1)
    yield
    app.state.cache.close()


app = FastAPI(title="api_gateway", lifespan=lifespan)


@app.get("/health")
def health() -> dict[str, str]:
    with _db() as conn:
        conn.execute("SELECT 1")
    return {"status": "ok"}


@app.post("/items", status_code=201)
def create_item(item: ItemIn) -> dict[str, Any]:
    with _db() as conn:
        row = conn.execute("INSERT INTO items (name) VALUES (%s) RETURNING id", (item.name,)).fetchone()
    assert row is not None
    return {"id": row[0], "name": item.name}


@app.get("/items/{item_id}")
def read_item(item_id: int) -> dict[str, Any]:
    cache: redis.Redis = app.state.cache
    key = f"item:{item_id}"
    try:
        cached = cache.get(key)
    except redis.RedisError as exc:  # the cache is an optimisation: fall back to the database
        log.warning("cache unavailable: %s", exc)
        cached = None
    if cached is not None:
        return {"id": item_id, "name": cached.decode(), "source": "cache"}
    with _db() as conn:
        row = conn.execute("SELECT name FROM items WHERE id = %s", (item_id,)).fetchone()
    if row is None:
        raise HTTPException(status_code=404, detail=f"item {item_id} not found")
    try:
        cache.set(key, row[0], ex=300)
    except redis.RedisError as exc:
        log.warning("cache unavailable: %s", exc)
    return {"id": item_id, "name": row[0], "source": "database"}
