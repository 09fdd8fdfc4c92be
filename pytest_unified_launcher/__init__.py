"""pytest-unified-launcher: start a graph of services for tests, fast, and always tear it down.

The names below are imported lazily, so ``import pytest_unified_launcher`` stays cheap and a
pytest run that uses no services imports none of pydantic, uvicorn or fastapi.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import (
    ConfigError,
    DependencyFailedError,
    LauncherError,
    ServiceDiedError,
    ServiceResetError,
    ServiceStartupError,
    UnknownServiceError,
)

if TYPE_CHECKING:
    from .config import LauncherConfig, ServiceConfig, load_config, parse
    from ._handles import ServiceHandle
    from .orchestrator import LauncherStatus, UnifiedLauncher

__version__ = "0.1.0"

_LAZY = {
    "LauncherConfig": "config",
    "ServiceConfig": "config",
    "load_config": "config",
    "parse": "config",
    "LauncherStatus": "orchestrator",
    "ServiceHandle": "_handles",
    "UnifiedLauncher": "orchestrator",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ConfigError",
    "DependencyFailedError",
    "LauncherConfig",
    "LauncherError",
    "LauncherStatus",
    "ServiceConfig",
    "ServiceDiedError",
    "ServiceResetError",
    "ServiceHandle",
    "ServiceStartupError",
    "UnifiedLauncher",
    "UnknownServiceError",
    "__version__",
    "load_config",
    "parse",
]
