"""Callables of every shape the interface detection must tell apart, by how they are called."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import Any

Send = Callable[[dict[str, Any]], Awaitable[None]]


def plain_wsgi(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"plain wsgi"]


class WSGIClass:
    """A WSGI app class: instantiated per request, iterated for the body (PEP 3333 allows it)."""

    def __init__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> None:
        start_response("200 OK", [("Content-Type", "text/plain")])

    def __iter__(self) -> Iterator[bytes]:
        yield b"wsgi class"


class WSGIMiddlewareLike:
    """A callable object with __call__(environ, start_response), as werkzeug middleware is."""

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        return plain_wsgi(environ, start_response)


wsgi_instance = WSGIMiddlewareLike()


async def asgi3(scope: dict[str, Any], receive: Any, send: Send) -> None:
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"asgi3"})


def asgi3_sync_wrapper(scope: dict[str, Any], receive: Any, send: Send) -> Awaitable[None]:
    """A plain function returning the coroutine (middleware written this way): uvicorn calls it ASGI 2."""
    return asgi3(scope, receive, send)


class ASGI2App:
    """ASGI 2: instantiated with the scope, then awaited with (receive, send)."""

    def __init__(self, scope: dict[str, Any]) -> None:
        self.scope = scope

    async def __call__(self, receive: Any, send: Send) -> None:
        await asgi3(self.scope, receive, send)


@functools.wraps(plain_wsgi)
def wrapped_wsgi(*args: Any, **kwargs: Any) -> Iterable[bytes]:
    return plain_wsgi(*args, **kwargs)


def two_things(a: int, b: int, c: int, d: int) -> int:
    return a + b + c + d


class NotAnApp:
    def __call__(self, *args: Any) -> None:
        return None


not_an_app = NotAnApp()
four_args = two_things


def star_wsgi(*args: Any) -> Iterable[bytes]:
    """WSGI behind *args (an undecorated wrapper): detection cannot tell, interface = "wsgi" can."""
    return plain_wsgi(*args)
