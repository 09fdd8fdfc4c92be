"""The only part of the config that touches the disk: reading the file, reserving ports."""

from __future__ import annotations

import errno
import os
import re
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .models import LauncherConfig
from .envfiles import read_env_file
from .parsing import parse

#: A config larger than this is refused before it is read (a link to /dev/zero, a log file).
MAX_BYTES = 10 * 1024 * 1024
#: Arrays and inline tables nested deeper than this are refused before tomllib recurses into them.
MAX_NESTING = 100

_FILE_TYPES = {
    stat.S_IFDIR: "a directory",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFIFO: "a FIFO",
    stat.S_IFSOCK: "a socket",
}


def _read_text(path: Path) -> str:
    """The file's text, read only if it is a regular file of bounded size in UTF-8.

    Opened with O_NONBLOCK so a FIFO cannot hang the open, then checked with fstat on that same
    descriptor (no race between the check and the read), then read with a cap.
    """
    src = str(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except FileNotFoundError:
        raise ConfigError(
            "file not found", source=src, fix="check the path, or run `unified-launcher init`"
        ) from None
    except IsADirectoryError:
        raise ConfigError("not a regular file but a directory", source=src,
                          fix="point to the launcher.toml file itself") from None
    except OSError as exc:
        raise ConfigError(f"cannot read the file: {exc.strerror}", source=src) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            what = _FILE_TYPES.get(stat.S_IFMT(info.st_mode), "a special file")
            raise ConfigError(f"not a regular file but {what}", source=src,
                              fix="point to a launcher.toml that is a plain file")
        if info.st_size > MAX_BYTES:
            raise ConfigError(f"the file is larger than {MAX_BYTES >> 20} MiB ({info.st_size} bytes)", source=src,
                              fix="a launcher config is a few kB: check that this is the right file")
        os.set_blocking(fd, True)
        with os.fdopen(fd, "rb") as file:
            fd = -1
            data = file.read(MAX_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read the file: {exc.strerror}", source=src) from None
    finally:
        if fd >= 0:
            os.close(fd)
    if len(data) > MAX_BYTES:  # it grew after fstat
        raise ConfigError(f"the file is larger than {MAX_BYTES >> 20} MiB", source=src,
                          fix="a launcher config is a few kB: check that this is the right file")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ConfigError(f"the file is not UTF-8 (byte 0x{data[exc.start]:02x} on line {line})", source=src,
                          fix="save it as UTF-8, as TOML requires") from None


_SPECIAL = re.compile(r"[\[\]{}\"'#\n]")


def _check_nesting(text: str, src: str) -> None:
    """Refuse arrays and inline tables nested deeper than MAX_NESTING (tomllib recurses per level).

    Linear, and free for ordinary files: only a text with that many brackets is scanned, skipping
    strings and comments so a bracket inside them does not count.
    """
    if text.count("[") + text.count("{") <= MAX_NESTING:
        return
    depth = 0
    line = 1
    i = 0
    n = len(text)
    quotes = ('"""', "'''", '"', "'")
    while True:
        found = _SPECIAL.search(text, i)
        if found is None:
            return
        i = found.start()
        c = text[i]
        if c == "\n":
            line += 1
        elif c == "#":
            end = text.find("\n", i)
            i = n if end < 0 else end
            continue
        elif c in "\"'":
            quote = next(q for q in quotes if text.startswith(q, i))
            j = i + len(quote)
            while True:
                end = text.find(quote, j)
                if end < 0 or quote == "'" or quote == "'''":
                    break
                # In basic strings a quote preceded by an odd number of backslashes is escaped.
                before = end
                while before > j and text[before - 1] == "\\":
                    before -= 1
                if (end - before) % 2 == 0:
                    break
                j = end + 1
            end = n if end < 0 else end + len(quote)
            line += text.count("\n", i, end)
            i = end
            continue
        elif c in "[{":
            depth += 1
            if depth > MAX_NESTING:
                raise ConfigError(f"arrays or inline tables nested more than {MAX_NESTING} deep (line {line})",
                                  source=src, fix="flatten the value: a launcher config needs a few levels")
        elif c in "]}":
            depth = max(depth - 1, 0)
        i += 1


def read_toml(path: Path) -> dict[str, Any]:
    """The file's TOML as a mapping (``[tool.unified-launcher]`` for a pyproject.toml).

    Every input is bounded (SPEC 7): a regular file, at most MAX_BYTES, UTF-8, nested at most
    MAX_NESTING deep; anything else is one ConfigError naming the file, never a hang or a trace.
    """
    import tomllib

    text = _read_text(path)
    _check_nesting(text, str(path))
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(
            f"invalid TOML: {exc}", source=str(path), fix="fix the syntax on that line"
        ) from None
    except RecursionError:  # a backstop: _check_nesting should have refused it
        raise ConfigError("nested too deeply for TOML parsing", source=str(path),
                          fix="flatten the nested arrays and inline tables") from None
    if path.name == "pyproject.toml":
        section = data.get("tool", {}).get("unified-launcher")
        if section is None:
            raise ConfigError(
                "no [tool.unified-launcher] table", source=str(path),
                fix="add [tool.unified-launcher.services.NAME] tables, or use a launcher.toml",
            )
        return dict(section)
    return data


class _AnyPort(dict[str, int]):
    """Pinned ports answering 0 for every service: resolve a config without reserving any."""

    def __contains__(self, key: object) -> bool:
        return True

    def __getitem__(self, key: str) -> int:
        return 0


def state_dir_of(path: str | os.PathLike[str], *, profile: str | None = None) -> Path:
    """The config's state folder, found without reserving ports (status, down, attach)."""
    return load_config(path, profile=profile, pinned_ports=_AnyPort(), tmp_root="/nonexistent").state_dir


def load_config(
    path: str | os.PathLike[str],
    *,
    profile: str | None = None,
    mode: str | None = None,
    xdist: str | None = None,
    budget: float | None = None,
    timeout: float | None = None,
    ini: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    pinned_ports: Mapping[str, int] | None = None,
    tmp_root: str | os.PathLike[str] | None = None,
    worker: str | None = None,
) -> LauncherConfig:
    """Read, validate and resolve a config file, reserving its ``auto`` ports machine-wide;
    ``worker``: the xdist worker id behind ``${worker}`` (None: ``main``)."""
    from .. import _ports

    source = Path(path)
    data = read_toml(source)
    reserved: list[int] = []

    def allocate(name: str, host: str) -> int:
        try:
            port = _ports.reserve(host)
        except OSError as exc:
            fix = ("raise the open-files limit (`ulimit -n`)" if exc.errno in (errno.EMFILE, errno.ENFILE)
                   else "stop what holds the ports of that range, or give the service a fixed `port = N`")
            raise ConfigError(f"no free port to reserve on {host}: {exc.strerror}", source=str(source),
                              service=name, key="port", fix=fix) from None
        reserved.append(port)
        return port

    try:
        return parse(
            data,
            source=source,
            profile=profile,
            mode=mode,
            xdist=xdist,
            budget=budget,
            timeout=timeout,
            ini=ini,
            environ=environ,
            allocate_port=allocate,
            pinned_ports=pinned_ports,
            tmp_root=tmp_root,
            read_env_file=read_env_file,
            worker=worker,
        )
    except BaseException:
        _ports.release(reserved)  # a config that does not load claims nothing
        raise
