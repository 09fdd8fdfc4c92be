"""The control API of ``unified-launcher up``: service list and state, restart/stop one, metrics.

FastAPI on 127.0.0.1 only. Every request needs ``Authorization: Bearer <JWT>``, an HS256 token
signed with a per-environment secret kept in the 0600 state file; a missing, expired, forged
or ``alg=none`` token is 401. The token is checked from the headers, before any of the body is
read, and a body over :data:`MAX_BODY` is 413 (announced or streamed): no caller can make the
supervisor buffer more than that.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import jwt
from fastapi import FastAPI, HTTPException
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel, ConfigDict, Field

ALGORITHM = "HS256"
ISSUER = "unified-launcher"
#: The largest request body the API reads; its bodies are a short JSON reason.
MAX_BODY = 16 * 1024

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def make_token(secret: str, *, ttl_seconds: float = 7 * 24 * 3600) -> str:
    now = int(time.time())
    return jwt.encode({"iss": ISSUER, "iat": now, "exp": now + int(ttl_seconds)}, secret, algorithm=ALGORITHM)


def check_token(token: str, secret: str) -> None:
    """Raise ``jwt.InvalidTokenError`` unless ``token`` is ours, unexpired and HS256-signed."""
    jwt.decode(token, secret, algorithms=[ALGORITHM], issuer=ISSUER, options={"require": ["exp", "iss"]})


class Metrics:
    """Prometheus metrics of one environment, in their own registry."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.up = Gauge("launcher_service_up", "1 when the service is running or completed", ["service"],
                        registry=self.registry)
        self.state = Gauge("launcher_service_state", "1 for the service's current state", ["service", "state"],
                           registry=self.registry)
        self.startup = Histogram("launcher_service_startup_seconds", "Seconds from spawn to healthy", ["service"],
                                 buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 60), registry=self.registry)
        self.restarts = Counter("launcher_service_restarts_total", "Restarts (auto, dev reload or API)", ["service"],
                                registry=self.registry)
        self.probe = Histogram("launcher_health_probe_seconds", "Latency of the health monitor's probes",
                               ["service"], buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1),
                               registry=self.registry)
        # SPEC 10: health and resources, as the launcher's health monitor samples them.
        self.healthy = Gauge("unified_launcher_service_healthy", "1 when its last health probe passed",
                             ["service"], registry=self.registry)
        self.probes = Gauge("unified_launcher_service_probes", "Health probes run since it started",
                            ["service"], registry=self.registry)
        self.probe_failures = Gauge("unified_launcher_service_probe_failures",
                                    "Failed health probes since it started", ["service"], registry=self.registry)
        self.rss = Gauge("unified_launcher_service_rss_bytes", "Resident memory of its processes",
                         ["service"], registry=self.registry)
        self.rss_peak = Gauge("unified_launcher_service_rss_peak_bytes", "Highest resident memory sampled",
                              ["service"], registry=self.registry)
        self.cpu = Gauge("unified_launcher_service_cpu_seconds", "CPU seconds used by its processes",
                         ["service"], registry=self.registry)
        self.open_files = Gauge("unified_launcher_service_open_files", "Open file descriptors of its processes",
                                ["service"], registry=self.registry)
        self.threads = Gauge("unified_launcher_service_threads", "Threads of its processes",
                             ["service"], registry=self.registry)
        self._observed: dict[str, int] = {}

    def refresh(self, launcher: Any) -> None:
        states = ("stopped", "starting", "running", "unhealthy", "died", "completed", "failed", "stopping")
        for name, handle in launcher.services.items():
            self.up.labels(name).set(1 if handle.state in ("running", "unhealthy", "completed") else 0)
            for state in states:
                self.state.labels(name, state).set(1 if handle.state == state else 0)
        for name, stats in launcher.monitor.stats.items():
            self.healthy.labels(name).set(1 if stats.last_probe is None and launcher.services[name].state == "running"
                                          else 0)
            self.probes.labels(name).set(stats.probes)
            self.probe_failures.labels(name).set(stats.failures)
            new = min(stats.probes - self._observed.get(name, 0), len(stats.response_ms))
            for ms in list(stats.response_ms)[len(stats.response_ms) - new:] if new > 0 else []:
                self.probe.labels(name).observe(ms / 1000)
            self._observed[name] = stats.probes
            res = stats.resources
            if res is not None:
                self.rss.labels(name).set(res.rss_bytes)
                self.rss_peak.labels(name).set(res.rss_peak_bytes)
                self.cpu.labels(name).set(res.cpu_seconds)
                self.open_files.labels(name).set(res.open_files)
                self.threads.labels(name).set(res.threads)

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        return bytes(generate_latest(self.registry))


