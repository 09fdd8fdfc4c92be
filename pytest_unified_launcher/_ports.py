"""Machine-wide port reservation for ``port = "auto"``.

Ports are chosen when the config is loaded and used later, so the kernel must not hand them
out in between: we pick them outside the ephemeral range (``ip_local_port_range``) and claim
them machine-wide, so two launchers (or two xdist workers) never pick the same one. Each
process keeps its claims in one file in /tmp/unified-launcher-ports, written under a global
``flock``; a file whose owner process is gone is stale and ignored (then removed).

Every user's launchers share that folder, so nothing in it is trusted (SPEC 7): it is used
only when it is a real sticky folder of root's or ours; every file in it is opened by fd
relative to it, never through a link; a claims file counts only when its owner runs the
process it names and it holds a sane list; the lock is waited for a bounded time.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import fcntl
import json
import logging
import os
import random
import socket
import stat
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from ._process import process_token

log = logging.getLogger(__name__)


def _claims_dir() -> Path:
    """The one folder every launcher on the machine uses. Ports are a machine-wide resource, so
    it must not follow ``TMPDIR``: tox and CI runners set one per environment."""
    base = Path("/tmp")
    if not (base.is_dir() and os.access(base, os.W_OK | os.X_OK)):
        base = Path(tempfile.gettempdir())
    return base / "unified-launcher-ports"


_CLAIMS = _claims_dir()
_mine: set[int] = set()
#: How long to wait for the machine-wide lock before going on without it (another user may
#: hold it forever); after one such wait, later ones in this process are short.
LOCK_WAIT_SECONDS = 3.0
_lock_wait = LOCK_WAIT_SECONDS
#: A claims file naming more ports than this is not a launcher's (each claims its services').
MAX_CLAIMS_PER_FILE = 4096
_MAX_FILE_BYTES = 64 * 1024
_warned: set[str] = set()
_NOFOLLOW = os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


def _warn_once(key: str, message: str, *args: object) -> None:
    if key not in _warned:
        _warned.add(key)
        log.warning(message, *args)


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


def _open_dir(path: Path, mode: int, *, shared: bool) -> int | None:
    """An fd on ``path`` (made with ``mode`` if missing) when it can be trusted, else None.

    Trusted: a real folder, not a link; owned by root or us; and, when others can write
    it, sticky (so nobody can replace our files in it). A private one must be ours alone.
    """
    try:
        os.mkdir(path, mode)
        created = True
    except FileExistsError:
        created = False
    except OSError:
        return None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None  # a link (ELOOP), a file (ENOTDIR), or unreadable
    st = os.fstat(fd)
    if created and stat.S_IMODE(st.st_mode) != mode:
        os.fchmod(fd, mode)  # the umask narrowed it; the fd names what we just made
        st = os.fstat(fd)
    me = os.geteuid()
    if shared:
        ok = st.st_uid in (0, me) and (not st.st_mode & 0o022 or bool(st.st_mode & stat.S_ISVTX))
    else:
        ok = st.st_uid == me and not st.st_mode & 0o077
    if not ok:
        os.close(fd)
        return None
    return fd


def _open_claims() -> tuple[int, Path] | None:
    """The claims folder's fd: the machine-wide one, else (untrusted) a private one with a
    warning, else None (claims stay in this process's memory)."""
    fd = _open_dir(_CLAIMS, 0o1777, shared=True)
    if fd is not None:
        return fd, _CLAIMS
    private = _CLAIMS.with_name(f"{_CLAIMS.name}-{os.geteuid()}")
    fd = _open_dir(private, 0o700, shared=False)
    _warn_once(
        "dir", "the port claims folder %s is not a folder of root's or yours (a link, or another "
        "user's?): not using it; ports are claimed in %s instead, so launchers of other users may "
        "pick the same ones (fix: remove %s)", _CLAIMS, private if fd is not None else "memory", _CLAIMS,
    )
    return (fd, private) if fd is not None else None


def _lock_holders(lock_fd: int) -> str:
    """Who holds a flock on the lock file, from /proc/locks: "pid 123 (uid 101)"."""
    st = os.fstat(lock_fd)
    wanted = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    holders = []
    try:
        for line in Path("/proc/locks").read_text().splitlines():
            fields = line.split()
            if "->" in fields or len(fields) < 6 or fields[5] != wanted:
                continue
            pid = fields[4]
            try:
                uid = os.stat(f"/proc/{pid}").st_uid
            except OSError:
                uid = -1
            holders.append(f"pid {pid} (uid {uid})")
    except OSError:
        pass
    return ", ".join(holders) or "an unknown process"


def _take_lock(lock_fd: int, path: Path) -> bool:
    """``flock`` it, waiting at most :data:`_lock_wait`; False (with a warning) if not held."""
    global _lock_wait
    deadline = time.monotonic() + _lock_wait
    delay = 0.001
    while True:
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                break
            time.sleep(delay)
            delay = min(delay * 2, 0.01)  # short: a launcher holds it for a millisecond or two
    log.warning("the port claims lock %s is held by %s for more than %.1f s: reserving ports without it "
                "(a launcher starting at the same moment may pick the same port; it then moves to another)",
                path, _lock_holders(lock_fd), _lock_wait)
    _lock_wait = 0.2
    return False


def _read_claims(dir_fd: int, folder: Path, name: str) -> list[int] | None:
    """The ports a living process's claims file names; None when stale (its process is gone)."""
    pid_text, _, token = name[: -len(".json")].partition("-")
    if not pid_text.isdigit() or process_token(int(pid_text)) != token:
        return None
    fd = os.open(name, os.O_RDONLY | _NOFOLLOW, dir_fd=dir_fd)
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fd)
        try:
            runs_as = os.stat(f"/proc/{pid_text}").st_uid
        except OSError:
            return None
        if not stat.S_ISREG(st.st_mode) or st.st_uid != runs_as:
            raise ValueError(f"not a file of the user running pid {pid_text}")
        text = fh.read(_MAX_FILE_BYTES + 1)
    if len(text) > _MAX_FILE_BYTES:
        raise ValueError(f"larger than {_MAX_FILE_BYTES} bytes")
    data = json.loads(text or b"null")
    if (not isinstance(data, list) or len(data) > MAX_CLAIMS_PER_FILE
            or not all(type(p) is int and 0 < p < 65536 for p in data)):
        raise ValueError(f"not a list of at most {MAX_CLAIMS_PER_FILE} ports")
    return data


