"""The config: TOML models, profiles, ``LAUNCHER_*`` overrides, ports and placeholders.

``parse(mapping, source=...)`` is pure and turns the raw TOML mapping into a frozen
:class:`LauncherConfig` in which every placeholder is already expanded. Only
:func:`load_config` touches the disk (reading the file, reserving ``auto`` ports).
Every mistake becomes one :class:`ConfigError` naming the file, service, key and fix.
"""

from __future__ import annotations

import difflib
import functools
import os
import re
import shlex
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from . import graph as graph_mod
from .errors import ConfigError

#: What ``mode`` (and --launcher-mode, --mode, LAUNCHER_MODE) accepts; ``auto_detect`` is ``auto``.
ModeSetting = Literal["single_process", "multi_process", "auto", "auto_detect"]
#: The mode after resolving the alias (what :class:`LauncherConfig` holds).
Mode = Literal["single_process", "multi_process", "auto"]
XdistSetting = Literal["shared", "per_worker"]
LogLevel = Literal["debug", "info", "warning", "error", "critical"]
Spawner = Literal["preimport", "plain"]
MODE_CHOICES: tuple[str, ...] = get_args(ModeSetting)
XDIST_CHOICES: tuple[str, ...] = get_args(XdistSetting)
Kind = Literal["app", "command", "url"]
PortAllocator = Callable[[str, str], int]
#: Builds the ConfigError for one place in the config: ``where(problem, fix=..., key=...)``.
Where = Callable[..., ConfigError]

NAME_RE = re.compile(r"^[A-Za-z0-9_-]+$")
PLACEHOLDER_RE = re.compile(r"\$\$|\$\{([^}]*)\}")
DEFAULT_TIMEOUT = 30.0
DEFAULT_BUDGET = 25.0


# --------------------------------------------------------------------------- raw models


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)


class HealthModel(_Strict):
    """``health = {...}``: exactly one probe kind, plus an optional per-probe timeout."""

    http: str | None = None
    tcp: bool | None = None
    command: list[str] | str | None = None
    log: str | None = None
    notify: bool | None = None
    timeout: float = Field(default=1.0, gt=0)

    @model_validator(mode="after")
    def _one_kind(self) -> HealthModel:
        kinds = [k for k in ("http", "tcp", "command", "log", "notify") if getattr(self, k)]
        if len(kinds) != 1:
            raise ValueError(
                "set exactly one of http, tcp, command, log, notify"
                + (f" (got {', '.join(kinds)})" if kinds else "")
            )
        if self.log is not None:
            try:
                re.compile(self.log)
            except re.error as exc:
                raise ValueError(f"log pattern {self.log!r} is not a valid regex: {exc}") from None
        return self


EnvValue = str | int | float | bool


