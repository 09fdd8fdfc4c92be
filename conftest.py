"""Shared test helpers: real processes, and a check that none of them outlives its test."""

from __future__ import annotations

import os
import shutil
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

OWNER_VAR = "UNIFIED_LAUNCHER_OWNER"
#: The tests' small real services: FastAPI apps, and a plain TCP server used as a command.
APPS = Path(__file__).parent / "tests" / "apps"
PY = sys.executable
TCP = str(APPS / "tcp_server.py")


def default_sigint() -> None:
    """``preexec_fn`` for a child a test will Ctrl-C: a shell starts background jobs with SIGINT
    ignored and children inherit that, so restore the default or the signal never arrives."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


#: Every process this test process starts inherits this mark, so the orphan checks count only
#: what this suite started (its own xdist worker's, when run with -n), never what another
#: session on the machine runs at the same moment.
SUITE_VAR = "UL_TEST_SUITE"
os.environ[SUITE_VAR] = str(os.getpid())


#: What pytest-xdist puts in a worker's environment (xdist/remote.py, before any conftest loads).
#: xdist itself reads a worker's role from ``config.workerinput`` afterwards, never from these.
XDIST_WORKER_VARS = ("PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT", "PYTEST_XDIST_TESTRUNUID")


@pytest.fixture(autouse=True)
def _not_an_xdist_worker_for_children(monkeypatch: pytest.MonkeyPatch) -> None:
    """When this suite runs under xdist (``-n``), a test's children must not inherit the worker's
    marks: the plugin under test reads PYTEST_XDIST_WORKER to know it is a worker, so a pytest or
    `unified-launcher` a test starts (``runpytest_subprocess``, ``subprocess``, in-process
    ``runpytest`` too) would take itself for one. Removed for each test only, so the worker's own
    plugins (pytest-benchmark reads PYTEST_XDIST_WORKER at configure) still see them."""
    for name in XDIST_WORKER_VARS:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(autouse=True)
def _exclusive_turn(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Under xdist, a test marked ``exclusive`` runs while no other test of this run does: it takes
    a machine-wide thing whole (another user squatting every candidate port), which would make
    any launcher of the other worker fail to reserve a port, and a port that worker frees would be
    a hole in the squat. Every other test holds the lock shared. Outside xdist: nothing to do."""
    if not hasattr(request.config, "workerinput"):
        yield
        return
    import fcntl

    run_root = tmp_path_factory.getbasetemp().parent  # popen-gwN's parent: this run's, every worker's
    exclusive = request.node.get_closest_marker("exclusive") is not None
    with open(run_root / "exclusive.gate", "a") as gate, open(run_root / "exclusive.lock", "a") as lock:
        # The gate keeps an exclusive test from waiting forever behind a stream of shared turns.
        fcntl.flock(gate, fcntl.LOCK_EX)
        fcntl.flock(lock, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        fcntl.flock(gate, fcntl.LOCK_UN)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def launcher_processes() -> list[psutil.Process]:
    """Every live process a launcher of this suite started (they carry the owner marker)."""
    found = []
    for proc in psutil.process_iter(["pid"]):
        if proc.pid == os.getpid():
            continue
        try:
            environ = proc.environ()
        except (psutil.Error, OSError):
            continue
        if OWNER_VAR in environ and environ.get(SUITE_VAR) == os.environ[SUITE_VAR]:
            found.append(proc)
    return found


@pytest.fixture
def no_orphans() -> Iterator[None]:
    """Fail the test if a launcher-started process is still alive after it."""
    before = {p.pid for p in launcher_processes()}
    yield
    leftover = [p for p in launcher_processes() if p.pid not in before]
    gone, alive = psutil.wait_procs(leftover, timeout=3)
    assert not alive, f"processes left running: {[(p.pid, p.name()) for p in alive]}"


@pytest.fixture(scope="session")
def redis_server() -> str:
    path = shutil.which("redis-server")
    if path is None:
        pytest.fail("redis-server is not installed: run ./scripts/setup.sh (the README's test command does)")
    return path
