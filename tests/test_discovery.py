"""Finding the config file: never a traceback, whatever the project's pyproject.toml holds."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from conftest import PY
from pytest_unified_launcher._discovery import find_config


@pytest.mark.parametrize("content", [
    b"[tool.unified-launcher]\n# caf\xe9\n",         # not UTF-8
    b"[tool.unified-launcher\n",                      # not TOML
])
def test_a_broken_pyproject_naming_the_launcher_is_found_and_reported(tmp_path: Path, content: bytes) -> None:
    """A pyproject.toml that names the launcher but cannot be read as TOML is found, so that
    loading it reports the mistake in one line (a non-UTF-8 one was a UnicodeDecodeError trace)."""
    (tmp_path / "pyproject.toml").write_bytes(content)
    path, _ = find_config(explicit=None, ini=None, rootdir=tmp_path, invocation_dir=tmp_path)
    assert path == (tmp_path / "pyproject.toml").resolve()
    result = subprocess.run([PY, "-m", "pytest_unified_launcher", "check"], cwd=tmp_path, capture_output=True,
                            text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr and "pyproject.toml" in result.stderr


def test_a_pyproject_without_the_launcher_is_not_a_config(tmp_path: Path) -> None:
    """A pyproject.toml that does not mention the launcher (even one that is not UTF-8) is not ours."""
    (tmp_path / "pyproject.toml").write_bytes(b"[tool.other]\n# caf\xe9\n")
    assert find_config(explicit=None, ini=None, rootdir=tmp_path, invocation_dir=tmp_path)[0] is None


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({"LAUNCHER_CONFIG_DIR": "{dir}"}, "{dir}/launcher.toml"),
        ({"LAUNCHER_CONFIG": "{dir}/other.toml", "LAUNCHER_CONFIG_DIR": "{dir}"}, "{dir}/other.toml"),
        ({}, "{project}/launcher.toml"),
    ],
    ids=["dir", "config-wins", "unset"],
)
def test_launcher_config_dir_is_searched_after_launcher_config(tmp_path: Path, environ: dict[str, str],
                                                               expected: str) -> None:
    """LAUNCHER_CONFIG_DIR (the seed's name) names a folder whose launcher.toml is used, after
    LAUNCHER_CONFIG and before the project's own."""
    (tmp_path / "dir").mkdir()
    (tmp_path / "project").mkdir()
    for folder in ("dir", "project"):
        (tmp_path / folder / "launcher.toml").write_text("")
    fill = {"dir": str(tmp_path / "dir"), "project": str(tmp_path / "project")}
    path, _ = find_config(environ={k: v.format(**fill) for k, v in environ.items()},
                          rootdir=tmp_path / "project", invocation_dir=tmp_path / "project")
    assert path == Path(expected.format(**fill))


def test_a_launcher_config_dir_without_a_config_is_one_clear_error(tmp_path: Path) -> None:
    """Asked for by name, a folder without launcher.toml is an error naming it, not a silent
    fall back to the project's config."""
    (tmp_path / "launcher.toml").write_text("[services.a]\ncommand = ['x']\n")
    result = subprocess.run([PY, "-m", "pytest_unified_launcher", "check", "--no-import"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
                            env={**os.environ, "LAUNCHER_CONFIG_DIR": str(tmp_path / "elsewhere")})
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert str(tmp_path / "elsewhere" / "launcher.toml") in result.stderr
