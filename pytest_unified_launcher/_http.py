"""The HTTP side of health probes: one GET, its status and (bounded) body, and the verdict.

Two transports share one verdict (:func:`judge`):

- while services start, :func:`fetch_minimal` speaks just enough HTTP/1.1 over asyncio streams:
  an HTTP client library costs ~0.17 s of CPU to import, paid on the critical path while the
  first services start (measured with benchmarks/peers.py);
- once they are ready, the health monitor's probes go through one aiohttp ``ClientSession`` per
  launcher (:class:`SharedSession`: keep-alive connections, ``ClientTimeout``), imported when
  the monitor first probes, seconds after the start.
"""

from __future__ import annotations

import asyncio
import functools
import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

#: The most of a body a probe reads (a health page is small; a huge one must not cost memory).
BODY_LIMIT = 64 * 1024


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes = b""


class Fetch(Protocol):
    async def __call__(self, url: str, *, headers: Mapping[str, str], timeout: float,
                       tls: ssl.SSLContext | None, read_body: bool) -> Answer: ...


@functools.lru_cache(maxsize=64)
def tls_context(ca_file: Path | None, cert: Path | None, key: Path | None) -> ssl.SSLContext:
    """The TLS settings of an https probe: the system's CAs or ``ca_file``, and a client cert."""
    context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    if cert is not None:
        context.load_cert_chain(str(cert), str(key) if key else None)
    return context


def judge(answer: Answer, *, url: str, status: tuple[int, ...] | None, body: str | None) -> str | None:
    """None when ``answer`` passes (one of ``status``, else any 2xx; ``body`` matches), else why not."""
    passes = answer.status in status if status else 200 <= answer.status < 300
    if not passes:
        wanted = f" (expected {', '.join(map(str, status))})" if status else ""
        return f"GET {url} answered HTTP {answer.status}{wanted}"
    if body is not None and not re.search(body, answer.body.decode("utf-8", errors="replace")):
        shown = answer.body[:80].decode("utf-8", errors="replace").strip() or "an empty body"
        return f"GET {url} answered HTTP {answer.status}, but its body does not match /{body}/: {shown!r}"
    return None


async def fetch_minimal(url: str, *, headers: Mapping[str, str], timeout: float,
                        tls: ssl.SSLContext | None, read_body: bool) -> Answer:
    """GET ``url`` over a fresh connection; the body (de-chunked, at most :data:`BODY_LIMIT`)
    only when ``read_body``."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {url!r}")
    secure = parts.scheme == "https"
    port = parts.port or (443 if secure else 80)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    lines = [f"GET {target} HTTP/1.1", f"Host: {host}:{port}", "User-Agent: unified-launcher", "Accept: */*",
             "Connection: close", *(f"{k}: {v}" for k, v in headers.items())]
    request = ("\r\n".join(lines) + "\r\n\r\n").encode()

    async def exchange() -> Answer:
        context = (tls or ssl.create_default_context()) if secure else None
        reader, writer = await asyncio.open_connection(parts.hostname, port, ssl=context)
        try:
            writer.write(request)
            await writer.drain()
            try:
                line = await reader.readline()
            except ValueError:  # no line end within the stream's 64 KiB limit
                raise ConnectionError("answered more than 64 KiB without a line end, not an HTTP status line") from None
            fields = line.split(None, 2)
            if len(fields) < 2 or not fields[0].startswith(b"HTTP/") or not fields[1].isdigit():
                shown = line[:60].decode("latin-1").strip() or "nothing"
                raise ConnectionError(f"answered {shown!r}, not an HTTP status line")
            status = int(fields[1])
            return Answer(status, await _read_body(reader) if read_body else b"")
        finally:
            writer.close()

    async with asyncio.timeout(timeout):
        return await exchange()


async def _read_body(reader: asyncio.StreamReader) -> bytes:
    """The body after the status line: headers skipped, chunks joined, at most BODY_LIMIT."""
    chunked, length = False, None
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b"\n", b""):
            break
        name, _, value = line.decode("latin-1").partition(":")
        if name.strip().lower() == "transfer-encoding" and "chunked" in value.lower():
            chunked = True
        elif name.strip().lower() == "content-length" and value.strip().isdigit():
            length = int(value.strip())
    if not chunked:
        want = BODY_LIMIT if length is None else min(length, BODY_LIMIT)
        return await reader.read(want) if length is None else await reader.readexactly(want)
    body = b""
    while len(body) < BODY_LIMIT:
        size_line = (await reader.readline()).split(b";")[0].strip()
        size = int(size_line or b"0", 16)
        if size == 0:
            break
        body += await reader.readexactly(size)
        await reader.readline()
    return body[:BODY_LIMIT]


class SharedSession:
    """One aiohttp ``ClientSession`` for a launcher's monitor probes (keep-alive), made on first
    use on the launcher's loop and closed with it."""

    def __init__(self) -> None:
        self._session: Any = None
        self._timeouts: dict[float, Any] = {}

    async def fetch(self, url: str, *, headers: Mapping[str, str], timeout: float,
                    tls: ssl.SSLContext | None, read_body: bool) -> Answer:
        import aiohttp

        if self._session is None or self._session.closed:
            # What a probe has no use for costs CPU at every request: cookies, decompression.
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit_per_host=4, keepalive_timeout=30),
                headers={"User-Agent": "unified-launcher"}, cookie_jar=aiohttp.DummyCookieJar(),
                auto_decompress=False,
            )
        client_timeout = self._timeouts.get(timeout)
        if client_timeout is None:
            client_timeout = self._timeouts[timeout] = aiohttp.ClientTimeout(total=timeout)
        async with self._session.get(url, headers=headers or None, timeout=client_timeout,
                                     ssl=tls if tls is not None else True, allow_redirects=False) as response:
            body = await response.content.read(BODY_LIMIT) if read_body else b""
            return Answer(response.status, body)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