def _claimed(dir_fd: int, folder: Path) -> set[int]:
    """Every port claimed by a living process (ours included); stale files are removed."""
    claimed: set[int] = set()
    for name in os.listdir(dir_fd):
        if not name.endswith(".json"):
            continue
        try:
            ports = _read_claims(dir_fd, folder, name)
        except (OSError, ValueError, RecursionError) as exc:
            _warn_once(name, "skipping the port claims file %s: %s", folder / name,
                       exc.strerror if isinstance(exc, OSError) else exc)
            continue
        if ports is None:
            with contextlib.suppress(OSError):
                os.unlink(name, dir_fd=dir_fd)  # a link is removed, never followed
            continue
        claimed.update(ports)
    return claimed


@contextlib.contextmanager
def _locked() -> Iterator[set[int]]:
    """Hold the global lock; yield every port claimed by a living process (ours included)."""
    opened = _open_claims()
    if opened is None:
        yield set()
        return
    dir_fd, folder = opened
    try:
        try:  # flock needs no write access; O_NOFOLLOW: a planted link is never followed nor created
            lock_fd = os.open(".lock", os.O_RDONLY | os.O_CREAT | _NOFOLLOW, 0o444, dir_fd=dir_fd)
        except OSError as exc:
            _warn_once("lock", "cannot open the port claims lock %s (%s): reserving ports without it",
                       folder / ".lock", exc.strerror)
            lock_fd = -1
        try:
            locked = lock_fd >= 0 and stat.S_ISREG(os.fstat(lock_fd).st_mode) and _take_lock(lock_fd, folder / ".lock")
            try:
                yield _claimed(dir_fd, folder)
                _write_own(dir_fd, folder)
            finally:
                if locked:
                    fcntl.flock(lock_fd, fcntl.LOCK_UN)
        finally:
            if lock_fd >= 0:
                os.close(lock_fd)
    finally:
        os.close(dir_fd)


def _write_own(dir_fd: int, folder: Path) -> None:
    """Write (or remove) this process's claims file, by fd, never through a planted link."""
    name = f"{os.getpid()}-{process_token(os.getpid())}"
    if not _mine:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"{name}.json", dir_fd=dir_fd)
        return
    tmp = f"{name}.tmp"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW
    try:
        fd = os.open(tmp, flags, 0o644, dir_fd=dir_fd)
    except FileExistsError:  # a leftover of ours, or something planted at our name: remove it, once
        try:
            os.unlink(tmp, dir_fd=dir_fd)
            fd = os.open(tmp, flags, 0o644, dir_fd=dir_fd)
        except OSError as exc:
            log.warning("cannot write the port claims file %s (%s): other launchers may pick the same ports",
                        folder / tmp, exc.strerror)
            return
    with os.fdopen(fd, "w") as fh:
        os.fchmod(fd, 0o644)  # readable by every user's launchers, whatever the umask
        fh.write(json.dumps(sorted(_mine)))
    os.replace(tmp, f"{name}.json", src_dir_fd=dir_fd, dst_dir_fd=dir_fd)  # rename replaces a link itself


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
