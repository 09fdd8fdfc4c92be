"""The control API of a real `unified-launcher up`: who may send it what, and how much."""

from __future__ import annotations

import json
import select
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psutil
import pytest
from conftest import PY, TCP

CONFIG = f"""
[launcher]
state_dir = "state"
[services.plain]
command = ["{PY}", "{TCP}", "${{port}}"]
"""
#: The body an attacker offers: far above any cap, and big enough to show in the server's RSS.
BIG = 256 * 1024 * 1024


def cli(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PY, "-m", "pytest_unified_launcher", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120, stdin=subprocess.DEVNULL)


@pytest.fixture
def up(tmp_path: Path, no_orphans: None) -> Iterator[dict[str, Any]]:
    (tmp_path / "launcher.toml").write_text(CONFIG)
    result = cli(tmp_path, "up", "--detach")
    assert result.returncode == 0, result.stderr + result.stdout
    try:
        yield json.loads((tmp_path / "state" / "up.json").read_text())
    finally:
        cli(tmp_path, "down")


def post(url: str, *, length: int | None, token: str | None = None, chunked: bool = False,
         limit: int = BIG) -> tuple[int, int]:
    """POST ``length`` bytes (or ``limit`` bytes chunked) over a raw socket, stopping as soon as the
    server answers. Returns (status, bytes sent)."""
    parts = urlsplit(url)
    head = [f"POST {parts.path} HTTP/1.1", f"Host: {parts.netloc}", "Content-Type: application/json"]
    head.append("Transfer-Encoding: chunked" if chunked else f"Content-Length: {length}")
    if token:
        head.append(f"Authorization: Bearer {token}")
    sock = socket.create_connection((parts.hostname, parts.port), timeout=60)
    sock.setblocking(False)
    pending = ("\r\n".join(head) + "\r\n\r\n").encode()
    block = b"x" * (1 << 20)
    sent, answer, refused = 0, b"", False
    total = limit if chunked else (length or 0)
    ending = b"0\r\n\r\n" if chunked else b""  # the last chunk
    try:
        while b"\r\n" not in answer:
            if not pending and sent >= total:
                pending, ending = ending, b""
            sending = not refused and (pending or sent < total)
            readable, writable, _ = select.select([sock], [sock] if sending else [], [], 60)
            if not readable and not writable:
                raise AssertionError("the server neither answered nor read for 60 s")
            if readable:
                try:
                    data = sock.recv(65536)
                except ConnectionResetError:
                    break
                if not data:
                    break
                answer += data
                continue
            if not pending:
                piece = block[: total - sent]
                pending = (f"{len(piece):x}\r\n".encode() + piece + b"\r\n") if chunked else piece
                sent += len(piece)
            try:
                pending = pending[sock.send(pending):]
            except (BrokenPipeError, ConnectionResetError):  # it closed: read what it answered first
                refused = True
    finally:
        sock.close()
    assert answer.startswith(b"HTTP/1.1 "), answer[:200]
    return int(answer.split()[1]), sent


def test_unauthenticated_big_body_is_refused_before_it_is_read(up: dict[str, Any]) -> None:
    """A huge POST without a token gets 401 without the server reading its body (it was read
    whole, RSS growing by the body's size, then answered 422)."""
    supervisor = psutil.Process(up["owner_pid"])
    url = up["control"]["url"] + "/services/plain/restart"
    before = supervisor.memory_info().rss
    status, _ = post(url, length=BIG)
    grown = supervisor.memory_info().rss - before
    assert status == 401
    assert grown < BIG / 8, f"the server's RSS grew by {grown} bytes for a {BIG}-byte body"


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_authenticated_body_over_the_cap_is_413(up: dict[str, Any], chunked: bool) -> None:
    """With the token, a body over the cap is 413 (announced or streamed), and the API still works."""
    supervisor = psutil.Process(up["owner_pid"])
    url = up["control"]["url"] + "/services/plain/restart"
    before = supervisor.memory_info().rss
    status, _ = post(url, length=BIG, token=up["control"]["token"], chunked=chunked)
    grown = supervisor.memory_info().rss - before
    assert status == 413
    assert grown < BIG / 8, f"the server's RSS grew by {grown} bytes for a {BIG}-byte body"
    import urllib.request

    request = urllib.request.Request(up["control"]["url"] + "/services",
                                     headers={"Authorization": f"Bearer {up['control']['token']}"})
    with urllib.request.urlopen(request, timeout=30) as response:
        assert json.loads(response.read())["status"] == "running"
