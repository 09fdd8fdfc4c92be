"""The config's shapes: the pydantic models of the file as written, and the frozen resolved config.

The raw models validate types and keys; :class:`ServiceConfig` and :class:`LauncherConfig` are what
the rest of the launcher reads, with every placeholder expanded and every path absolute.
"""

from __future__ import annotations

import re
import shlex
import signal
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, field_validator, model_validator

from ..errors import ConfigError

#: What ``mode`` (and --launcher-mode, --mode, LAUNCHER_MODE) accepts; ``auto_detect`` is ``auto``.
ModeSetting = Literal["single_process", "multi_process", "auto", "auto_detect"]
#: The mode after resolving the alias (what :class:`LauncherConfig` holds).
Mode = Literal["single_process", "multi_process", "auto"]
XdistSetting = Literal["shared", "per_worker"]
LogLevel = Literal["debug", "info", "warning", "error", "critical"]
Spawner = Literal["preimport", "plain"]
MODE_CHOICES: tuple[str, ...] = get_args(ModeSetting)
XDIST_CHOICES: tuple[str, ...] = get_args(XdistSetting)
Kind = Literal["app", "command", "url", "image"]
#: When an image is pulled: only when it is not there yet (compose's default), every start, never.
Pull = Literal["missing", "always", "never"]
#: Which container engine runs ``image`` services: the first of podman, docker on PATH, or that one.
ContainerEngine = Literal["auto", "podman", "docker"]
#: ``session``: once for the whole session; ``worker``: a task run once in each xdist worker.
Scope = Literal["session", "worker"]
#: How an ``app`` is served: ``asgi`` (uvicorn) or ``wsgi`` (through an adapter); None: detected.
Interface = Literal["asgi", "wsgi"]
PortAllocator = Callable[[str, str], int]
#: Reads one dotenv file: ``name -> value`` (None for a bare ``NAME`` line).
EnvFileReader = Callable[[Path], Mapping[str, str | None]]
#: Builds the ConfigError for one place in the config: ``where(problem, fix=..., key=...)``.
Where = Callable[..., ConfigError]

NAME_RE = re.compile(r"^[A-Za-z0-9_-]+$")
PLACEHOLDER_RE = re.compile(r"\$\$|\$\{([^}]*)\}")
DEFAULT_TIMEOUT = 30.0
DEFAULT_BUDGET = 25.0


# --------------------------------------------------------------------------- raw models


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)


def _regex(value: str, what: str) -> str:
    try:
        re.compile(value)
    except re.error as exc:
        raise ValueError(f"{what} {value!r} is not a valid regex: {exc}") from None
    return value


class HttpCheckModel(_Strict):
    """``health.http = { path = "/health", status = [200, 204], body = "regex", headers = {...} }``;
    ``ca_file`` / ``cert`` / ``key`` for https (relative to the config file)."""

    path: str
    status: list[Annotated[int, Field(ge=100, le=599)]] | None = Field(default=None, min_length=1)
    body: str | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    ca_file: str | None = None
    cert: str | None = None
    key: str | None = None

    @model_validator(mode="after")
    def _valid(self) -> HttpCheckModel:
        if self.body is not None:
            _regex(self.body, "body pattern")
        if self.key is not None and self.cert is None:
            raise ValueError("key is the private key of a client cert: set cert too")
        return self


