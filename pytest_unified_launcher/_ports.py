"""Machine-wide port reservation for ``port = "auto"``.

Ports are chosen when the config is loaded and used later, so the kernel must not hand them
out in between: we pick them below the ephemeral range (``ip_local_port_range``), and claim
each one with an exclusive file under the temp dir so two launchers (or two xdist workers)
never pick the same one. A claim whose owner process is gone is stale and is taken over.
"""

from __future__ import annotations

import atexit
import errno
import os
import random
import socket
import tempfile
from collections.abc import Iterable
from pathlib import Path

from ._process import process_token

_CLAIMS = Path(tempfile.gettempdir()) / "unified-launcher-ports"
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


def _owner_token() -> str:
    return f"{os.getpid()} {process_token(os.getpid())}"


def _claim_is_stale(path: Path) -> bool:
    try:
        pid_text, started = path.read_text().split()
        pid = int(pid_text)
    except (OSError, ValueError):
        return True
    return process_token(pid) != started


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


def _claim(port: int) -> bool:
    _CLAIMS.mkdir(mode=0o1777, exist_ok=True)
    path = _CLAIMS / str(port)
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            if not _claim_is_stale(path):
                return False
            try:
                path.unlink()
            except FileNotFoundError:
                pass
            continue
        with os.fdopen(fd, "w") as fh:
            fh.write(_owner_token())
        _mine.add(port)
        return True
    return False


def reserve(host: str = "127.0.0.1") -> int:
    """A free port, claimed for this process until :func:`release` or exit."""
    ports = list(candidate_range())
    random.shuffle(ports)
    for port in ports[:2000]:
        if _claim(port):
            if is_free(host, port):
                return port
            release([port])
    raise OSError(errno.EADDRINUSE, "no free port found to reserve")


def release(ports: Iterable[int]) -> None:
    """Give up this process's claims on ``ports``."""
    for port in list(ports):
        if port in _mine:
            _mine.discard(port)
            try:
                (_CLAIMS / str(port)).unlink()
            except FileNotFoundError:
                pass


@atexit.register
def _release_all() -> None:
    release(list(_mine))
