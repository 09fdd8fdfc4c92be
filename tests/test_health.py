"""Probes and the wait loop, against real sockets and real processes."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from pytest_unified_launcher import _timing
from pytest_unified_launcher.config import HealthCheck
from pytest_unified_launcher.health import (
    HealthTimeout,
    HttpProbe,
    LogProbe,
    ProcessExited,
    TcpProbe,
    wait_healthy,
)


async def serve_http(status: int) -> tuple[asyncio.Server, int]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(f"HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


def closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize(("status", "expected"), [
    (200, None),
    (204, None),
    (503, "answered HTTP 503"),
    (404, "answered HTTP 404: the server answers, but not on that path; check the service's health"),
    (405, "answered HTTP 405: the server answers, but not on that path"),
])
async def test_http_probe_statuses(status: int, expected: str | None) -> None:
    """http is healthy on 2xx only (GET, so FastAPI's 405 for HEAD cannot fool it); a 404 or 405
    says the server is up and the path is what to check."""
    server, port = await serve_http(status)
    try:
        result = await HttpProbe(HealthCheck("http", url=f"http://127.0.0.1:{port}/health", timeout=1.0)).check()
    finally:
        server.close()
    assert result is None if expected is None else expected in str(result)


async def serve_raw(answer: bytes, requests: list[bytes]) -> tuple[asyncio.Server, int]:
    """A server that records each request's head and answers ``answer`` verbatim, then closes."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        requests.append(await reader.readuntil(b"\r\n\r\n"))
        writer.write(answer)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (b"HTTP/1.0 200 OK\r\n\r\n", None),
        (b"HTTP/1.1 302 Found\r\nLocation: /elsewhere\r\n\r\n", "answered HTTP 302"),
        (b"", "answered 'nothing', not an HTTP status line"),
        (b"-ERR unknown command 'GET'\r\n", "answered \"-ERR unknown command 'GET'\", not an HTTP status line"),
        (b"SSH-2.0-OpenSSH_9.2\r\n", "not an HTTP status line"),
        (b"x" * 100_000, "answered more than 64 KiB without a line end, not an HTTP status line"),
    ],
)
async def test_http_probe_reads_only_the_status_line(answer: bytes, expected: str | None) -> None:
    """HTTP/1.0 counts, redirects are not followed, and a non-HTTP server is named as such."""
    requests: list[bytes] = []
    server, port = await serve_raw(answer, requests)
    try:
        result = await HttpProbe(HealthCheck("http", url=f"http://127.0.0.1:{port}/ready", timeout=1.0)).check()
    finally:
        server.close()
    assert result == expected or (expected is not None and expected in str(result))