class ActionRequest(BaseModel):
    """Optional body of restart/stop: who asks and why (kept in the log)."""

    model_config = ConfigDict(extra="forbid")
    reason: str | None = Field(default=None, max_length=200)


def service_view(handle: Any) -> dict[str, Any]:
    view = {
        "name": handle.name, "state": handle.state, "url": handle.url, "pid": handle.pid,
        "runner": handle.runner, "level": handle.level, "startup_seconds": handle.startup_seconds,
    }
    stats = handle._launcher.monitor.stats.get(handle.name)
    if stats is not None:  # SPEC 10: what the health monitor saw
        times = sorted(stats.response_ms)
        view["health"] = {"probes": stats.probes, "failures": stats.failures,
                          "monitored": handle.config.health.monitored,
                          "last_probe": "ok" if stats.last_probe is None else (stats.last_probe or None),
                          "probe_ms_p50": round(times[len(times) // 2], 2) if times else None}
        if stats.resources is not None:
            view["resources"] = stats.resources.as_dict()
    return view


def create_app(env: Any, secret: str, metrics: Metrics) -> ASGIApp:
    """The API over a running :class:`~pytest_unified_launcher._environment.Environment`."""
    app = FastAPI(title="unified-launcher control API", docs_url=None, redoc_url=None, openapi_url=None)

    def handle_or_404(name: str) -> Any:
        if name not in env.launcher.services:
            raise HTTPException(status_code=404, detail=f"unknown service '{name}'; known: "
                                + ", ".join(sorted(env.launcher.services)))
        return env.launcher.services[name]

    @app.get("/services")
    async def list_services() -> dict[str, Any]:
        return {"status": env.launcher.get_status().value,
                "services": [service_view(h) for h in env.launcher.services.values()]}

    @app.get("/services/{name}")
    async def get_service(name: str) -> dict[str, Any]:
        return service_view(handle_or_404(name))

    @app.post("/services/{name}/restart")
    async def restart_service(name: str, body: ActionRequest | None = None) -> dict[str, Any]:
        handle_or_404(name)
        await env.restart([name], why=(body.reason if body else None) or "control API")
        return service_view(env.launcher.services[name])

    @app.post("/services/{name}/stop")
    async def stop_service(name: str, body: ActionRequest | None = None) -> dict[str, Any]:
        handle_or_404(name)
        await env.stop_one(name, why=(body.reason if body else None) or "control API")
        return service_view(env.launcher.services[name])

    @app.get("/metrics")
    async def get_metrics() -> PlainTextResponse:
        metrics.refresh(env.launcher)
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4")

    return Guard(app, secret)


def token_problem(header: str, secret: str) -> str | None:
    """Why an ``Authorization`` header does not grant access (None: it does)."""
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        return "missing bearer token"
    try:
        check_token(token.strip(), secret)
    except jwt.InvalidTokenError as exc:
        return f"invalid token: {exc}"
    return None


class _BodyTooLarge(Exception):
    """Raised into the app's read of a body that went past the cap (the 413 is already sent)."""


class Guard:
    """ASGI middleware in front of the API: the token first, then at most ``max_body`` bytes.

    FastAPI resolves a route's body before its dependencies, so a token check done as a
    dependency came after reading (and validating) a body of any size.
    """

    def __init__(self, app: ASGIApp, secret: str, *, max_body: int = MAX_BODY) -> None:
        self.app, self.secret, self.max_body = app, secret, max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # lifespan
            await self.app(scope, receive, send)
            return
        headers = {k.lower(): v for k, v in scope.get("headers", [])}
        problem = token_problem(headers.get(b"authorization", b"").decode("latin-1"), self.secret)
        if problem is not None:
            await _answer(send, 401, problem, [(b"www-authenticate", b"Bearer")])
            return
        length = headers.get(b"content-length")
        if length is not None and (not length.strip().isdigit() or int(length) > self.max_body):
            await _answer(send, 413, f"request body over {self.max_body} bytes")
            return
        received = 0
        refused = False

        async def capped_receive() -> Message:
            nonlocal received, refused
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body:  # streamed (chunked) past the cap
                    refused = True
                    await _answer(send, 413, f"request body over {self.max_body} bytes")
                    raise _BodyTooLarge
            return message

        async def guarded_send(message: Message) -> None:
            if not refused:  # after our 413 the app's own error response goes nowhere
                await send(message)

        try:
            await self.app(scope, capped_receive, guarded_send)
        except _BodyTooLarge:
            pass


async def _answer(send: Send, status: int, detail: str, extra: list[tuple[bytes, bytes]] | None = None) -> None:
    """A JSON ``{"detail": ...}`` response, as FastAPI gives its own errors."""
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               (b"connection", b"close"), *(extra or [])]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
