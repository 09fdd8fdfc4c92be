"""Reset hooks (``reset = "example_app.resets:..."``), run before each ``fresh=True`` test."""

from typing import Any

import psycopg


def truncate_worker_items(handle: Any, worker: str) -> None:
    """Empty this worker's own database (``app_<worker>``, made by the `worker_db` task)."""
    url = f"postgresql://postgres@127.0.0.1:{handle.port}/app_{worker}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("TRUNCATE items RESTART IDENTITY")