async def test_http_probe_sends_path_query_and_host() -> None:
    """The request line carries the URL's path and query; Host names the address probed."""
    requests: list[bytes] = []
    server, port = await serve_raw(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", requests)
    try:
        assert await HttpProbe(HealthCheck("http", url=f"http://127.0.0.1:{port}/health/live?deep=1", timeout=1.0)).check() is None
        assert await HttpProbe(HealthCheck("http", url=f"http://127.0.0.1:{port}", timeout=1.0)).check() is None
    finally:
        server.close()
    first, second = (r.decode().split("\r\n") for r in requests)
    assert first[0] == "GET /health/live?deep=1 HTTP/1.1"
    assert f"Host: 127.0.0.1:{port}" in first
    assert "Connection: close" in first
    assert second[0] == "GET / HTTP/1.1"


async def test_http_probe_times_out_on_a_silent_server() -> None:
    """A server that accepts but never answers is reported as timed out, not waited on forever."""
    gate = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await gate.wait()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        assert await HttpProbe(HealthCheck("http", url=f"http://127.0.0.1:{port}/", timeout=0.1)).check() == "timed out"
    finally:
        gate.set()
        server.close()


async def test_tcp_and_http_probes_name_a_refused_connection() -> None:
    """A closed port is reported as 'connection refused' by both probes."""
    port = closed_port()
    assert await TcpProbe("127.0.0.1", port, 1.0).check() == "connection refused"
    assert await HttpProbe(HealthCheck("http", url=f"http://127.0.0.1:{port}/", timeout=1.0)).check() == "connection refused"
    assert await HttpProbe(HealthCheck("http", url=f"http://localhost:{port}/", timeout=1.0)).check() == "connection refused"


async def test_log_probe_reads_only_new_output(tmp_path: Path) -> None:
    """The log probe matches output written since the start, across reads."""
    log = tmp_path / "svc.log"
    log.write_text("booting\n")
    probe = LogProbe(log, r"ready to accept")
    assert await probe.check() is not None
    with open(log, "a") as fh:
        fh.write("server is ready to ")
    assert await probe.check() is not None
    with open(log, "a") as fh:
        fh.write("accept connections\n")
    assert await probe.check() is None


async def test_wait_fails_at_once_when_the_process_exits(tmp_path: Path) -> None:
    """A process that exits ends the wait with its code, long before the deadline."""
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", "raise SystemExit(9)")
    exited = asyncio.ensure_future(proc.wait())
    with pytest.raises(ProcessExited) as info:
        await wait_healthy(TcpProbe("127.0.0.1", closed_port(), 1.0), deadline=_timing.monotonic() + 600,
                           timeout=600, exited=exited, exit_code=lambda: proc.returncode)
    assert info.value.code == 9


async def test_wait_times_out_with_the_last_answer() -> None:
    """Past the deadline the wait raises with the timeout and the last probe's answer."""
    with pytest.raises(HealthTimeout) as info:
        await wait_healthy(TcpProbe("127.0.0.1", closed_port(), 1.0), deadline=_timing.monotonic() + 0.2, timeout=0.2)
    assert info.value.timeout == 0.2 and info.value.last == "connection refused"


async def test_wait_probes_when_the_log_grows(tmp_path: Path) -> None:
    """The wait ends on new output, and until then the backoff keeps probes few (no blind polling)."""
    log = tmp_path / "svc.log"
    log.write_text("")
    probe = LogProbe(log, "READY")
    checks = 0
    original = probe.check

    async def counting() -> str | None:
        nonlocal checks
        checks += 1
        return await original()

    probe.check = counting  # type: ignore[method-assign]

    async def write_later() -> None:
        await asyncio.sleep(0.3)
        log.write_text("READY\n")

    writer = asyncio.ensure_future(write_later())
    await wait_healthy(probe, deadline=_timing.monotonic() + 10, timeout=10, log_path=log)
    await writer
    # The backoff grows to 50 ms: ~10 probes in 0.3 s, not hundreds (no blind 1 ms polling).
    assert checks < 30


async def test_a_signal_already_received_does_not_cancel_the_backoff() -> None:
    """After READY=1 / the ready pipe, a probe that still fails is retried on the backoff, not in
    a hot loop (only a signal arriving during the wait cuts it short)."""
    ready = asyncio.Event()
    ready.set()
    probe = TcpProbe("127.0.0.1", closed_port(), 1.0)
    checks = 0
    original = probe.check

    async def counting() -> str | None:
        nonlocal checks
        checks += 1
        return await original()

    probe.check = counting  # type: ignore[method-assign]
    with pytest.raises(HealthTimeout):
        await wait_healthy(probe, deadline=_timing.monotonic() + 0.3, timeout=0.3, signals=(ready,))
    assert checks < 30


async def test_a_cancel_that_lands_as_a_probe_finishes_is_not_lost() -> None:
    """Ctrl-C / SIGTERM to `up` cancels the start's wait; on Python 3.11 `wait_for` dropped a
    cancel that arrived in the very step its probe finished, and the wait went on to the
    startup_timeout (`up` took ~50 s to exit under a loaded CI)."""
    from pytest_unified_launcher import _timing
    from pytest_unified_launcher.health import wait_healthy

    calls = []

    class CancelsItsWaiter:
        async def check(self) -> str | None:
            calls.append(1)
            if len(calls) == 1:
                waiter.cancel()  # lands while the probe's own answer is on its way
            return "connection refused"

    waiter = asyncio.ensure_future(wait_healthy(CancelsItsWaiter(), deadline=_timing.monotonic() + 2, timeout=2))
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert len(calls) == 1


def test_the_package_never_uses_wait_for() -> None:
    """The lost cancel above is wait_for's own on Python 3.11 (3.12 rebuilt it on
    asyncio.timeout): any wait_for in a loop or a start path can swallow a Ctrl-C the same way
    (the `up` supervisor's 0.25 s wait would have gone on forever). So none is left."""
    import ast

    import pytest_unified_launcher

    package = Path(pytest_unified_launcher.__file__).parent
    found = []
    for source in sorted(package.rglob("*.py")):
        for node in ast.walk(ast.parse(source.read_text(), str(source))):
            if isinstance(node, ast.Attribute) and node.attr == "wait_for" and \
                    isinstance(node.value, ast.Name) and node.value.id == "asyncio":
                found.append(f"{source.relative_to(package)}:{node.lineno}")
    assert found == [], f"asyncio.wait_for at {found}: use `async with asyncio.timeout(...)`"


@pytest.mark.parametrize(("behaviour", "passes"), [
    ("keeps-open", True),          # a server that waits for the client to speak (redis, postgres)
    ("greets", True),              # one that speaks first (SMTP, MySQL)
    ("closes-at-once", False),     # docker's port proxy with nothing listening in the container
])
async def test_a_settling_tcp_probe_tells_a_proxy_from_a_server(behaviour: str, passes: bool) -> None:
    """docker publishes a port through a proxy that accepts before anything listens behind it:
    a tcp probe of a docker container passes only when the connection stays open or answers."""
    from pytest_unified_launcher.health import TcpProbe

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if behaviour == "greets":
            writer.write(b"220 ready\r\n")
            await writer.drain()
        if behaviour != "closes-at-once":
            await reader.read()  # until the client goes
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        settling = await TcpProbe("127.0.0.1", port, 2.0, settle=0.2).check()
        plain = await TcpProbe("127.0.0.1", port, 2.0).check()
    assert plain is None  # without settle, any accepted connection passes (podman, processes)
    if passes:
        assert settling is None
    else:
        assert settling is not None and "closed it at once" in settling
