"""PostgreSQL's cached-template start (the example's bin/pg-init, and what `init` writes): fast
from the second start on, and never fed a template another user planted."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from conftest import PY

from pytest_unified_launcher._templates import pg_init_script

EXAMPLE_BIN = Path(__file__).parent.parent / "example_project" / "bin"
POSTGRES_UID = 101
NOBODY = 65534

DATABASE = """
[launcher]
state_dir = "state"
[services.database]
setup = [["bin/pg-init", "${tmp}/data"]]
command = ["bin/pg", "postgres", "-D", "${tmp}/data", "-p", "${port}", "-k", "${tmp}", "-h", "127.0.0.1"]
user = "postgres"
health = { notify = true }
stop_signal = "SIGINT"
tmpfs = true
env = { TMPDIR = "@SHARED@", XDG_CACHE_HOME = "@CACHE@" }
"""


def cli(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PY, "-m", "pytest_unified_launcher", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=180, stdin=subprocess.DEVNULL)


def _folder(mode: int, uid: int = 0) -> Path:
    """A folder under /tmp that the service user can reach (pytest's own tmp is root's, 0700)."""
    path = Path(tempfile.mkdtemp(prefix="ul-test-", dir="/tmp"))
    os.chown(path, uid, uid if uid else 0)
    path.chmod(mode)
    return path


@pytest.fixture
def place() -> Iterator[dict[str, Path]]:
    """A project reachable by `postgres`, a shared sticky /tmp-like folder, a private cache."""
    if os.geteuid() != 0:
        pytest.skip("acts as a second user: needs root")
    folders = {"project": _folder(0o755), "shared": _folder(0o1777), "cache": _folder(0o700, POSTGRES_UID),
               "victim": _folder(0o755, NOBODY)}
    try:
        yield folders
    finally:
        for path in folders.values():
            shutil.rmtree(path, ignore_errors=True)


def _start_and_stop(project: Path, victim: Path | None = None) -> str:
    """`up --detach` then `down`; returns what database's log said."""
    up = cli(project, "up", "--detach")
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        record = json.loads((project / "state" / "up.json").read_text())
        data = Path(psutil.Process(record["services"]["database"]["pid"]).cwd())  # postgres runs in its data dir
        assert data.name == "data" and (victim is None or victim not in (data, *data.parents)), data
        return Path(record["services"]["database"]["log_path"]).read_text()
    finally:
        down = cli(project, "down")
        assert up.returncode != 0 or down.returncode == 0, down.stderr


def _plant(place: dict[str, Path]) -> Path:
    """Another user's cluster, linked from where the old pg-init looked for its template."""
    victim = place["victim"]
    (victim / "PG_VERSION").write_text("15\n")
    (victim / "secret-table").write_text("someone else's data\n")
    for path in victim.iterdir():
        os.chown(path, NOBODY, NOBODY)
    link = place["shared"] / f"unified-launcher-pg-template-{POSTGRES_UID}"
    link.symlink_to(victim)
    os.chown(link, NOBODY, NOBODY, follow_symlinks=False)
    return link


def _assert_unharmed(link: Path, place: dict[str, Path]) -> None:
    victim = place["victim"]
    assert link.is_symlink() and os.readlink(link) == str(victim)
    assert sorted(p.name for p in victim.iterdir()) == ["PG_VERSION", "secret-table"]
    assert (victim / "secret-table").read_text() == "someone else's data\n"
    assert all(p.stat().st_uid == NOBODY for p in victim.iterdir())
    assert stat.S_IMODE(victim.stat().st_mode) == 0o755 and victim.stat().st_uid == NOBODY


def test_example_pg_init_ignores_a_planted_template_and_caches_privately(place: dict[str, Path],
                                                                         no_orphans: None) -> None:
    """The example's bin/pg-init builds its template in a private cache once and copies it on the
    next start; a template another user planted in the shared temp folder (a link to their
    cluster) is neither used nor touched (the old script copied the link as the data dir)."""
    project = place["project"]
    shutil.copytree(EXAMPLE_BIN, project / "bin")
    (project / "launcher.toml").write_text(
        DATABASE.replace("@SHARED@", str(place["shared"])).replace("@CACHE@", str(place["cache"])))
    link = _plant(place)
    first = _start_and_stop(project, place["victim"])
    assert "pg-init: built the template cache " + str(place["cache"] / "unified-launcher") in first, first
    second = _start_and_stop(project, place["victim"])
    assert "pg-init: copied the cached template" in second and "built the template" not in second, second
    _assert_unharmed(link, place)
    cache = place["cache"] / "unified-launcher"
    assert cache.stat().st_uid == POSTGRES_UID and stat.S_IMODE(cache.stat().st_mode) == 0o700


def test_pg_init_refuses_a_cache_folder_others_can_write(place: dict[str, Path], no_orphans: None) -> None:
    """A cache folder writable by others is not trusted: pg-init goes on to the next private place
    (the user's home) and leaves that folder as it was."""
    project = place["project"]
    shutil.copytree(EXAMPLE_BIN, project / "bin")
    place["cache"].chmod(0o777)
    (project / "launcher.toml").write_text(
        DATABASE.replace("@SHARED@", str(place["shared"])).replace("@CACHE@", str(place["cache"])))
    log = _start_and_stop(project)
    assert "pg-init: copied the cached template" in log and str(place["cache"]) not in log, log
    assert list(place["cache"].iterdir()) == []


def test_init_writes_the_same_pg_init_as_the_example(place: dict[str, Path], no_orphans: None) -> None:
    """`init --with postgres` writes an executable bin/pg-init (the example's script) and its
    second start copies the cached template instead of running initdb."""
    project = place["project"]
    assert cli(project, "init", "--with", "postgres").returncode == 0
    script = project / "bin" / "pg-init"
    assert os.access(script, os.X_OK)
    assert script.read_text().replace(script.read_text().split("make_cluster() { ")[1].split("initdb")[0], "") == \
        pg_init_script("")
    config = (project / "launcher.toml").read_text()
    assert 'setup = [["bin/pg-init", "${tmp}/data"]]' in config
    (project / "launcher.toml").write_text(
        config.replace("[launcher]\n", '[launcher]\nstate_dir = "state"\n')
        + f'env = {{ XDG_CACHE_HOME = "{place["cache"]}" }}\n')
    _start_and_stop(project)
    assert "pg-init: copied the cached template" in _start_and_stop(project)


def test_example_pg_init_is_the_generated_script() -> None:
    """The example's bin/pg-init is the script `init` writes (fixed alike, kept alike)."""
    assert (EXAMPLE_BIN / "pg-init").read_text() == pg_init_script('"$here/pg" ')