class ServiceModel(_Strict):
    """One ``[services.NAME]`` table, as written."""

    app: str | None = None
    command: list[str] | str | None = None
    url: str | None = None
    depends_on: list[str] = Field(default_factory=list, alias="dependencies")
    port: int | Literal["auto"] | None = None
    host: str = "127.0.0.1"
    env: dict[str, EnvValue] = Field(default_factory=dict)
    cwd: str | None = None
    setup: list[list[str] | str] = Field(default_factory=list)
    user: str | None = None
    task: bool = False
    tmpfs: bool = False
    health: HealthModel | None = None
    startup_timeout: float | None = Field(default=None, gt=0)
    stop_signal: str | int = "SIGTERM"
    stop_timeout: float = Field(default=10.0, ge=0)
    retries: int = Field(default=1, ge=1)
    watch: list[str] = Field(default_factory=list)

    @field_validator("port")
    @classmethod
    def _port_range(cls, value: int | str | None) -> int | str | None:
        if isinstance(value, int) and not 1 <= value <= 65535:
            raise ValueError(f"port {value} is outside 1-65535")
        return value

    @model_validator(mode="after")
    def _one_kind(self) -> ServiceModel:
        kinds = [k for k in ("app", "command", "url") if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError(
                "set exactly one of app (an ASGI app), command (a subprocess) or url "
                f"(an external service){' (got ' + ', '.join(kinds) + ')' if kinds else ''}"
            )
        if self.task and self.command is None:
            raise ValueError("task = true needs a command")
        return self


class LauncherModel(_Strict):
    """The ``[launcher]`` table."""

    mode: ModeSetting = "auto"
    startup_timeout: float = Field(default=DEFAULT_TIMEOUT, gt=0)
    startup_budget: float = Field(default=DEFAULT_BUDGET, gt=0)
    xdist: XdistSetting = "shared"
    state_dir: str = ".launcher"
    log_level: LogLevel = "info"
    auto_restart: bool = True
    dev_mode: bool = False
    spawner: Spawner = "preimport"
    preload: list[str] = Field(default_factory=list)
    test_env: dict[str, EnvValue] = Field(default_factory=dict)

    @field_validator("preload")
    @classmethod
    def _module_names(cls, value: list[str]) -> list[str]:
        for name in value:
            if not re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*", name):
                raise ValueError(f"{name!r} is not a module name (write it as in an import: 'psycopg', 'redis.asyncio')")
        return value


class FileModel(_Strict):
    """The whole file (profiles are validated after they are merged)."""

    launcher: LauncherModel = Field(default_factory=LauncherModel)
    services: dict[str, ServiceModel] = Field(default_factory=dict)
    profiles: dict[str, dict[str, Any]] = Field(default_factory=dict)


_MODELS_BY_SECTION: dict[str, type[BaseModel]] = {
    "launcher": LauncherModel,
    "services": ServiceModel,
    "health": HealthModel,
}


# --------------------------------------------------------------------------- resolved config


@dataclass(frozen=True)
class HealthCheck:
    """A resolved probe: ``kind`` plus its expanded target."""

    kind: Literal["http", "tcp", "command", "log", "notify", "alive", "exit"]
    timeout: float = 1.0
    url: str | None = None
    argv: tuple[str, ...] = ()
    pattern: str | None = None

    def describe(self) -> str:
        if self.kind == "http":
            return f"http GET {self.url}"
        if self.kind == "command":
            return "command " + shlex.join(self.argv)
        if self.kind == "log":
            return f"log /{self.pattern}/"
        if self.kind == "alive":
            return "alive for 0.5 s"
        if self.kind == "exit":
            return "exits 0 (task)"
        return self.kind


@dataclass(frozen=True)
class ServiceConfig:
    """One service with every placeholder expanded and every path absolute."""

    name: str
    kind: Kind
    host: str
    port: int | None
    url: str | None
    app: str | None = None
    command: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: Path = Path(".")
    setup: tuple[tuple[str, ...], ...] = ()
    user: str | None = None
    task: bool = False
    health: HealthCheck = HealthCheck("alive")
    startup_timeout: float = DEFAULT_TIMEOUT
    stop_signal: int = int(signal.SIGTERM)
    stop_timeout: float = 10.0
    retries: int = 1
    watch: tuple[Path, ...] = ()
    depends_on: tuple[str, ...] = ()
    tmp: Path = Path("/tmp")
    #: ``tmpfs = true`` was asked for (``tmp`` is under MEMORY_TMP unless that had no room).
    tmpfs: bool = False
    port_auto: bool = False
    #: Set when the port is automatic and no other service or test_env names this service's
    #: address: ``rebind(port)`` is the same service on another port (retried after a clash).
    rebind: Callable[[int], ServiceConfig] | None = field(default=None, compare=False, repr=False)

    @property
    def is_external(self) -> bool:
        return self.kind == "url"


@dataclass(frozen=True)
class LauncherConfig:
    """The whole resolved config; build it with :func:`load_config` or :func:`parse`."""

    source: Path
    root: Path
    profile: str | None
    mode: Mode
    startup_timeout: float
    startup_budget: float
    xdist: XdistSetting
    state_dir: Path
    log_level: str
    auto_restart: bool
    dev_mode: bool
    services: Mapping[str, ServiceConfig]
    test_env: Mapping[str, str]
    tmp_root: Path
    profiles: tuple[str, ...] = ()
    spawner: Spawner = "preimport"
    #: Third-party modules the pre-imported spawner imports too (``[launcher] preload``).
    preload: tuple[str, ...] = ()

    @property
    def graph(self) -> dict[str, tuple[str, ...]]:
        """``name -> dependencies`` to start (an external service's own are never started)."""
        return {
            name: () if svc.is_external else svc.depends_on for name, svc in self.services.items()
        }

    @property
    def ports(self) -> dict[str, int]:
        return {n: s.port for n, s in self.services.items() if s.port is not None}

    def with_mode(self, mode: Mode) -> LauncherConfig:
        return replace(self, mode=mode)


# --------------------------------------------------------------------------- addresses

#: A server bound to every interface is reached by its clients on loopback.
_WILDCARD_TO_LOOPBACK = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}


