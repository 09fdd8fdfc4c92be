"""Which mode runs, and why: pure decisions over a resolved config."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Literal

from ..errors import ConfigError
from .models import LauncherConfig

if TYPE_CHECKING:
    from .._imports import SharedRead

def inprocess_env_conflict(config: LauncherConfig) -> tuple[str, str, str] | None:
    """The first variable two in-process apps set differently: ``(var, service_a, service_b)``."""
    seen: dict[str, tuple[str, str]] = {}
    for name, svc in sorted(config.services.items()):
        if svc.kind != "app":
            continue
        for var, value in sorted(svc.env.items()):
            if var in seen and seen[var][1] != value:
                return var, seen[var][0], name
            seen.setdefault(var, (name, value))
    return None


def shared_module_conflict(config: LauncherConfig) -> SharedRead | None:
    """The first project module two apps import that reads, at import, a variable they set
    differently: one process would give the second app the first's value (see ``_imports``)."""
    from .._imports import shared_module_conflicts

    found = shared_module_conflicts(config.services.values(), config.root, os.environ)
    return found[0] if found else None


#: Why apps must run as subprocesses, whatever the mode (passed as ``subprocess_apps_because``).
SHARED_WORKERS = "xdist workers share the services"
KEEP = "--launcher-keep leaves services running after pytest"
DEV_RELOAD = "up --dev reloads apps in fresh processes"


def resolve_mode(
    config: LauncherConfig, *, subprocess_apps_because: str | None = None, as_root: bool = False
) -> tuple[Literal["single_process", "multi_process"], str, bool]:
    """Which mode runs, why, and whether app services must still run as subprocesses.

    ``subprocess_apps_because`` says why the caller cannot have apps in its own process (xdist
    sharing, ``--launcher-keep``, ``up --dev``); ``as_root``: the launcher runs as root, so an
    app with ``user`` must run as that user, which only a subprocess can. Returns ``(mode,
    reason, apps_as_subprocesses)``; raises a ConfigError when an explicit ``single_process``
    cannot work because two apps need different values of one variable.
    """
    if as_root and not subprocess_apps_because:
        user_app = next(((n, s.user) for n, s in sorted(config.services.items()) if s.kind == "app" and s.user), None)
        if user_app:
            subprocess_apps_because = f"app '{user_app[0]}' runs as user {user_app[1]}, which only a subprocess can"
    if not subprocess_apps_because:  # pytest-django's database guard would break a Django app in this process
        from .._asgi import django_guard_reason

        subprocess_apps_because = django_guard_reason(config.services.values(), config.root)
    conflict = inprocess_env_conflict(config)
    if config.mode == "multi_process":
        return "multi_process", "mode = multi_process was asked for", True
    shared = None if conflict or subprocess_apps_because else shared_module_conflict(config)
    if config.mode == "single_process":
        if conflict:
            var, a, b = conflict
            raise ConfigError(
                f"in single_process mode, services '{a}' and '{b}' set {var} to different values "
                "in one process",
                source=str(config.source),
                service=b,
                key=f"env.{var}",
                fix='give them the same value, or use mode = "multi_process" (or "auto")',
            )
        if shared:
            raise ConfigError(f"in single_process mode, {shared.describe()}: in one process '{shared.second}' "
                              f"would get the value '{shared.first}' imported it with", source=str(config.source), service=shared.second,
                              key=f"env.{shared.var}", fix=f'use mode = "multi_process" (or "auto"), or give both '
                              f"apps the same {shared.var}")
        if subprocess_apps_because:
            return "single_process", f"single_process asked for, but {subprocess_apps_because}: apps run as subprocesses", True
        return "single_process", "mode = single_process was asked for", False
    if conflict:
        var, a, b = conflict
        return "multi_process", f"auto: '{a}' and '{b}' set {var} differently", True
    if shared:
        return "multi_process", f"auto: {shared.describe()}", True
    if subprocess_apps_because:
        return "multi_process", f"auto: {subprocess_apps_because}", True
    return "single_process", "auto: apps can run in the test process", False
