"""The only part of the config that touches the disk: reading the file, reserving ports."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .models import LauncherConfig
from .parsing import parse

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
    from .. import _ports

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