class HealthModel(_Strict):
    """``health = {...}``: exactly one probe kind, an optional per-probe timeout, and how the
    monitor keeps probing once the service is ready (``interval``, ``failure_threshold``)."""

    #: A path or URL (a plain GET on 2xx), or the table; a string becomes ``{ path = ... }``.
    http: HttpCheckModel | None = None
    tcp: bool | None = None
    command: list[str] | str | None = None
    log: str | None = None
    notify: bool | None = None
    #: A command run inside the container (``podman exec``): image services only.
    exec: list[str] | str | None = None
    timeout: float = Field(default=1.0, gt=0)
    #: Seconds between the monitor's probes of a ready service; 0 turns the monitor's probes off.
    interval: float = Field(default=2.0, ge=0)
    #: Consecutive failed probes that make a ready service unhealthy.
    failure_threshold: int = Field(default=3, ge=1)

    @field_validator("http", mode="before")
    @classmethod
    def _path_as_table(cls, value: Any) -> Any:
        return {"path": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def _one_kind(self) -> HealthModel:
        kinds = [k for k in ("http", "tcp", "command", "log", "notify", "exec") if getattr(self, k)]
        if len(kinds) > 1 or (not kinds and self.model_fields_set - {"timeout", "interval", "failure_threshold"}):
            raise ValueError(
                "set exactly one of http, tcp, command, log, notify, exec"
                + (f" (got {', '.join(kinds)})" if kinds else "")
            )
        if self.log is not None:
            _regex(self.log, "log pattern")
        return self


EnvValue = str | int | float | bool
#: When a dependent may start: once the dependency's process runs, once it is healthy, or once
#: it (a task) exited 0. Compose's names are accepted too.
Condition = Literal["started", "healthy", "completed"]
_COMPOSE_CONDITIONS = {"service_started": "started", "service_healthy": "healthy",
                       "service_completed_successfully": "completed"}


class DependencyModel(_Strict):
    """``depends_on = [{ service = "db", condition = "healthy", required = true, restart = false }]``."""

    service: str
    condition: Condition | None = None
    required: bool = True
    restart: bool = False

    @field_validator("condition", mode="before")
    @classmethod
    def _compose_names(cls, value: Any) -> Any:
        return _COMPOSE_CONDITIONS.get(value, value) if isinstance(value, str) else value


#: The keys only an ``image`` service has (SPEC 8).
IMAGE_KEYS = ("container_port", "pull", "mounts", "ulimits")


class ServiceModel(_Strict):
    """One ``[services.NAME]`` table, as written."""

    app: str | None = None
    interface: Interface | None = None
    #: A command service's program; an image service's container command (the image's own without it).
    command: list[str] | str | None = None
    url: str | None = None
    #: ``image = "redis:7"``: a container run by podman or docker (SPEC 8).
    image: str | None = None
    #: The port inside the container, published on ``${host}:${port}``.
    container_port: int | None = Field(default=None, ge=1, le=65535)
    pull: Pull = "missing"
    #: compose's short syntax, ``"./sql:/docker-entrypoint-initdb.d:ro"`` (host paths relative to the file).
    mounts: list[str] = Field(default_factory=list)
    #: compose's: ``{ nofile = 4096 }`` or ``{ nofile = { soft = 1024, hard = 4096 } }`` (checked on resolve).
    ulimits: dict[str, Any] = Field(default_factory=dict)
    #: Plain names become tables here, so everything after reads one shape.
    depends_on: list[DependencyModel] = Field(default_factory=list, alias="dependencies")
    port: int | Literal["auto"] | None = None
    host: str = "127.0.0.1"
    env: dict[str, EnvValue] = Field(default_factory=dict)
    #: dotenv files (compose's ``env_file``), relative to the config file; ``env`` wins over them.
    env_file: str | list[str] = Field(default_factory=list)
    cwd: str | None = None
    setup: list[list[str] | str] = Field(default_factory=list)
    user: str | None = None
    task: bool = False
    #: ``true``: ``${tmp}`` in memory; for an image, a list of container paths mounted in memory.
    tmpfs: bool | list[str] = False
    health: HealthModel | None = None
    startup_timeout: float | None = Field(default=None, gt=0)
    stop_signal: StrictStr | StrictInt = "SIGTERM"  # strict: true is not SIGHUP
    #: Run before ``stop_signal`` (``redis-cli -p ${port} shutdown``); the signal still follows.
    stop_command: list[str] | str | None = None
    stop_timeout: float = Field(default=10.0, ge=0)
    retries: int = Field(default=1, ge=1)
    #: N instances named NAME-0 .. NAME-(N-1), each with its own port; ``${replica}`` is 0..N-1.
    replicas: int = Field(default=1, ge=1, le=1000)
    watch: list[str] = Field(default_factory=list)
    #: The scheme of the service's url when the launcher cannot tell (``amqp``, ``mysql``, ``https``).
    scheme: str | None = None
    #: ``"worker"``: a task run once in each xdist worker (``shared``), after its shared dependencies.
    scope: Scope = "session"
    #: Brings the service's data back to a clean state: a command, or ``"module:function"``.
    reset: list[str] | str | None = None

    @field_validator("depends_on", mode="before")
    @classmethod
    def _names_as_tables(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [{"service": entry} if isinstance(entry, str) else entry for entry in value]
        return value

    @field_validator("scheme")
    @classmethod
    def _bare_scheme(cls, value: str | None) -> str | None:
        if value is not None and value.endswith("://"):
            raise ValueError(f"write the scheme without ://, as scheme = {value[:-3]!r}")
        if value is not None and not re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]*", value):
            raise ValueError(f"{value!r} is not a URL scheme (such as amqp, mysql or https)")
        return value.lower() if value is not None else None

    @field_validator("port")
    @classmethod
    def _port_range(cls, value: int | str | None) -> int | str | None:
        if isinstance(value, int) and not 1 <= value <= 65535:
            raise ValueError(f"port {value} is outside 1-65535")
        return value

    @model_validator(mode="after")
    def _one_kind(self) -> ServiceModel:
        kinds = [k for k in ("app", "command", "url", "image") if getattr(self, k) is not None]
        if self.image is not None and self.command is not None:
            kinds.remove("command")  # the container's command
        if len(kinds) != 1:
            raise ValueError(
                "set exactly one of app (an ASGI app), command (a subprocess), url "
                f"(an external service) or image (a container){' (got ' + ', '.join(kinds) + ')' if kinds else ''}"
            )
        if self.task and self.command is None and self.image is None:
            raise ValueError("task = true needs a command")
        if self.stop_command is not None and (self.command is None or self.image is not None):
            raise ValueError("stop_command is for command services (an app is stopped by its server, "
                             "a container by its stop_signal, an external service is never stopped)")
        return self  # an image's own keys are checked with their key and fix: config.containers


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
    container_engine: ContainerEngine = "auto"

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
    #: ``[env]``: variables every service and ``[launcher.test_env]`` get (each one's own win).
    env: dict[str, EnvValue] = Field(default_factory=dict)
    services: dict[str, ServiceModel] = Field(default_factory=dict)
    profiles: dict[str, dict[str, Any]] = Field(default_factory=dict)


_MODELS_BY_SECTION: dict[str, type[BaseModel]] = {
    "launcher": LauncherModel,
    "services": ServiceModel,
    "health": HealthModel,
    "health.http": HttpCheckModel,
}


# --------------------------------------------------------------------------- resolved config


@dataclass(frozen=True)
class HealthCheck:
    """A resolved probe: ``kind`` plus its expanded target."""

    kind: Literal["http", "tcp", "command", "log", "notify", "alive", "exit", "exec"]
    timeout: float = 1.0
    url: str | None = None
    argv: tuple[str, ...] = ()
    pattern: str | None = None
    #: How the monitor keeps probing once the service is ready (0: it does not).
    interval: float = 2.0
    failure_threshold: int = 3
    #: http: the statuses that pass (None: any 2xx), a regex the body must match, request headers.
    status: tuple[int, ...] | None = None
    body: str | None = None
    headers: tuple[tuple[str, str], ...] = ()
    #: https: the CA bundle to trust, and a client certificate (with its key when separate).
    ca_file: Path | None = None
    cert: Path | None = None
    key: Path | None = None

    @property
    def monitored(self) -> bool:
        """Whether the monitor probes it after ready (a log or notify probe has nothing to ask again)."""
        return self.interval > 0 and self.kind in ("http", "tcp", "command", "exec")

    def describe(self) -> str:
        if self.kind == "http":
            extra = f" expecting {'/'.join(map(str, self.status))}" if self.status else ""
            return f"http GET {self.url}{extra}" + (f" body /{self.body}/" if self.body else "")
        if self.kind in ("command", "exec"):
            return f"{self.kind} " + shlex.join(self.argv)
        if self.kind == "log":
            return f"log /{self.pattern}/"
        if self.kind == "alive":
            return "alive for 0.5 s"
        if self.kind == "exit":
            return "exits 0 (task)"
        return self.kind


@dataclass(frozen=True)
class ResetHook:
    """``reset``: a command to run (``argv``), or a Python ``function`` ("module:function")
    called with the service's handle and the worker (``gw0``, or ``main`` without xdist)."""

    argv: tuple[str, ...] = ()
    function: str | None = None

    def describe(self) -> str:
        return self.function or shlex.join(self.argv)


@dataclass(frozen=True)
class Dependency:
    """One resolved ``depends_on`` entry (a plain name: ``healthy``, or ``completed`` for a task)."""

    service: str
    condition: Condition = "healthy"
    required: bool = True
    #: Restart this service when that one restarts (compose's ``restart: true``).
    restart: bool = False


@dataclass(frozen=True)
class ContainerSpec:
    """An ``image`` service's container, resolved: host paths absolute, ulimits as soft/hard."""

    image: str
    #: The port inside the container that ``${port}`` publishes (None: nothing published).
    port: int | None = None
    pull: Pull = "missing"
    #: ``-v`` values: ``/abs/host:/in/container[:opts]`` or ``named-volume:/path``.
    mounts: tuple[str, ...] = ()
    tmpfs: tuple[str, ...] = ()
    ulimits: tuple[tuple[str, int, int], ...] = ()
    #: ``cwd``: the working directory inside the container (None: the image's).
    workdir: str | None = None


@dataclass(frozen=True)
class ServiceConfig:
    """One service with every placeholder expanded and every path absolute."""

    name: str
    kind: Kind
    host: str
    port: int | None
    url: str | None
    app: str | None = None
    #: ``interface = "asgi" | "wsgi"`` as written; None: detect it when the app is imported.
    interface: Interface | None = None
    command: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: Path = Path(".")
    setup: tuple[tuple[str, ...], ...] = ()
    user: str | None = None
    task: bool = False
    health: HealthCheck = HealthCheck("alive")
    startup_timeout: float = DEFAULT_TIMEOUT
    stop_signal: int = int(signal.SIGTERM)
    stop_command: tuple[str, ...] = ()
    stop_timeout: float = 10.0
    retries: int = 1
    watch: tuple[Path, ...] = ()
    depends_on: tuple[str, ...] = ()
    #: Each of ``depends_on`` with its condition; optional ones the config does not define are
    #: left out of both (``skipped`` names them).
    dependencies: tuple[Dependency, ...] = ()
    skipped: tuple[str, ...] = ()
    tmp: Path = Path("/tmp")
    #: ``tmpfs = true`` was asked for (``tmp`` is under MEMORY_TMP unless that had no room).
    tmpfs: bool = False
    port_auto: bool = False
    scope: Scope = "session"
    reset: ResetHook | None = None
    #: The xdist worker running this worker task (its log is its own); None for everything else.
    worker: str | None = None
    #: An ``image`` service's container (None for every other kind).
    container: ContainerSpec | None = None
    #: Set when the port is automatic and no other service or test_env names this service's
    #: address: ``rebind(port)`` is the same service on another port (retried after a clash).
    rebind: Callable[[int], ServiceConfig] | None = field(default=None, compare=False, repr=False)

    @property
    def is_external(self) -> bool:
        return self.kind == "url"

    @property
    def log_name(self) -> str:
        """Its log's file name: ``NAME.log``; a worker task's ``NAME.gw0.log`` (workers share logs/)."""
        return f"{self.name}.{self.worker}.log" if self.worker else f"{self.name}.log"


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
    #: A service with ``replicas = N``: its name -> its instances' names (NAME-0 ...).
    groups: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    #: ``${worker}``: this process's xdist worker (``gw0``, ...), ``main`` without xdist.
    worker: str = "main"
    #: ``[launcher] container_engine`` (LAUNCHER_CONTAINER_ENGINE): auto, podman or docker.
    container_engine: ContainerEngine = "auto"

    @property
    def worker_index(self) -> int:
        return worker_index(self.worker)

    @property
    def worker_tasks(self) -> tuple[str, ...]:
        """The ``scope = "worker"`` tasks: each xdist worker runs its own."""
        return tuple(sorted(name for name, svc in self.services.items() if svc.scope == "worker"))

    def expand(self, names: Iterable[str]) -> list[str]:
        """``names`` with each replicated service's name replaced by its instances' names."""
        return [member for name in names for member in self.groups.get(name, (name,))]

    @property
    def graph(self) -> dict[str, tuple[str, ...]]:
        """``name -> dependencies`` to start (an external service's own are never started)."""
        return {
            name: () if svc.is_external else svc.depends_on for name, svc in self.services.items()
        }

    @property
    def required_graph(self) -> dict[str, tuple[str, ...]]:
        """:attr:`graph` without its ``required = false`` edges."""
        return {
            name: () if svc.is_external else tuple(d.service for d in svc.dependencies if d.required)
            for name, svc in self.services.items()
        }

    @property
    def ports(self) -> dict[str, int]:
        return {n: s.port for n, s in self.services.items() if s.port is not None}

    def with_mode(self, mode: Mode) -> LauncherConfig:
        return replace(self, mode=mode)


def worker_index(worker: str) -> int:
    """``${worker_index}`` of a worker id: 0 for ``main`` and ``gw0``, 1 for ``gw1`` ..."""
    digits = worker.removeprefix("gw")
    return int(digits) if digits.isdigit() else 0


def describe_dependencies(svc: ServiceConfig) -> str:
    """``db, cache (started), search (optional, skipped: not defined)``: what is not the default said."""
    parts = []
    for dep in svc.dependencies:
        notes: list[str] = [] if dep.condition in ("healthy", "completed") else [dep.condition]
        notes += ([] if dep.required else ["optional"]) + (["restart"] if dep.restart else [])
        parts.append(dep.service + (f" ({', '.join(notes)})" if notes else ""))
    parts += [f"{name} (optional, skipped: not defined)" for name in svc.skipped]
    return ", ".join(parts)


# --------------------------------------------------------------------------- addresses

#: A server bound to every interface is reached by its clients on loopback.
_WILDCARD_TO_LOOPBACK = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}


def client_url(host: str, port: int, scheme: str = "http") -> str:
    """The URL a client uses for a server bound to ``host:port``: a wildcard bind is reached on
    loopback, and an IPv6 address is bracketed (``http://[::1]:8000``)."""
    connect = _WILDCARD_TO_LOOPBACK.get(host, host)
    return f"{scheme}://[{connect}]:{port}" if ":" in connect else f"{scheme}://{connect}:{port}"
