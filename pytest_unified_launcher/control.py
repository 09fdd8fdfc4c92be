"""The control API of ``unified-launcher up``: service list and state, restart/stop one, metrics.

FastAPI on 127.0.0.1 only. Every request needs ``Authorization: Bearer <JWT>``, an HS256 token
signed with a per-environment secret kept in the 0600 state file; a missing, expired, forged
or ``alg=none`` token is 401.
"""

from __future__ import annotations

import time
from typing import Any

import jwt
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel, ConfigDict, Field

ALGORITHM = "HS256"
ISSUER = "unified-launcher"


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
        self.probe = Histogram("launcher_health_probe_seconds", "Latency of the supervisor's health probes",
                               ["service"], buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1),
                               registry=self.registry)

    def refresh(self, launcher: Any) -> None:
        states = ("stopped", "starting", "running", "completed", "failed", "stopping")
        for name, handle in launcher.services.items():
            self.up.labels(name).set(1 if handle.state in ("running", "completed") else 0)
            for state in states:
                self.state.labels(name, state).set(1 if handle.state == state else 0)

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        return bytes(generate_latest(self.registry))


class ActionRequest(BaseModel):
    """Optional body of restart/stop: who asks and why (kept in the log)."""

    model_config = ConfigDict(extra="forbid")
    reason: str | None = Field(default=None, max_length=200)


def service_view(handle: Any) -> dict[str, Any]:
    return {
        "name": handle.name, "state": handle.state, "url": handle.url, "pid": handle.pid,
        "runner": handle.runner, "level": handle.level, "startup_seconds": handle.startup_seconds,
    }


def create_app(env: Any, secret: str, metrics: Metrics) -> FastAPI:
    """The API over a running :class:`~pytest_unified_launcher._environment.Environment`."""

    def authorize(request: Request) -> None:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise HTTPException(status_code=401, detail="missing bearer token",
                                headers={"WWW-Authenticate": "Bearer"})
        try:
            check_token(token, secret)
        except jwt.InvalidTokenError as exc:
            raise HTTPException(status_code=401, detail=f"invalid token: {exc}",
                                headers={"WWW-Authenticate": "Bearer"}) from None

    app = FastAPI(title="unified-launcher control API", dependencies=[Depends(authorize)],
                  docs_url=None, redoc_url=None, openapi_url=None)

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

    return app
