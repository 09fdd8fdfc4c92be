"""A three-line Flask app (WSGI), and a factory returning one."""

from __future__ import annotations

import os

from flask import Flask

app = Flask(__name__)


@app.get("/health")
def health() -> dict[str, object]:
    return {"ok": True, "kind": "flask", "pid": os.getpid(), "greeting": os.environ.get("GREETING")}


def create_app() -> Flask:
    return app
