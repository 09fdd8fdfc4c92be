"""The worker's own database lists exactly what this test wrote, whatever runs beside it."""

from __future__ import annotations

import os
from typing import Any

import psycopg
import pytest


@pytest.mark.parametrize("names", [["ash", "birch"], ["cedar"], ["elm", "fir", "oak"], ["pine", "yew"]])
@pytest.mark.services("worker_db", fresh=True)
def test_listing_shows_only_this_tests_items(services: Any, names: list[str]) -> None:
    with psycopg.connect(os.environ["WORKER_DATABASE_URL"], autocommit=True) as conn:
        for name in names:
            conn.execute("INSERT INTO items (name) VALUES (%s)", (name,))
        rows = conn.execute("SELECT id, name FROM items ORDER BY id").fetchall()
    assert rows == list(enumerate(names, start=1))
