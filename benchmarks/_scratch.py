"""One temp folder per benchmark process, removed when it exits (benchmarks leave no litter)."""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

_ROOT = Path(tempfile.mkdtemp(prefix="ul-bench-"))
atexit.register(shutil.rmtree, _ROOT, True)


def scratch_dir() -> Path:
    """A fresh empty folder inside this process's scratch root."""
    return Path(tempfile.mkdtemp(dir=_ROOT))
