#!/usr/bin/env bash
# A bare install, as a user gets it: `pip install pytest-unified-launcher` with no extras and no
# pytest-xdist, into a fresh virtualenv. Then pytest in a project without a launcher config (the
# plugin must change nothing) and in a small launcher project in both modes.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 -m venv "$work/venv"
py="$work/venv/bin/python"
log="$work/pip.log"
if ! "$py" -m pip install -q --disable-pip-version-check "$repo" >"$log" 2>&1; then
  cat "$log" >&2; echo "bare-install: pip install failed (above)" >&2; exit 1
fi
if "$py" -c "import xdist" 2>/dev/null; then
  echo "bare-install: pytest-xdist got installed; this check needs an install without it" >&2; exit 1
fi

mkdir "$work/plain" "$work/launcher"
cat >"$work/plain/test_plain.py" <<'PY'
def test_plain():
    assert 1 + 1 == 2
PY
cat >"$work/launcher/launcher.toml" <<'TOML'
[services.api]
app = "api:app"
health = { http = "/health" }
TOML
cat >"$work/launcher/api.py" <<'PY'
from fastapi import FastAPI

app = FastAPI()


@app.get("/health")
def health() -> dict[str, str]:
    return {"status": "ok"}
PY
cat >"$work/launcher/test_api.py" <<'PY'
import json
import urllib.request

import pytest


@pytest.mark.services("api")
def test_health(services):
    with urllib.request.urlopen(services["api"].url + "/health") as response:
        assert json.load(response) == {"status": "ok"}
PY

run() {  # run DIR ARGS...: pytest must pass with exactly one test run, and no INTERNALERROR
  local dir=$1; shift
  local out
  out=$(cd "$dir" && "$py" -m pytest -p no:cacheprovider -q "$@" 2>&1) || { echo "$out" >&2; echo "bare-install: pytest $* in $(basename "$dir") failed (above)" >&2; exit 1; }
  if grep -q INTERNALERROR <<<"$out" || ! grep -q "1 passed" <<<"$out"; then
    echo "$out" >&2; echo "bare-install: pytest $* in $(basename "$dir") did not pass one test" >&2; exit 1
  fi
  echo "bare-install: $(basename "$dir") $* -> $(tail -n 1 <<<"$out")"
}
run "$work/plain"
run "$work/launcher" --launcher-mode=single_process
run "$work/launcher" --launcher-mode=multi_process
