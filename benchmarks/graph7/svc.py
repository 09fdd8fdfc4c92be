"""The benchmark apps: one FastAPI app per service, each taking its own delay to become ready."""

import asyncio
from contextlib import asynccontextmanager

from fastapi import FastAPI

from . import GRAPH


def make(delay: float) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI):  # type: ignore[no-untyped-def]
        await asyncio.sleep(delay)  # stands for the app's own start-up work
        yield

    app = FastAPI(lifespan=lifespan)

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    return app


for _name, (_delay, _deps) in GRAPH.items():
    globals()[_name] = make(_delay)
