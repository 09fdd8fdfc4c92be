"""Machine-wide port reservation for ``port = "auto"``.

Ports are chosen when the config is loaded and used later, so the kernel must not hand them
out in between: we pick them outside the ephemeral range (``ip_local_port_range``) and claim
them machine-wide, so two launchers (or two xdist workers) never pick the same one. Each
process keeps its claims in one file in /tmp/unified-launcher-ports, written under a global
``flock``; a file whose owner process is gone is stale and ignored (then removed).
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import fcntl
import json
import os
import random
import socket
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from ._process import process_token


def _claims_dir() -> Path:
    """The one folder every launcher on the machine uses. Ports are a machine-wide resource, so
    it must not follow ``TMPDIR``: tox and CI runners set one per environment."""
    base = Path("/tmp")
    if not (base.is_dir() and os.access(base, os.W_OK | os.X_OK)):
        base = Path(tempfile.gettempdir())
    return base / "unified-launcher-ports"


_CLAIMS = _claims_dir()
_mine: set[int] = set()


def ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def candidate_range() -> range:
    """Ports the kernel never picks on its own: below the ephemeral range, or above it."""
    low, high = ephemeral_range()
    if low - 1024 >= 2000:
        return range(max(1024, low - 12768), low)
    return range(high + 1, 65536)


def is_free(host: str, port: int) -> bool:
    """Whether a server could bind ``host:port`` now (SO_REUSEADDR, as servers bind)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _own_file() -> Path:
    return _CLAIMS / f"{os.getpid()}-{process_token(os.getpid())}.json"


@contextlib.contextmanager
def _locked() -> Iterator[set[int]]:
    """Hold the global lock; yield every port claimed by a living process (ours included)."""
    try:
        _CLAIMS.mkdir()
        os.chmod(_CLAIMS, 0o1777)  # every user's launchers share it; sticky, like /tmp itself
    except FileExistsError:
        pass
    lock_fd = os.open(_CLAIMS / ".lock", os.O_RDONLY | os.O_CREAT, 0o444)  # flock needs no write access
    with open(lock_fd) as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            claimed: set[int] = set()
            for path in _CLAIMS.glob("*.json"):
                pid_text, _, token = path.stem.partition("-")
                try:
                    alive = pid_text.isdigit() and process_token(int(pid_text)) == token
                    if not alive:
                        path.unlink(missing_ok=True)
                        continue
                    claimed.update(json.loads(path.read_text()))
                except (OSError, ValueError):
                    continue
            yield claimed
            _write_own()
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _write_own() -> None:
    path = _own_file()
    if _mine:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(sorted(_mine)))
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    else:
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def reserver() -> Iterator[Callable[[str], int]]:
    """``with reserver() as reserve: reserve(host)`` claims ports under one lock (fast in bulk)."""
    with _locked() as claimed:
        candidates = candidate_range()

        def reserve(host: str = "127.0.0.1") -> int:
            for _ in range(4000):
                port = random.choice(candidates)
                if port in claimed or port in _mine:
                    continue
                if is_free(host, port):
                    _mine.add(port)
                    return port
                claimed.add(port)
            raise OSError(errno.EADDRINUSE, "no free port found to reserve")

        yield reserve


def reserve(host: str = "127.0.0.1") -> int:
    """One free port, claimed for this process until :func:`release` or exit."""
    with reserver() as claim:
        return claim(host)


def unclaim(ports: Iterable[int]) -> None:
    """Drop claims while inside :func:`reserver` (its exit writes the claims file)."""
    _mine.difference_update(ports)


def release(ports: Iterable[int]) -> None:
    """Give up this process's claims on ``ports``."""
    ports = [p for p in ports if p in _mine]
    if not ports:
        return
    with _locked():
        _mine.difference_update(ports)


@atexit.register
def _release_all() -> None:
    if _mine:
        try:
            release(list(_mine))
        except OSError:
            pass
