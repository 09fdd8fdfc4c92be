"""``env_file``: dotenv files read with python-dotenv (the format compose and most tools share).

Read apart from parsing (``parse`` takes the reader, ``load_config`` gives this one), and
bounded like the config file itself: a regular file, at most 1 MiB, UTF-8.
"""

from __future__ import annotations

import io
import os
import stat
from pathlib import Path

from ..errors import ConfigError

MAX_BYTES = 1 << 20


def read_env_file(path: Path) -> dict[str, str | None]:
    """``NAME -> value`` of one dotenv file, unexpanded (the config's own ``${...}`` apply later);
    a bare ``NAME`` line gives None (compose: take it from the environment)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise ConfigError(f"env file {path} does not exist", key="env_file",
                          fix="create it, or remove it from env_file") from None
    except OSError as exc:
        raise ConfigError(f"cannot read env file {path}: {exc.strerror}", key="env_file") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise ConfigError(f"env file {path} is not a regular file", key="env_file",
                          fix="point env_file at a file of NAME=value lines")
    with os.fdopen(fd, "rb") as fh:
        data = fh.read(MAX_BYTES + 1)
    if len(data) > MAX_BYTES:
        raise ConfigError(f"env file {path} is larger than {MAX_BYTES // 1024} KiB", key="env_file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"env file {path} is not UTF-8 (byte {exc.start})", key="env_file",
                          fix="save it as UTF-8") from None
    from dotenv import dotenv_values

    return dict(dotenv_values(stream=io.StringIO(text), interpolate=False))
