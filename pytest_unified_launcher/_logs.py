"""Bounded logs: a service's log file is rotated at a cap, as logrotate's ``copytruncate`` does.

A service writes its log through its own file descriptor (opened with ``O_APPEND``), so the file
cannot be renamed away from under it: its last part is copied to ``<name>.log.1`` and the log is
truncated in place, and the service's next write lands at the new end. Lines written between the
copy and the truncation are lost; that is the price of never standing between a service and its
output (no pipe that could fill up and block it).
"""

from __future__ import annotations

import os
from pathlib import Path

#: The default cap of one service's log; the rotated copy holds at most as much again.
LOG_MAX_BYTES = 64 * 1024 * 1024
#: How often the launcher checks its running services' logs against the cap while one grows
#: by more than FAST_GROWTH between checks; the checks back off to IDLE_CHECK_SECONDS otherwise.
CHECK_SECONDS = 0.1
IDLE_CHECK_SECONDS = 1.0
FAST_GROWTH = 1 << 20

_NOFOLLOW = os.O_NOFOLLOW | os.O_CLOEXEC


def cap_log(path: Path, max_bytes: int) -> bool:
    """Rotate ``path`` if it is over ``max_bytes``: its last ``max_bytes`` (from a line start)
    replace ``<name>.log.1``, then it is truncated. Returns whether it rotated. Links are never
    followed; the rotated copy is written to a new file and renamed over the old one."""
    try:
        if os.lstat(path).st_size <= max_bytes:  # the common case: one stat, nothing opened
            return False
        fd = os.open(path, os.O_RDWR | _NOFOLLOW)
    except OSError:
        return False
    try:
        size = os.fstat(fd).st_size
        if size <= max_bytes:
            return False
        start = size - max_bytes
        data = os.pread(fd, max_bytes, start)
        if start > 0:  # begin at a line start, as a reader expects
            cut = data.find(b"\n")
            data = data[cut + 1:] if cut >= 0 else data
        rotated = path.with_name(path.name + ".1")
        scratch = path.with_name(f".{path.name}.1.{os.getpid()}")
        try:
            os.unlink(scratch)
        except FileNotFoundError:
            pass
        out = os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(out, view):]
        finally:
            os.close(out)
        os.replace(scratch, rotated)  # replaces a planted link itself, never its target
        os.ftruncate(fd, 0)
        return True
    except OSError:
        return False  # a full disk or a vanished file: the next check tries again
    finally:
        os.close(fd)
