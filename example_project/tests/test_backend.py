"""End-to-end tests of the example backend, with real PostgreSQL and Redis."""

from __future__ import annotations

import json
import os
import urllib.request
from typing import Any

import pytest


def call(method: str, url: str, body: dict[str, Any] | None = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


@pytest.mark.services("agent")
def test_agent_reaches_the_gateway(services: Any) -> None:
    """The agent answers through the gateway at the address the launcher gave it."""
    item = call("POST", f"{services['api_gateway'].url}/items", {"name": "chair"})
    answer = call("GET", f"{services['agent'].url}/describe/{item['id']}")
    assert answer["answer"] == f"item {item['id']} is called 'chair'"
    assert answer["via"].startswith(services["api_gateway"].url)


def test_settings_read_at_import_time_see_the_services() -> None:
    """[launcher.test_env] is in os.environ before conftest.py and test modules are imported."""
    assert os.environ["GATEWAY_URL"].startswith("http://127.0.0.1:")
    assert os.environ["DATABASE_URL"].startswith("postgresql://postgres@127.0.0.1:")
