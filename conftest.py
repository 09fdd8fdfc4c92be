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
