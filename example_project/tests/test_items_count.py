"""Rows counted in the worker's own database (``app_${worker}``), emptied before each test.

With one database for every worker, or without the reset, these counts would be wrong as soon
as two tests ran side by side (`pytest -n 4`) or one after another.
"""

from __future__ import annotations

import os
from typing import Any

import psycopg
import pytest


@pytest.mark.parametrize("n", range(6))
@pytest.mark.services("worker_db", fresh=True)
def test_each_test_starts_with_an_empty_items_table(services: Any, n: int) -> None:
    with psycopg.connect(os.environ["WORKER_DATABASE_URL"], autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM items").fetchone() == (0,)
        for i in range(3):
            conn.execute("INSERT INTO items (name) VALUES (%s)", (f"item {n}.{i}",))
        # The reset restarts the ids too: every test's first row is 1.
        assert conn.execute("SELECT min(id), count(*) FROM items").fetchone() == (1, 3)
