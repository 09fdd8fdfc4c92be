"""Finding the config file: cheap (a few ``stat`` calls), so the plugin costs nothing without one."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

CONFIG_FILENAME = "launcher.toml"


def find_config(
    *,
    explicit: str | os.PathLike[str] | None = None,
    ini: str | None = None,
    environ: Mapping[str, str] | None = None,
    rootdir: Path | None = None,
    invocation_dir: Path | None = None,
) -> tuple[Path | None, list[str]]:
    """The config file to use and, for the error when there is none, where we looked."""
    environ = os.environ if environ is None else environ
    looked: list[str] = []
    for given, origin in ((explicit, "--launcher-config"), (ini, "ini launcher_config"),
                          (environ.get("LAUNCHER_CONFIG"), "LAUNCHER_CONFIG")):
        if given:
            path = Path(given)
            if not path.is_absolute() and origin == "ini launcher_config" and rootdir:
                path = rootdir / path
            return path.resolve(), [f"{origin}={given}"]
    folder_given = environ.get("LAUNCHER_CONFIG_DIR")
    if folder_given:  # asked for by name: its launcher.toml, or the error that it has none
        path = (Path(folder_given) / CONFIG_FILENAME).resolve()
        if not path.exists():
            from .errors import ConfigError

            raise ConfigError(f"LAUNCHER_CONFIG_DIR={folder_given} has no {CONFIG_FILENAME}", source=str(path),
                              fix=f"create one there (`unified-launcher init` in {folder_given}), "
                                  "or unset LAUNCHER_CONFIG_DIR to use the project's")
        return path, [f"LAUNCHER_CONFIG_DIR={folder_given}"]
    for folder in dict.fromkeys(d for d in (rootdir, invocation_dir) if d is not None):
        candidate = folder / CONFIG_FILENAME
        looked.append(str(candidate))
        if candidate.is_file():
            return candidate.resolve(), looked
    if rootdir is not None:
        pyproject = rootdir / "pyproject.toml"
        looked.append(f"{pyproject} [tool.unified-launcher]")
        try:
            mentioned = pyproject.is_file() and b"unified-launcher" in pyproject.read_bytes()
        except OSError:  # unreadable: load_config says so, with the fix
            return pyproject.resolve(), looked
        if mentioned:
            import tomllib

            try:
                if "unified-launcher" in tomllib.loads(pyproject.read_bytes().decode("utf-8")).get("tool", {}):
                    return pyproject.resolve(), looked
            except (tomllib.TOMLDecodeError, UnicodeDecodeError, OSError):
                return pyproject.resolve(), looked  # load_config names the mistake and its line
    return None, looked