def client_url(host: str, port: int) -> str:
    """The ``http://`` URL a client uses for a server bound to ``host:port``: a wildcard bind is
    reached on loopback, and an IPv6 address is bracketed (``http://[::1]:8000``)."""
    connect = _WILDCARD_TO_LOOPBACK.get(host, host)
    return f"http://[{connect}]:{port}" if ":" in connect else f"http://{connect}:{port}"


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
    "app": ("app",),
    "command": ("command", "setup", "user", "task"),
    "url": ("url",),
}


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
    new_kind = next((k for k in ("app", "command", "url") if k in overlay), None)
    old_kind = next((k for k in ("app", "command", "url") if k in base), None)
    if new_kind and old_kind and new_kind != old_kind:
        base = {k: v for k, v in base.items() if k not in _KIND_KEYS[old_kind]}
        if new_kind == "url":
            base = {k: v for k, v in base.items() if k not in ("port", "setup", "user", "task")}
    return deep_merge(base, overlay)


def _not_a_table(value: Any, where: str, source: str, service: str | None = None) -> ConfigError:
    return ConfigError(
        f"'{where}' must be a table, not {type(value).__name__} {value!r}",
        source=source, service=service, key=where,
        fix=f"write it as [{where}] with keys below it, or as {where} = {{ ... }}",
    )


def _check_tables(data: Mapping[str, Any], source: str) -> None:
    """The shape the merge relies on: every section and service is a table."""
    for section in ("launcher", "services", "profiles"):
        if section in data and not isinstance(data[section], Mapping):
            raise _not_a_table(data[section], section, source)
    for name, svc in (data.get("services") or {}).items():
        if not isinstance(svc, Mapping):
            raise _not_a_table(svc, f"services.{name}", source, service=str(name))
    for name, overlay in (data.get("profiles") or {}).items():
        if not isinstance(overlay, Mapping):
            raise _not_a_table(overlay, f"profiles.{name}", source)
        for section in ("launcher", "services"):
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
        if key not in ("launcher", "services"):
            raise ConfigError(
                f"unknown key '{key}' in profile '{profile}'",
                source=source,
                key=f"profiles.{profile}.{key}",
                fix="a profile may only set 'launcher' and 'services'",
            )
    merged = dict(base)
    if "launcher" in overlay:
        merged["launcher"] = deep_merge(base.get("launcher") or {}, overlay["launcher"])
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


# --------------------------------------------------------------------------- validation errors


