"""Machine-wide port reservation for ``port = "auto"``.

Ports are chosen when the config is loaded and used later, so the kernel must not hand them
out in between: we pick them outside the ephemeral range (``ip_local_port_range``) and claim
them machine-wide, so two launchers (or two xdist workers) never pick the same one.

A claim is a Unix socket bound to the abstract name ``unified-launcher-port-<port>``: binding
is atomic (two launchers cannot both hold a name, no lock needed), and the kernel drops the
name the moment its holder closes it or dies, ``kill -9`` included. So a claim never outlives
its launcher and nothing is written anywhere: no shared folder another user could plant links
or garbage in (SPEC 7). Abstract names live per network namespace, exactly as the ports do.
Another user can squat names, which only makes us skip those ports, as binding them would.
"""

from __future__ import annotations

import atexit
import errno
import functools
import os
import random
import resource
import socket
from collections.abc import Iterable
from pathlib import Path

#: The abstract socket name that claims ``port`` (a leading NUL: no file in any folder).
CLAIM_PREFIX = "unified-launcher-port-"
#: Ports this process holds a claim on, and the socket that holds it.
_mine: dict[int, socket.socket] = {}


@functools.cache  # read once per process: a config reserves its ports one by one
def ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def candidate_range() -> range:
    """Ports the kernel never picks on its own: :func:`candidates_outside` this machine's
    ephemeral range."""
    return candidates_outside(*ephemeral_range())


def candidates_outside(low: int, high: int) -> range:
    """Below the ephemeral range ``low``-``high`` (at most 12768 ports, when 2000 fit), else above
    it; the whole unprivileged range when it covers that (claims and a bind check then do all the
    work)."""
    if low - 1024 >= 2000:
        return range(max(1024, low - 12768), low)
    if high < 65535:
        return range(high + 1, 65536)
    return range(1024, 65536)


def is_free(host: str, port: int) -> bool:
    """Whether a server could bind ``host:port`` now (SO_REUSEADDR, as servers bind)."""
    with _socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _raise_fd_limit() -> bool:
    """Lift the soft open-files limit a step towards the hard one (one fd per claim); whether it
    rose. A step, not all the way: children inherit it, and some size tables by it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = max(2 * soft, soft + 1024)
    if hard != resource.RLIM_INFINITY:
        wanted = min(wanted, hard)
    if wanted <= soft:
        return False
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    except (ValueError, OSError):
        return False
    return True


def _socket(family: int = socket.AF_UNIX, kind: int = socket.SOCK_STREAM) -> socket.socket:
    """A close-on-exec socket; each claim holds one, so a used-up soft open-files limit is
    lifted to the hard one rather than failing."""
    try:
        return socket.socket(family, kind | socket.SOCK_CLOEXEC)
    except OSError as exc:
        if exc.errno != errno.EMFILE or not _raise_fd_limit():
            raise
    return socket.socket(family, kind | socket.SOCK_CLOEXEC)


def _claim(port: int) -> bool:
    """Take the claim on ``port``; False when another process (any user's) holds it."""
    sock = _socket()
    try:
        sock.bind(f"\0{CLAIM_PREFIX}{port}")
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            return False
        raise  # not "taken" (a security module's EPERM, ENOMEM): say so rather than try 4000 ports
    _mine[port] = sock
    return True


def _unclaim(port: int) -> None:
    sock = _mine.pop(port, None)
    if sock is not None:
        sock.close()


def claimed(port: int) -> bool:
    """Whether some process on this machine (this one included) holds the claim on ``port``."""
    if port in _mine:
        return True
    with _socket() as probe:
        try:
            probe.bind(f"\0{CLAIM_PREFIX}{port}")
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return True
            raise
    return False


def reserve(host: str = "127.0.0.1") -> int:
    """One free port, claimed for this process until :func:`release` or its exit."""
    candidates = candidate_range()
    for _ in range(4000):
        port = random.choice(candidates)
        if port in _mine or not _claim(port):
            continue
        if is_free(host, port):
            return port
        _unclaim(port)  # bound by something that never claims (not a launcher)
    raise OSError(errno.EADDRINUSE, f"every port tried in {candidates.start}-{candidates.stop - 1} is in use "
                                    "or claimed by another launcher")


def release(ports: Iterable[int]) -> None:
    """Give up this process's claims on ``ports``."""
    for port in list(ports):
        _unclaim(port)


@atexit.register
def _release_all() -> None:
    """Close the claims at a normal exit (a killed process loses them all the same)."""
    release(list(_mine))


def _forget_in_child() -> None:
    """A forked child (multiprocessing, a forking test server) closes its copies, so the claims
    end with the launcher, not with the last child that happened to inherit them."""
    for sock in _mine.values():
        sock.close()
    _mine.clear()


os.register_at_fork(after_in_child=_forget_in_child)
