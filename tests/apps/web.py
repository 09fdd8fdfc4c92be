"""Small FastAPI apps for the tests."""

from __future__ import annotations

import os
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, FastAPI

LIFESPAN_EVENTS: list[str] = []


@asynccontextmanager
async def lifespan(app: FastAPI) -> Any:
    LIFESPAN_EVENTS.append("startup")
    yield
    LIFESPAN_EVENTS.append("shutdown")


app = FastAPI(lifespan=lifespan)


@app.get("/health")
def health() -> dict[str, Any]:
    return {"ok": True}


@app.get("/env/{name}")
def env(name: str) -> dict[str, Any]:
    return {"value": os.environ.get(name), "pid": os.getpid()}


router = APIRouter()


@router.get("/health")
def router_health() -> dict[str, str]:
    return {"kind": "router"}


def create_app() -> FastAPI:
    made = FastAPI()

    @made.get("/health")
    def made_health() -> dict[str, str]:
        return {"kind": "factory"}

    return made




@asynccontextmanager
async def _hanging_lifespan(app: FastAPI) -> Any:
    import asyncio

    await asyncio.sleep(60)  # a startup that waits for something that never comes
    yield


@asynccontextmanager
async def _failing_lifespan(app: FastAPI) -> Any:
    raise RuntimeError("cannot reach the database")
    yield


hanging = FastAPI(lifespan=_hanging_lifespan)
failing = FastAPI(lifespan=_failing_lifespan)


_background: set[Any] = set()


async def _fatal() -> None:
    import sys

    sys.exit("fatal: lost the database")  # from a background task: escapes asyncio's loop


@app.get("/exit-in-background")
async def exit_in_background() -> dict[str, bool]:
    import asyncio

    task = asyncio.get_running_loop().create_task(_fatal())
    _background.add(task)
    return {"scheduled": True}