def _validation_error(exc: ValidationError, source: str) -> ConfigError:
    """The first pydantic error as one message: where, what is wrong, and the fix."""
    err = exc.errors()[0]
    loc = [str(p) for p in err["loc"]]
    service = None
    section = "file"
    if loc and loc[0] == "services" and len(loc) >= 2:
        service = loc[1]
        section = "services"
        path = loc[2:]
    elif loc and loc[0] == "launcher":
        section = "launcher"
        path = loc[1:]
    else:
        path = loc
    if "health" in path[:1]:
        section = "health"
    # pydantic appends the union member tried ("list[str]", "str") to the loc; drop those.
    path = [p for p in path if not re.match(r"^(list|dict|str|int|float|bool|literal)\b", p)]
    key = ".".join(path) if path else None
    if service is None and section == "launcher" and key:
        key = f"launcher.{key}"
    etype = err["type"]
    if etype == "extra_forbidden":
        model = _MODELS_BY_SECTION.get(section, FileModel)
        bad = path[-1] if path else loc[-1]
        fields = sorted(
            f.alias or n for n, f in model.model_fields.items()
        ) + [n for n in model.model_fields if model.model_fields[n].alias]
        close = difflib.get_close_matches(bad, fields, n=1)
        fix = (f"did you mean '{close[0]}'? " if close else "") + "valid keys: " + ", ".join(
            sorted(set(fields))
        )
        return ConfigError(f"unknown key '{bad}'", source=source, service=service, key=key, fix=fix)
    msg = err["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
        return ConfigError(msg, source=source, service=service, key=key)
    got = err.get("input")
    return ConfigError(
        f"wrong value {got!r}: {msg}",
        source=source,
        service=service,
        key=key,
        fix="see the config reference in the README",
    )


# --------------------------------------------------------------------------- placeholders


class _Scope:
    """The placeholder values visible at one place in the config."""

    def __init__(
        self,
        values: Mapping[str, str],
        environ: Mapping[str, str],
        where: Where,
        allowed_services: Sequence[str] | None,
        all_services: Mapping[str, Mapping[str, str]],
    ) -> None:
        self.values = values
        self.environ = environ
        self.where = where
        self.allowed = allowed_services
        self.all_services = all_services

    def lookup(self, name: str) -> str:
        if name in self.values:
            return self.values[name]
        if name.startswith("env."):
            var, _, default = name[4:].partition(":-")
            if var in self.environ:
                return self.environ[var]
            if ":-" in name:
                return default
            raise self._error(
                f"placeholder '${{{name}}}': environment variable {var} is not set",
                f"set {var}, or give a default: ${{env.{var}:-value}}",
            )
        if name.startswith("services."):
            parts = name.split(".")
            if len(parts) == 3 and parts[1] in self.all_services:
                target, attr = parts[1], parts[2]
                if self.allowed is not None and target not in self.allowed:
                    raise self._error(
                        f"placeholder '${{{name}}}' refers to '{target}', "
                        "which is not among this service's dependencies",
                        f"add '{target}' to depends_on",
                    )
                values = self.all_services[target]
                if attr in values:
                    return values[attr]
                if attr in ("port", "url"):
                    raise self._error(
                        f"placeholder '${{{name}}}': service '{target}' has no port",
                        f"give '{target}' a port (port = \"auto\")",
                    )
            if len(parts) == 3 and parts[1] not in self.all_services:
                raise self._error(
                    f"placeholder '${{{name}}}' names an unknown service '{parts[1]}'",
                    graph_mod._known_fix(parts[1], self.all_services),
                )
        known = sorted(self.values) + ["env.VAR", "services.NAME.port|host|url"]
        raise self._error(
            f"unknown placeholder '${{{name}}}'",
            "known placeholders: " + ", ".join("${" + k + "}" for k in known) + "; write $$ for a literal $",
        )

    def _error(self, problem: str, fix: str) -> ConfigError:
        return self.where(problem, fix)

    def expand(self, text: str) -> str:
        def sub(match: re.Match[str]) -> str:
            if match.group(0) == "$$":
                return "$"
            return self.lookup(match.group(1).strip())

        return PLACEHOLDER_RE.sub(sub, text)


def _referenced_services(model: FileModel) -> set[str]:
    """Services whose address some other service or test_env names in a placeholder."""
    texts = [str(v) for v in model.launcher.test_env.values()]
    for svc in model.services.values():
        texts.append(repr(svc.model_dump()))
    found: set[str] = set()
    for text in texts:
        found.update(re.findall(r"\$\{\s*services\.([A-Za-z0-9_-]+)\.", text))
    return found


def _uses_port(raw: ServiceModel) -> bool:
    texts: list[str] = []
    if isinstance(raw.command, str):
        texts.append(raw.command)
    elif raw.command:
        texts.extend(raw.command)
    for step in raw.setup:
        texts.extend([step] if isinstance(step, str) else step)
    texts.extend(str(v) for v in raw.env.values())
    if raw.health is not None:
        texts.extend(str(v) for v in raw.health.model_dump().values() if v is not None)
    if raw.cwd:
        texts.append(raw.cwd)
    return any(re.search(r"\$\{\s*(port|url)\s*\}", t) for t in texts)


def _argv(value: list[str] | str, where: Where | None = None, key: str = "command") -> list[str]:
    if not isinstance(value, str):
        return list(value)
    try:
        argv = shlex.split(value)
    except ValueError as exc:
        raise (where or ConfigError)(
            f"cannot split {value!r} into arguments: {exc}",
            fix="balance the quotes, or write the command as a list of strings", key=key,
        ) from None
    if not argv:
        raise (where or ConfigError)("the command is empty", fix="give the program to run", key=key)
    return argv


def _signal_number(value: str | int, where: Where) -> int:
    if isinstance(value, int):
        return value
    name = value.upper()
    if not name.startswith("SIG"):
        name = "SIG" + name
    try:
        return int(signal.Signals[name])
    except KeyError:
        raise where(f"unknown signal {value!r}", fix="use a signal name such as SIGTERM, SIGINT or SIGQUIT") from None


# --------------------------------------------------------------------------- parse


#: Where ``tmpfs = true`` puts a service's ``${tmp}``: memory, not disk (Linux).
MEMORY_TMP = Path("/dev/shm")
#: ...when it has this much room: containers often get a 64 MB /dev/shm, too small for a database.
MEMORY_MIN_FREE = 1 << 30


def memory_root(tmp_root: Path) -> Path | None:
    """The in-memory twin of the session's scratch root, when the machine has a roomy one."""
    try:
        stats = os.statvfs(MEMORY_TMP)
    except OSError:
        return None
    if stats.f_bavail * stats.f_frsize < MEMORY_MIN_FREE or not os.access(MEMORY_TMP, os.W_OK | os.X_OK):
        return None
    return MEMORY_TMP / tmp_root.name


def remove_scratch(tmp_root: Path) -> None:
    """Delete the session's scratch dirs (every ``${tmp}``), on disk and in memory."""
    import shutil

    for root in (tmp_root, MEMORY_TMP / tmp_root.name):
        if root.name.startswith("ul-"):
            shutil.rmtree(root, ignore_errors=True)


def parse(
    data: Mapping[str, Any],
    *,
    source: str | os.PathLike[str] = "launcher.toml",
    profile: str | None = None,
    mode: str | None = None,
    xdist: str | None = None,
    budget: float | None = None,
    timeout: float | None = None,
    ini: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    allocate_port: PortAllocator | None = None,
    pinned_ports: Mapping[str, int] | None = None,
    tmp_root: str | os.PathLike[str] | None = None,
) -> LauncherConfig:
    """Validate and resolve a config mapping; pure apart from ``allocate_port``.

    Precedence, highest first: the keyword arguments (command-line options) > ``LAUNCHER_*``
    in ``environ`` > ``ini`` (keys of ``[launcher]``) > the profile > the file > defaults.
    """
    src = str(source)
    environ = dict(os.environ if environ is None else environ)
    env = _env_overrides(environ, src)
    profile = profile or env.get("profile") or (ini or {}).get("profile") or None
    if not isinstance(data, Mapping):
        raise ConfigError("the config must be a table", source=src)
    for key in data:
        if key not in ("launcher", "services", "profiles"):
            close = difflib.get_close_matches(str(key), ["launcher", "services", "profiles"], n=1)
            raise ConfigError(
                f"unknown top-level table '{key}'",
                source=src,
                key=str(key),
                fix=(f"did you mean '{close[0]}'? " if close else "")
                + "valid tables: launcher, services, profiles",
            )
    _check_tables(data, src)
    profile_names = tuple(sorted(data.get("profiles") or {}))
    for name in profile_names:
        if not NAME_RE.match(name):
            raise ConfigError(
                f"profile name '{name}' may only use letters, digits, '_' and '-'",
                source=src,
                key=f"profiles.{name}",
            )
    merged = apply_profile(data, profile, src)
    launcher = dict(merged.get("launcher") or {})
    for key in ("mode", "xdist"):
        if (ini or {}).get(key):
            launcher[key] = ini[key]  # type: ignore[index]
    if (ini or {}).get("budget"):
        launcher["startup_budget"] = (ini or {})["budget"]
    for key in ("mode", "log_level", "dev_mode", "auto_restart"):
        if key in env:
            launcher[key] = env[key]
    if mode:
        launcher["mode"] = mode
    if xdist:
        launcher["xdist"] = xdist
    if budget is not None:
        launcher["startup_budget"] = budget
    timeout = timeout if timeout is not None else env.get("timeout")
    if timeout is not None:
        launcher["startup_timeout"] = timeout
    merged["launcher"] = launcher
    try:
        model = FileModel.model_validate(merged)
    except ValidationError as exc:
        raise _validation_error(exc, src) from None
    for name in model.services:
        if not NAME_RE.match(name):
            raise ConfigError(
                f"service name '{name}' may only use letters, digits, '_' and '-'",
                source=src,
                service=name,
                fix="rename it; names appear in placeholders and on command lines",
            )
    return _resolve(
        model,
        source=Path(src),
        profile=profile,
        profile_names=profile_names,
        timeout_override=timeout,
        environ=environ,
        allocate_port=allocate_port,
        pinned_ports=pinned_ports or {},
        tmp_root=Path(tmp_root) if tmp_root else None,
    )


def _resolve(
    model: FileModel,
    *,
    source: Path,
    profile: str | None,
    profile_names: tuple[str, ...],
    timeout_override: float | None,
    environ: Mapping[str, str],
    allocate_port: PortAllocator | None,
    pinned_ports: Mapping[str, int],
    tmp_root: Path | None,
) -> LauncherConfig:
    src = str(source)
    root = source.parent.resolve() if source.parent != Path("") else Path.cwd()
    deps = {name: tuple(svc.depends_on) for name, svc in model.services.items()}
    graph_mod.validate(deps, source=src)
    if tmp_root is None:
        import secrets
        import tempfile

        tmp_root = Path(tempfile.gettempdir()) / f"ul-{secrets.token_hex(4)}"

    # Addresses first, so every placeholder is known before anything is expanded.
    addresses: dict[str, dict[str, str]] = {}
    ports: dict[str, int | None] = {}
    auto: dict[str, bool] = {}
    for name in sorted(model.services):
        raw = model.services[name]
        if raw.url is not None:
            from urllib.parse import urlsplit

            def url_error(problem: str, fix: str | None = None, name: str = name, **_: Any) -> ConfigError:
                return ConfigError(problem, source=src, service=name, key="url", fix=fix)

            # Only ${env.VAR} and ${name} can be known yet: the url is what gives it an address.
            url = _Scope({"name": name}, environ, url_error, [], {}).expand(raw.url)
            try:
                parts = urlsplit(url)
                port_of_url = parts.port
            except ValueError as exc:
                raise url_error(f"url {url!r} is not valid: {exc}") from None
            ports[name] = port_of_url or (443 if parts.scheme == "https" else 80)
            addresses[name] = {"host": parts.hostname or raw.host, "port": str(ports[name]), "url": url.rstrip("/")}
            continue
        needs_port = raw.port is not None or raw.app is not None or (not raw.task and _uses_port(raw))
        if raw.task:
            needs_port = raw.port is not None or _uses_port(raw)
        if not needs_port:
            ports[name] = None
            addresses[name] = {"host": raw.host}
            continue
        if isinstance(raw.port, int):
            ports[name] = raw.port
        elif name in pinned_ports:
            ports[name] = pinned_ports[name]
        else:
            if allocate_port is None:
                raise ConfigError(
                    "needs an automatic port but no port allocator was given",
                    source=src,
                    service=name,
                    key="port",
                    fix="use load_config(), which reserves ports, or set a fixed port",
                )
            ports[name] = allocate_port(name, raw.host)
            auto[name] = True
        port = ports[name]
        assert port is not None
        addresses[name] = {"host": raw.host, "port": str(port), "url": client_url(raw.host, port)}

    closures = {name: graph_mod.closure(deps, [name]) - {name} for name in deps}
    raw_services = model.services
    def build(name: str, port: int | None) -> ServiceConfig:
        """One service, every placeholder expanded, with ``port`` as its own port."""
        own_address = dict(addresses[name])
        if port is not None and raw_services[name].url is None:
            own_address.update(port=str(port), url=client_url(own_address["host"], port))
        raw = raw_services[name]
        current_key = ["?"]

        def where(problem: str, fix: str | None = None, key: str | None = None,
                  name: str = name, current_key: list[str] = current_key) -> ConfigError:
            return ConfigError(problem, source=src, service=name, key=key or current_key[0], fix=fix)

        tmp = ((raw.tmpfs and memory_root(tmp_root)) or tmp_root) / name
        own = {"name": name, "host": own_address["host"], "tmp": str(tmp), "python": sys.executable}
        for attr in ("port", "url"):
            if attr in own_address:
                own[attr] = own_address[attr]
        scope = _Scope(own, environ, where, sorted(closures[name]), addresses)

        def ex(key: str, text: str, scope: _Scope = scope, current_key: list[str] = current_key) -> str:
            current_key[0] = key
            return scope.expand(text)

        url = raw.url and ex("url", raw.url)
        if url is not None:
            from urllib.parse import urlsplit

            parts = urlsplit(url)
            if not parts.scheme or not parts.hostname:
                raise ConfigError(
                    f"url {url!r} needs a scheme and a host",
                    source=src,
                    service=name,
                    key="url",
                    fix='write it like "http://127.0.0.1:9000"',
                )
        else:
            url = own_address.get("url")
        command = tuple(ex("command", a) for a in _argv(raw.command, where)) if raw.command is not None else ()
        if raw.command is not None and not command:
            raise where("the command is empty", fix="give the program to run", key="command")
        setup = tuple(
            tuple(ex(f"setup[{i}]", a) for a in _argv(step, where, f"setup[{i}]")) for i, step in enumerate(raw.setup)
        )
        if any(not step for step in setup):
            raise where("a setup step is empty", fix="remove it or give the program to run", key="setup")
        env_values = {
            k: ex(f"env.{k}", str(v).lower() if isinstance(v, bool) else str(v))
            for k, v in raw.env.items()
        }
        cwd_text = ex("cwd", raw.cwd) if raw.cwd else None
        cwd = (root / cwd_text).resolve() if cwd_text else root
        health = _resolve_health(raw, name, port, own_address["host"], url, ex, where)
        current_key[0] = "stop_signal"
        stop_signal = _signal_number(raw.stop_signal, where)
        watch = tuple((root / w).resolve() for w in raw.watch)
        return ServiceConfig(
            name=name,
            kind="app" if raw.app else "url" if raw.url is not None else "command",
            host=own_address["host"],
            port=port,
            url=url,
            app=raw.app,
            command=command,
            env=env_values,
            cwd=cwd,
            setup=setup,
            user=raw.user,
            task=raw.task,
            health=health,
            startup_timeout=timeout_override or raw.startup_timeout or model.launcher.startup_timeout,
            stop_signal=stop_signal,
            stop_timeout=raw.stop_timeout,
            retries=raw.retries,
            watch=watch,
            depends_on=tuple(raw.depends_on),
            tmp=tmp,
            tmpfs=raw.tmpfs,
            port_auto=auto.get(name, False),
        )

    referenced = _referenced_services(model)
    services: dict[str, ServiceConfig] = {}
    for name in sorted(model.services):
        services[name] = build(name, ports[name])
        if auto.get(name) and name not in referenced:
            # Nothing else names its address: a clash at start may move it to another port.
            services[name] = replace(services[name], rebind=functools.partial(build, name))

    def test_env_where(problem: str, fix: str | None = None, key: str | None = None) -> ConfigError:
        return ConfigError(problem, source=src, key=key or "launcher.test_env", fix=fix)

    test_scope = _Scope({}, environ, test_env_where, None, addresses)
    test_env = {
        k: test_scope.expand(str(v).lower() if isinstance(v, bool) else str(v))
        for k, v in model.launcher.test_env.items()
    }
    mode = "auto" if model.launcher.mode == "auto_detect" else model.launcher.mode
    return LauncherConfig(
        source=source,
        root=root,
        profile=profile,
        mode=mode,
        startup_timeout=timeout_override or model.launcher.startup_timeout,
        startup_budget=model.launcher.startup_budget,
        xdist=model.launcher.xdist,
        state_dir=(root / model.launcher.state_dir).resolve(),
        log_level=model.launcher.log_level,
        auto_restart=model.launcher.auto_restart,
        dev_mode=model.launcher.dev_mode,
        services=services,
        test_env=test_env,
        tmp_root=tmp_root,
        profiles=profile_names,
        spawner=model.launcher.spawner,
        preload=tuple(model.launcher.preload),
    )


def _resolve_health(
    raw: ServiceModel,
    name: str,
    port: int | None,
    host: str,
    url: str | None,
    ex: Callable[[str, str], str],
    where: Where,
) -> HealthCheck:
    if raw.task:
        if raw.health is not None:
            raise where("a task has no health probe: it is ready when it exits 0",
                        fix="remove health, or drop task = true for a long-running service", key="health")
        return HealthCheck("exit")
    h = raw.health
    if h is None:
        return HealthCheck("tcp") if port is not None else HealthCheck("alive")
    if h.http is not None:
        target = ex("health.http", h.http)
        if target.startswith("/"):
            if url is None:
                raise where(f"http path {target!r} needs a port",
                            fix="give the service a port, or write a full URL", key="health.http")
            target = url.rstrip("/") + target
        return HealthCheck("http", timeout=h.timeout, url=target)
    if h.tcp:
        if port is None:
            raise where("a tcp probe needs a port", fix='set port = "auto" or use ${port} in the command',
                        key="health.tcp")
        return HealthCheck("tcp", timeout=h.timeout)
    if h.command is not None:
        argv = tuple(ex("health.command", a) for a in _argv(h.command, where, "health.command"))
        if not argv:
            raise where("the probe command is empty", fix="give the program to run", key="health.command")
        return HealthCheck("command", timeout=h.timeout, argv=argv)
    if h.log is not None:
        return HealthCheck("log", timeout=h.timeout, pattern=ex("health.log", h.log))
    return HealthCheck("notify", timeout=h.timeout)


# --------------------------------------------------------------------------- modes


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
    conflict = inprocess_env_conflict(config)
    if config.mode == "multi_process":
        return "multi_process", "mode = multi_process was asked for", True
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
        if subprocess_apps_because:
            return "single_process", f"single_process asked for, but {subprocess_apps_because}: apps run as subprocesses", True
        return "single_process", "mode = single_process was asked for", False
    if conflict:
        var, a, b = conflict
        return "multi_process", f"auto: '{a}' and '{b}' set {var} differently", True
    if subprocess_apps_because:
        return "multi_process", f"auto: {subprocess_apps_because}", True
    return "single_process", "auto: apps can run in the test process", False


# --------------------------------------------------------------------------- reading


def read_toml(path: Path) -> dict[str, Any]:
    """The file's TOML as a mapping (``[tool.unified-launcher]`` for a pyproject.toml)."""
    import tomllib

    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            "file not found", source=str(path), fix="check the path, or run `unified-launcher init`"
        ) from None
    except OSError as exc:
        raise ConfigError(f"cannot read the file: {exc.strerror}", source=str(path)) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(
            f"invalid TOML: {exc}", source=str(path), fix="fix the syntax on that line"
        ) from None
    if path.name == "pyproject.toml":
        section = data.get("tool", {}).get("unified-launcher")
        if section is None:
            raise ConfigError(
                "no [tool.unified-launcher] table", source=str(path),
                fix="add [tool.unified-launcher.services.NAME] tables, or use a launcher.toml",
            )
        return dict(section)
    return data


