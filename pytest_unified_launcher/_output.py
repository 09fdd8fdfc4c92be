"""Files written at the end of a run (the JSON report, the waterfall SVG).

Their paths are checked when the run begins, so a wrong one fails before the services start
instead of losing the run's figures (and its folder is created then, as pytest does for
``--junitxml``).
"""

from __future__ import annotations

import os
from pathlib import Path


def check_writable(path: str | os.PathLike[str]) -> str | None:
    """Why ``path`` cannot be written (e.g. "permission denied"), or None when it can.

    Creates the missing folders; leaves no file behind that was not there.
    """
    target = Path(path)
    existed = target.exists()
    blocking = next((p for p in target.parents if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        return f"{blocking} is a file, not a folder"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target, "a"):
            pass
    except OSError as exc:
        return (exc.strerror or str(exc)).lower()
    if not existed:
        target.unlink()
    return None


def write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` whole or not at all: a reader never sees half a report."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.partial")
    partial.write_text(text)
    os.replace(partial, target)
