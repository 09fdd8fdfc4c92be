"""``parse(mapping, source=...)``: the raw TOML mapping to a frozen :class:`LauncherConfig`.

Pure apart from the port allocator it is given: profiles and overrides are merged, the models
validate, then addresses are fixed first so every placeholder is known before it is expanded.
"""

from __future__ import annotations

import difflib
import functools
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from .. import graph as graph_mod
from ..errors import ConfigError
from .fields import _argv, _resolve_health, _resolve_reset, _signal_number
from .models import (
    _MODELS_BY_SECTION,
    NAME_RE,
    Dependency,
    DependencyModel,
    EnvFileReader,
    EnvValue,
    FileModel,
    LauncherConfig,
    PortAllocator,
    ServiceConfig,
    ServiceModel,
    client_url,
    worker_index,
)
from .placeholders import _referenced_services, _Scope, _uses_port
from .containers import check_image_keys, resolve_container
from .profiles import _check_tables, _env_overrides, apply_profile
from .schemes import scheme_of
from .scratch import memory_root

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
        section = "health.http" if path[1:2] == ["http"] and len(path) > 2 else "health"
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


# --------------------------------------------------------------------------- parse


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
    read_env_file: EnvFileReader | None = None,
    worker: str | None = None,
) -> LauncherConfig:
    """Validate and resolve a config mapping; pure apart from ``allocate_port`` and
    ``read_env_file`` (what ``env_file`` needs; ``load_config`` gives both).

    ``worker``: this process's xdist worker id (``gw0``, ...; None: ``main``), for ``${worker}``.

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
        if key not in ("launcher", "env", "services", "profiles"):
            close = difflib.get_close_matches(str(key), ["launcher", "env", "services", "profiles"], n=1)
            raise ConfigError(
                f"unknown top-level table '{key}'",
                source=src,
                key=str(key),
                fix=(f"did you mean '{close[0]}'? " if close else "")
                + "valid tables: launcher, env, services, profiles",
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
    for key in ("mode", "log_level", "dev_mode", "auto_restart", "container_engine"):
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
        raw = model.services[name]
        if raw.interface is not None and raw.app is None:
            raise ConfigError(
                f"interface = {raw.interface!r} is only for app services (this one has "
                f"{'a command' if raw.command is not None else 'a url'})",
                source=src,
                service=name,
                key="interface",
                fix="remove interface, or serve a Python app with app = \"module:attribute\"",
            )
        if raw.scope == "worker" and not raw.task:
            raise ConfigError(
                'scope = "worker" is for tasks: a service that keeps running is one process for every xdist worker',
                source=src, service=name, key="scope",
                fix="add task = true if it is a one-shot job (creating the worker's database), or remove scope; "
                    "each worker's own data comes from a worker task, ${worker} in test_env, and reset",
            )
        check_image_keys(raw, name, src)
        if raw.scheme is not None and raw.url is not None:
            raise ConfigError(
                "scheme is for services the launcher runs: an external service's url has its own",
                source=src,
                service=name,
                key="scheme",
                fix=f"remove scheme, or write the url as {raw.scheme}://host:port",
            )
    model, groups = _expand_replicas(model, src)
    return _resolve(
        model,
        groups=groups,
        source=Path(src),
        profile=profile,
        profile_names=profile_names,
        timeout_override=timeout,
        environ=environ,
        allocate_port=allocate_port,
        pinned_ports=pinned_ports or {},
        tmp_root=Path(tmp_root) if tmp_root else None,
        read_env_file=read_env_file,
        worker=worker or "main",
    )


def _expand_replicas(model: FileModel, src: str) -> tuple[FileModel, dict[str, tuple[str, ...]]]:
    """A service with ``replicas = N`` becomes N services NAME-0 .. NAME-(N-1); a dependency on
    NAME becomes one on each of them (with the same condition)."""
    groups = {name: tuple(f"{name}-{i}" for i in range(raw.replicas))
              for name, raw in model.services.items() if raw.replicas > 1}
    if not groups:
        return model, {}
    services: dict[str, ServiceModel] = {}
    for name, raw in model.services.items():
        depends_on: list[DependencyModel] = []
        for dep in raw.depends_on:
            depends_on += ([dep.model_copy(update={"service": m}) for m in groups[dep.service]]
                           if dep.service in groups else [dep])
        raw = raw.model_copy(update={"depends_on": depends_on})
        for member in groups.get(name, (name,)):
            if member != name and member in model.services:
                raise ConfigError(f"replica '{member}' of '{name}' has the name of another service", source=src,
                                  service=name, key="replicas", fix=f"rename the service '{member}'")
            services[member] = raw
    return model.model_copy(update={"services": services}), groups


def _env_text(value: EnvValue) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def _env_files(
    model: FileModel, root: Path, src: str, environ: Mapping[str, str], read: EnvFileReader | None
) -> dict[str, dict[str, str]]:
    """Each service's ``env_file`` values, merged in order (a later file wins); a bare ``NAME``
    line takes NAME from the environment, or is left out when it is not set (as compose does)."""
    values: dict[str, dict[str, str]] = {}
    cache: dict[Path, Mapping[str, str | None]] = {}
    for name, raw in model.services.items():
        files = [raw.env_file] if isinstance(raw.env_file, str) else raw.env_file
        merged: dict[str, str] = {}
        for file in files:
            if read is None:
                raise ConfigError("env_file needs a reader", source=src, service=name, key="env_file",
                                  fix="use load_config(), which reads env files, or pass read_env_file")
            path = (root / file).resolve()
            if path not in cache:
                try:
                    cache[path] = read(path)
                except ConfigError as exc:
                    exc.source, exc.service = src, name
                    raise
            for key, value in cache[path].items():
                if value is not None:
                    merged[key] = value
                elif key in environ:
                    merged[key] = environ[key]
        values[name] = merged
    return values


def _dependencies(model: FileModel, src: str) -> tuple[dict[str, tuple[Dependency, ...]], dict[str, tuple[str, ...]]]:
    """Each service's ``depends_on`` entries resolved (a plain name waits for ``healthy``, or
    ``completed`` for a task), and the optional ones left out because the config lacks them."""
    resolved: dict[str, tuple[Dependency, ...]] = {}
    skipped: dict[str, tuple[str, ...]] = {}
    for name, raw in model.services.items():
        entries: list[Dependency] = []
        left_out: list[str] = []
        for dep in raw.depends_on:
            target = model.services.get(dep.service)
            if target is None and not dep.required:
                left_out.append(dep.service)
                continue
            condition = dep.condition or ("completed" if target is not None and target.task else "healthy")
            same = next((e for e in entries if e.service == dep.service), None)
            if same is not None:
                if (same.condition, same.required, same.restart) != (condition, dep.required, dep.restart):
                    raise ConfigError(f"depends on '{dep.service}' twice, differently", source=src, service=name,
                                      key="depends_on", fix="keep one entry for it")
                continue  # the same entry twice: once is enough
            if target is not None and (condition == "completed") != target.task and condition != "started":
                what = ("a task: it is done when it exits 0" if target.task
                        else "a long-running service: it never completes")
                raise ConfigError(
                    f"condition '{condition}' on '{dep.service}', which is {what}", source=src, service=name,
                    key="depends_on", fix=f"use condition = \"{'completed' if target.task else 'healthy'}\" "
                                          "(or \"started\")",
                )
            entries.append(Dependency(dep.service, condition, dep.required, dep.restart))
        resolved[name], skipped[name] = tuple(entries), tuple(left_out)
    return resolved, skipped


def _resolve(
    model: FileModel,
    *,
    groups: Mapping[str, tuple[str, ...]],
    source: Path,
    profile: str | None,
    profile_names: tuple[str, ...],
    timeout_override: float | None,
    environ: Mapping[str, str],
    allocate_port: PortAllocator | None,
    pinned_ports: Mapping[str, int],
    tmp_root: Path | None,
    read_env_file: EnvFileReader | None = None,
    worker: str = "main",
) -> LauncherConfig:
    src = str(source)
    root = source.parent.resolve() if source.parent != Path("") else Path.cwd()
    env_files = _env_files(model, root, src, environ, read_env_file)
    dependencies, skipped = _dependencies(model, src)
    deps = {name: tuple(d.service for d in entries) for name, entries in dependencies.items()}
    graph_mod.validate(deps, source=src)
    _check_worker_scope(model, deps, src)
    worker_values = {"worker": worker, "worker_index": str(worker_index(worker))}
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
        needs_port = (raw.port is not None or raw.app is not None or raw.container_port is not None
                      or (not raw.task and _uses_port(raw)))
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
        addresses[name] = {"host": raw.host, "port": str(port), "url": client_url(raw.host, port, scheme_of(raw))}

    reach = {name: graph_mod.Reach(deps, name) for name in deps}
    raw_services = model.services
    replica_index = {member: str(i) for members in groups.values() for i, member in enumerate(members)}

    def shared_where(problem: str, fix: str | None = None, key: str | None = None) -> ConfigError:
        return ConfigError(problem, source=src, key=key or "env", fix=fix)

    # [env] means one thing everywhere: expanded once, with what a test sees (no ${port}: whose?).
    shared_scope = _Scope({}, environ, shared_where, None, addresses, groups)
    shared_env = {k: shared_scope.expand(_env_text(v)) for k, v in model.env.items()}

    def build(name: str, port: int | None) -> ServiceConfig:
        """One service, every placeholder expanded, with ``port`` as its own port."""
        own_address = dict(addresses[name])
        if port is not None and raw_services[name].url is None:
            own_address.update(port=str(port), url=client_url(own_address["host"], port, scheme_of(raw_services[name])))
        raw = raw_services[name]
        current_key = ["?"]

        def where(problem: str, fix: str | None = None, key: str | None = None,
                  name: str = name, current_key: list[str] = current_key) -> ConfigError:
            return ConfigError(problem, source=src, service=name, key=key or current_key[0], fix=fix)

        tmp = ((raw.tmpfs is True and memory_root(tmp_root)) or tmp_root) / name
        own = {"name": name, "host": own_address["host"], "tmp": str(tmp), "python": sys.executable,
               "replica": replica_index.get(name, "0")}
        for attr in ("port", "url"):
            if attr in own_address:
                own[attr] = own_address[attr]
        if raw.scope == "worker":
            own.update(worker_values)
        scope = _Scope(own, environ, where, reach[name], addresses, groups)
        reset_scope = _Scope({**own, **worker_values}, environ, where, reach[name], addresses, groups)

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
            **shared_env,
            **{k: ex(f"env_file: {k}", v) for k, v in env_files[name].items()},
            **{k: ex(f"env.{k}", _env_text(v)) for k, v in raw.env.items()},
        }
        cwd_text = ex("cwd", raw.cwd) if raw.cwd else None
        cwd = (root / cwd_text).resolve() if cwd_text and raw.image is None else root  # an image's is its own
        # An http probe's path is a GET on the port, whatever the scheme of the service's url.
        http_url = url if raw.url is not None else client_url(own_address["host"], port) if port is not None else None
        health = _resolve_health(raw, name, port, own_address["host"], http_url, ex, where, root)
        current_key[0] = "stop_signal"
        stop_signal = _signal_number(raw.stop_signal, where)
        stop_command = (tuple(ex("stop_command", a) for a in _argv(raw.stop_command, where, "stop_command"))
                        if raw.stop_command is not None else ())
        if raw.stop_command is not None and not stop_command:
            raise where("the stop command is empty", fix="give the program to run, or remove stop_command",
                        key="stop_command")
        watch = tuple((root / w).resolve() for w in raw.watch)
        reset = _resolve_reset(raw, lambda key, text: ex(key, text, reset_scope), where)
        return ServiceConfig(
            name=name,
            kind="app" if raw.app else "url" if raw.url is not None else "image" if raw.image is not None else "command",
            host=own_address["host"],
            port=port,
            url=url,
            app=raw.app,
            interface=raw.interface,
            command=command,
            env=env_values,
            cwd=cwd,
            setup=setup,
            user=raw.user,
            task=raw.task,
            health=health,
            startup_timeout=timeout_override or raw.startup_timeout or model.launcher.startup_timeout,
            stop_signal=stop_signal,
            stop_command=stop_command,
            stop_timeout=raw.stop_timeout,
            retries=raw.retries,
            watch=watch,
            depends_on=deps[name],
            dependencies=dependencies[name],
            skipped=skipped[name],
            tmp=tmp,
            tmpfs=raw.tmpfs is True,
            port_auto=auto.get(name, False),
            scope=raw.scope,
            reset=reset,
            worker=worker if raw.scope == "worker" and worker != "main" else None,
            container=resolve_container(raw, ex, where, root, tmp) if raw.image is not None else None,
        )

    referenced = _referenced_services(model, [v for values in env_files.values() for v in values.values()])
    services: dict[str, ServiceConfig] = {}
    for name in sorted(model.services):
        services[name] = build(name, ports[name])
        if auto.get(name) and name not in referenced:
            # Nothing else names its address: a clash at start may move it to another port.
            services[name] = replace(services[name], rebind=functools.partial(build, name))

    def test_env_where(problem: str, fix: str | None = None, key: str | None = None) -> ConfigError:
        return ConfigError(problem, source=src, key=key or "launcher.test_env", fix=fix)

    test_scope = _Scope(worker_values, environ, test_env_where, None, addresses, groups)
    test_env = {**shared_env, **{k: test_scope.expand(_env_text(v)) for k, v in model.launcher.test_env.items()}}
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
        groups=dict(groups),
        worker=worker,
        container_engine=model.launcher.container_engine,
    )


def _check_worker_scope(model: FileModel, deps: Mapping[str, tuple[str, ...]], src: str) -> None:
    """A worker task may need shared services, never the reverse: a service every worker shares
    cannot wait for one worker's task."""
    for name, needs in deps.items():
        if model.services[name].scope == "worker":
            continue
        for dep in needs:
            if model.services[dep].scope == "worker":
                raise ConfigError(
                    f"depends on '{dep}', a scope = \"worker\" task: a service every xdist worker shares "
                    "cannot wait for one worker's task",
                    source=src, service=name, key="depends_on",
                    fix=f"make '{name}' a worker task too, or drop scope = \"worker\" from '{dep}'",
                )