class _AnyPort(dict[str, int]):
    """Pinned ports answering 0 for every service: resolve a config without reserving any."""

    def __contains__(self, key: object) -> bool:
        return True

    def __getitem__(self, key: str) -> int:
        return 0


def state_dir_of(path: str | os.PathLike[str], *, profile: str | None = None) -> Path:
    """The config's state folder, found without reserving ports (status, down, attach)."""
    return load_config(path, profile=profile, pinned_ports=_AnyPort(), tmp_root="/nonexistent").state_dir


def load_config(
    path: str | os.PathLike[str],
    *,
    profile: str | None = None,
    mode: str | None = None,
    xdist: str | None = None,
    budget: float | None = None,
    timeout: float | None = None,
    ini: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    pinned_ports: Mapping[str, int] | None = None,
    tmp_root: str | os.PathLike[str] | None = None,
) -> LauncherConfig:
    """Read, validate and resolve a config file, reserving its ``auto`` ports machine-wide."""
    from . import _ports

    source = Path(path)
    data = read_toml(source)
    reserved: list[int] = []
    with _ports.reserver() as reserve:

        def allocate(name: str, host: str) -> int:
            port = reserve(host)
            reserved.append(port)
            return port

        try:
            return parse(
                data,
                source=source,
                profile=profile,
                mode=mode,
                xdist=xdist,
                budget=budget,
                timeout=timeout,
                ini=ini,
                environ=environ,
                allocate_port=allocate,
                pinned_ports=pinned_ports,
                tmp_root=tmp_root,
            )
        except BaseException:
            _ports.unclaim(reserved)  # still under the lock: the claims file is rewritten on exit
            raise
