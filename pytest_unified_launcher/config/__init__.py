"""The config: TOML models, profiles, ``LAUNCHER_*`` overrides, ports and placeholders.

``parse(mapping, source=...)`` is pure and turns the raw TOML mapping into a frozen
:class:`LauncherConfig` in which every placeholder is already expanded. Only
:func:`load_config` touches the disk (reading the file, reserving ``auto`` ports).
Every mistake becomes one :class:`ConfigError` naming the file, service, key and fix.

Modules, one job each: ``models`` (file models and the frozen config), ``profiles`` (overlays and
``LAUNCHER_*``), ``placeholders`` (``${...}``), ``parsing`` (validation and resolution: ``parse()``),
``modes`` (which mode runs), ``scratch`` (``${tmp}`` roots), ``load`` (reading the file).
"""

from __future__ import annotations

from .load import load_config, read_toml, state_dir_of
from .models import (
    DEFAULT_BUDGET,
    DEFAULT_TIMEOUT,
    MODE_CHOICES,
    NAME_RE,
    PLACEHOLDER_RE,
    XDIST_CHOICES,
    Condition,
    Dependency,
    EnvValue,
    FileModel,
    HealthCheck,
    HealthModel,
    Interface,
    Kind,
    LauncherConfig,
    LauncherModel,
    LogLevel,
    Mode,
    ModeSetting,
    PortAllocator,
    ServiceConfig,
    ServiceModel,
    Spawner,
    Where,
    XdistSetting,
    client_url,
    describe_dependencies,
)
from .modes import DEV_RELOAD, KEEP, SHARED_WORKERS, inprocess_env_conflict, resolve_mode
from .parsing import parse
from .profiles import apply_profile, deep_merge
from .scratch import MEMORY_MIN_FREE, MEMORY_TMP, memory_root, remove_scratch

__all__ = [
    "DEFAULT_BUDGET",
    "DEFAULT_TIMEOUT",
    "DEV_RELOAD",
    "KEEP",
    "MEMORY_MIN_FREE",
    "MEMORY_TMP",
    "MODE_CHOICES",
    "NAME_RE",
    "PLACEHOLDER_RE",
    "SHARED_WORKERS",
    "XDIST_CHOICES",
    "Condition",
    "Dependency",
    "EnvValue",
    "FileModel",
    "HealthCheck",
    "HealthModel",
    "Interface",
    "Kind",
    "LauncherConfig",
    "LauncherModel",
    "LogLevel",
    "Mode",
    "ModeSetting",
    "PortAllocator",
    "ServiceConfig",
    "ServiceModel",
    "Spawner",
    "Where",
    "XdistSetting",
    "apply_profile",
    "client_url",
    "deep_merge",
    "describe_dependencies",
    "inprocess_env_conflict",
    "load_config",
    "memory_root",
    "parse",
    "read_toml",
    "remove_scratch",
    "resolve_mode",
    "state_dir_of",
]
