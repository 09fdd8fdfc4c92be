"""The agent: answers questions about items by calling the gateway at GATEWAY_URL."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from typing import Any

from fastapi import FastAPI, HTTPException

app = FastAPI(title="agent")


@app.get("/health")
def health() -> dict[str, str]:
    return {"status": "ok"}


@app.get("/describe/{item_id}")
def describe(item_id: int) -> dict[str, Any]:
    url = f"{os.environ['GATEWAY_URL']}/items/{item_id}"
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            item = json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        raise HTTPException(status_code=exc.code, detail="the gateway said: " + exc.read().decode()) from None
    return {"answer": f"item {item['id']} is called {item['name']!r}", "via": url, "source": item["source"]}
