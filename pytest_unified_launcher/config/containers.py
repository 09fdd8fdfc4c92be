"""An ``image`` service's container keys, resolved (SPEC 8): compose's short mount syntax with
host paths made absolute, ``tmpfs`` container paths, ``ulimits`` as soft/hard pairs."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from typing import Any

from .models import IMAGE_KEYS, ContainerSpec, ServiceModel, Where

#: An image reference (``[registry/]name[:tag][@digest]``, or a transport such as
#: ``oci-archive:/path``): starts with a letter or digit, no spaces, nothing an engine would
#: read as an option.
_IMAGE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/:@+-]*")

#: The ulimits an engine accepts (``--ulimit NAME=SOFT:HARD``): compose's names.
ULIMIT_NAMES = ("core", "cpu", "data", "fsize", "locks", "memlock", "msgqueue", "nice", "nofile",
                "nproc", "rss", "rtprio", "rttime", "sigpending", "stack", "as")


def check_image_keys(raw: ServiceModel, name: str, source: str) -> None:
    """The keys only an image has, on a service that is no image; ``port`` without
    ``container_port`` on one that is: a ConfigError naming the key and the fix."""
    from ..errors import ConfigError

    def error(problem: str, key: str, fix: str) -> ConfigError:
        return ConfigError(problem, source=source, service=name, key=key, fix=fix)

    if raw.image is None:
        for key in [*IMAGE_KEYS, "tmpfs"]:
            if key in raw.model_fields_set and (key != "tmpfs" or isinstance(raw.tmpfs, list)):
                what = "a list of container paths" if key == "tmpfs" else key
                raise error(f"{what} is for image services (a container), and this one has "
                            f"{'an app' if raw.app else 'a url' if raw.url is not None else 'a command'}",
                            key, f"remove {key}, or run the service from an image (image = \"...\")"
                            + ("; for a process, tmpfs = true puts ${tmp} in memory" if key == "tmpfs" else ""))
        if raw.health is not None and raw.health.exec is not None:
            raise error("health.exec runs a command inside a container, and this service is a process",
                        "health.exec", "use health.command, which runs on the host")
    elif raw.port is not None and raw.container_port is None:
        raise error("port publishes a container's port, but container_port (the port inside the container) "
                    "is not set", "container_port", "set container_port, e.g. container_port = 6379")


def resolve_container(raw: ServiceModel, ex: Callable[[str, str], str], where: Where, root: Path,
                      tmp: Path) -> ContainerSpec:
    """The container of an image service (``raw.image`` is set); ``tmp``: its ``${tmp}``, where
    mount sources are made at start rather than required now."""
    assert raw.image is not None
    image = ex("image", raw.image).strip()
    if not _IMAGE_RE.fullmatch(image):  # never an option: "--name=x" would reach the engine as one
        raise where(f"image {image!r} is not an image reference", fix='write it as "redis:7" or '
                    '"registry.example.com/team/api:1.2"', key="image")
    mounts = tuple(_mount(ex(f"mounts[{i}]", m), i, where, root, tmp) for i, m in enumerate(raw.mounts))
    tmpfs = tuple(ex(f"tmpfs[{i}]", p) for i, p in enumerate(raw.tmpfs)) if isinstance(raw.tmpfs, list) else ()
    for i, path in enumerate(tmpfs):
        if not path.startswith("/"):
            raise where(f"tmpfs path {path!r} is not absolute", fix="give a path inside the container, "
                        'such as "/var/lib/postgresql/data"', key=f"tmpfs[{i}]")
    ulimits = []
    for name, value in raw.ulimits.items():
        if name not in ULIMIT_NAMES:
            import difflib

            close = difflib.get_close_matches(name, ULIMIT_NAMES, n=1)
            raise where(f"unknown ulimit {name!r}", key=f"ulimits.{name}",
                        fix=(f"did you mean {close[0]!r}? " if close else "") + "known: " + ", ".join(ULIMIT_NAMES))
        soft, hard = _limits(value, name, where)
        if hard != -1 and (soft == -1 or soft > hard):
            raise where(f"ulimit {name}: soft {soft} is above hard {hard}", key=f"ulimits.{name}",
                        fix="make soft at most hard")
        ulimits.append((name, soft, hard))
    workdir = ex("cwd", raw.cwd) if raw.cwd else None
    if workdir is not None and not workdir.startswith("/"):
        raise where(f"cwd {workdir!r} is a path inside the container and must be absolute", key="cwd",
                    fix='write it as "/app" (the container\'s working directory)')
    return ContainerSpec(image=image, port=raw.container_port, pull=raw.pull, mounts=mounts, tmpfs=tmpfs,
                         ulimits=tuple(ulimits), workdir=workdir)


def _limits(value: Any, name: str, where: Where) -> tuple[int, int]:
    """A ulimit's (soft, hard): a number sets both; -1 is unlimited."""
    def number(v: Any) -> bool:
        return type(v) is int and v >= -1

    if number(value):
        return value, value
    if isinstance(value, dict) and set(value) == {"soft", "hard"} and all(map(number, value.values())):
        return value["soft"], value["hard"]
    raise where(f"ulimit {name} = {value!r} is not a limit", key=f"ulimits.{name}",
                fix=f"write {name} = 4096 (soft and hard) or {name} = {{ soft = 1024, hard = 4096 }}; -1 is unlimited")


def _mount(text: str, index: int, where: Where, root: Path, tmp: Path) -> str:
    """``SOURCE:TARGET[:OPTIONS]``: a source starting with ``.``, ``/`` or ``~`` is a host path
    (relative to the config file; under ``${tmp}`` it is made at start), any other a named
    volume; the target must be absolute."""
    key = f"mounts[{index}]"
    parts = text.split(":")
    fix = 'write it as "./host/path:/path/in/container" or "./sql:/docker-entrypoint-initdb.d:ro"'
    if len(parts) not in (2, 3) or not all(parts[:2]):
        raise where(f"mount {text!r} is not SOURCE:TARGET[:OPTIONS]", fix=fix, key=key)
    source, target = parts[0], parts[1]
    if not target.startswith("/"):
        raise where(f"mount {text!r}: the container path {target!r} is not absolute", fix=fix, key=key)
    if len(parts) == 3 and not set(parts[2].split(",")) <= {"ro", "rw", "z", "Z", "cached", "delegated", "consistent"}:
        raise where(f"mount {text!r}: unknown options {parts[2]!r}", fix="use ro or rw (and z/Z for SELinux)", key=key)
    if source.startswith((".", "/", "~")):
        host = (root / Path(source).expanduser()).resolve()
        if not host.exists() and not host.is_relative_to(tmp):
            raise where(f"mount {text!r}: {host} does not exist", key=key,
                        fix="create it, or fix the path (relative to the config file)")
        source = str(host)
    return ":".join([source, target, *parts[2:]])
