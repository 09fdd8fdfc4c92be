"""Each session's scratch root (every service's ``${tmp}``), on disk or in memory."""

from __future__ import annotations

import os
from pathlib import Path

#: Where ``tmpfs = true`` puts a service's ``${tmp}``: memory, not disk (Linux).
MEMORY_TMP = Path("/dev/shm")
#: ...when it has this much room: containers often get a 64 MB /dev/shm, too small for a database.
MEMORY_MIN_FREE = 1 << 30


def memory_root(tmp_root: Path) -> Path | None:
    """The in-memory twin of the session's scratch root, when the machine has a roomy one."""
    from . import MEMORY_MIN_FREE as min_free  # read where it is public, so a test can lower it there

    try:
        stats = os.statvfs(MEMORY_TMP)
    except OSError:
        return None
    if stats.f_bavail * stats.f_frsize < min_free or not os.access(MEMORY_TMP, os.W_OK | os.X_OK):
        return None
    return MEMORY_TMP / tmp_root.name


def remove_scratch(tmp_root: Path) -> None:
    """Delete the session's scratch dirs (every ``${tmp}``), on disk and in memory."""
    import shutil

    for root in (tmp_root, MEMORY_TMP / tmp_root.name):
        if root.name.startswith("ul-"):
            shutil.rmtree(root, ignore_errors=True)
