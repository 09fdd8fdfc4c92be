"""Loading ``"module:attribute"`` app strings: what is accepted, and what each mistake says."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest
from fastapi import FastAPI

from conftest import APPS
from pytest_unified_launcher._asgi import AppImportError, load_app


@pytest.fixture(autouse=True)
def _isolated_imports(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """load_app adds the app folder to sys.path and imports ``web``: undo both after each test,
    so other tests import their own copy."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.delitem(sys.modules, "web", raising=False)
    yield
    sys.modules.pop("web", None)


@pytest.mark.parametrize("target", ["web:app", "web:router", "web:create_app"])
def test_an_app_a_router_or_a_factory_loads(target: str) -> None:
    """An ASGI app, an APIRouter (wrapped in a FastAPI app) and a zero-argument factory all load."""
    assert isinstance(load_app(target, APPS), FastAPI)


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("web", 'app \'web\' must be written "module:attribute", e.g. "myapp.main:app"'),
        ("nosuch_module_xyz:app", "cannot import module 'nosuch_module_xyz' (looked in"),
        ("web:ap", "module 'web' has no attribute 'ap'; did you mean 'app'?"),
        ("web:create_ap", "module 'web' has no attribute 'create_ap'; did you mean 'create_app'?"),
        ("web:zzz", "module 'web' has no attribute 'zzz'; it defines: "),
        ("web:LIFESPAN_EVENTS", "'web:LIFESPAN_EVENTS' is a list, not an ASGI app, a WSGI app, an APIRouter or a factory returning one"),
    ],
)
def test_mistakes_say_what_and_how_to_fix(target: str, message: str) -> None:
    """Each wrong app string is one message naming what is wrong (and the likely fix)."""
    with pytest.raises(AppImportError) as info:
        load_app(target, APPS)
    assert message in str(info.value)
