"""Layers over the file: ``[profiles.NAME]`` overlays and ``LAUNCHER_*`` environment overrides."""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import Field, ValidationError

from .. import graph as graph_mod
from ..errors import ConfigError
from .models import IMAGE_KEYS, LogLevel, ModeSetting

# --------------------------------------------------------------------------- env overrides


def _env_overrides(environ: Mapping[str, str], source: str) -> dict[str, Any]:
    """The ``LAUNCHER_*`` variables of ``environ``, validated by pydantic-settings."""
    if not any(k.startswith("LAUNCHER_") for k in environ):
        return {}
    from pydantic_settings import BaseSettings, EnvSettingsSource, PydanticBaseSettingsSource, SettingsConfigDict

    class LauncherEnv(BaseSettings):
        model_config = SettingsConfigDict(env_prefix="LAUNCHER_", extra="ignore")

        mode: ModeSetting | None = None
        profile: str | None = None
        config: str | None = None
        timeout: float | None = Field(default=None, gt=0)
        log_level: LogLevel | None = None
        dev_mode: bool | None = None
        auto_restart: bool | None = None
        container_engine: Literal["auto", "podman", "docker"] | None = None

        @classmethod
        def settings_customise_sources(
            cls, settings_cls: type[BaseSettings], *args: PydanticBaseSettingsSource, **kwargs: Any
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            # Read the mapping we were given, not os.environ (which another thread may be using).
            env = EnvSettingsSource(settings_cls)
            env.env_vars = {k.lower(): v for k, v in environ.items() if k.startswith("LAUNCHER_")}
            return (env,)

    try:
        values = LauncherEnv()
    except ValidationError as exc:
        err = exc.errors()[0]
        var = "LAUNCHER_" + str(err["loc"][0]).upper()
        raise ConfigError(
            f"environment variable {var}={environ.get(var, '')!r} is invalid: {err['msg']}",
            source=source,
            fix=f"set {var} to a valid value or unset it",
        ) from None
    return values.model_dump(exclude_none=True)


# --------------------------------------------------------------------------- merging


_KIND_KEYS = {
    "app": ("app", "interface"),
    "command": ("command", "setup", "user", "task", "stop_command"),
    "url": ("url",),
    "image": ("image", "command", "user", "task", *IMAGE_KEYS),
}


def _kind_of(table: Mapping[str, Any]) -> str | None:
    return next((k for k in ("image", "app", "url", "command") if k in table), None)


def deep_merge(base: Mapping[str, Any], overlay: Mapping[str, Any]) -> dict[str, Any]:
    """Tables merge key by key; any other value in ``overlay`` replaces the base's."""
    out = dict(base)
    for key, value in overlay.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _merge_service(base: Mapping[str, Any], overlay: Mapping[str, Any]) -> dict[str, Any]:
    """A profile that sets another kind replaces the kind and drops the old kind's keys."""
    new_kind, old_kind = _kind_of(overlay), _kind_of(base)
    if new_kind and old_kind and new_kind != old_kind:
        # The old kind's keys go, and so does its probe when the overlay brings its own (a
        # notify probe of a process merged with an exec probe of an image is two probes).
        base = {k: v for k, v in base.items() if k not in _KIND_KEYS[old_kind] and not (k == "health" and k in overlay)}
        if new_kind == "url":
            base = {k: v for k, v in base.items() if k not in ("port", "setup", "user", "task", "scheme")}
    return deep_merge(base, overlay)


def _not_a_table(value: Any, where: str, source: str, service: str | None = None) -> ConfigError:
    return ConfigError(
        f"'{where}' must be a table, not {type(value).__name__} {value!r}",
        source=source, service=service, key=where,
        fix=f"write it as [{where}] with keys below it, or as {where} = {{ ... }}",
    )


def _check_tables(data: Mapping[str, Any], source: str) -> None:
    """The shape the merge relies on: every section and service is a table."""
    for section in ("launcher", "env", "services", "profiles"):
        if section in data and not isinstance(data[section], Mapping):
            raise _not_a_table(data[section], section, source)
    for name, svc in (data.get("services") or {}).items():
        if not isinstance(svc, Mapping):
            raise _not_a_table(svc, f"services.{name}", source, service=str(name))
    for name, overlay in (data.get("profiles") or {}).items():
        if not isinstance(overlay, Mapping):
            raise _not_a_table(overlay, f"profiles.{name}", source)
        for section in ("launcher", "env", "services"):
            if section in overlay and not isinstance(overlay[section], Mapping):
                raise _not_a_table(overlay[section], f"profiles.{name}.{section}", source)
        for svc_name, svc in (overlay.get("services") or {}).items():
            if not isinstance(svc, Mapping):
                raise _not_a_table(svc, f"profiles.{name}.services.{svc_name}", source, service=str(svc_name))


def apply_profile(data: Mapping[str, Any], profile: str | None, source: str) -> dict[str, Any]:
    """The file with ``[profiles.NAME]`` merged over it (and the profiles table removed)."""
    profiles = data.get("profiles") or {}
    base = {k: v for k, v in data.items() if k != "profiles"}
    if profile is None:
        return base
    if not isinstance(profiles, Mapping) or profile not in profiles:
        known = sorted(profiles) if isinstance(profiles, Mapping) else []
        close = difflib.get_close_matches(profile, known, n=1)
        raise ConfigError(
            f"unknown profile '{profile}'",
            source=source,
            key="profiles",
            fix=(f"did you mean '{close[0]}'? " if close else "")
            + (f"known profiles: {', '.join(known)}" if known else "the file defines no profiles"),
        )
    overlay = profiles[profile]
    if not isinstance(overlay, Mapping):
        raise ConfigError(
            f"profile '{profile}' must be a table", source=source, key=f"profiles.{profile}"
        )
    for key in overlay:
        if key not in ("launcher", "env", "services"):
            raise ConfigError(
                f"unknown key '{key}' in profile '{profile}'",
                source=source,
                key=f"profiles.{profile}.{key}",
                fix="a profile may only set 'launcher', 'env' and 'services'",
            )
    merged = dict(base)
    for section in ("launcher", "env"):
        if section in overlay:
            merged[section] = deep_merge(base.get(section) or {}, overlay[section])
    services = dict(base.get("services") or {})
    for name, svc in (overlay.get("services") or {}).items():
        if name not in services:
            raise ConfigError(
                f"profile '{profile}' overrides service '{name}', which the file does not define",
                source=source,
                service=name,
                key=f"profiles.{profile}.services",
                fix=graph_mod._known_fix(name, services) if services else None,
            )
        services[name] = _merge_service(services[name], svc)
    merged["services"] = services
    return merged
