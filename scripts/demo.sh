#!/usr/bin/env bash
# The main job: the example backend (PostgreSQL + Redis + gateway + agent) end to end.
# Sets up the machine, checks the config, starts the environment in the background, writes an
# item through the gateway and reads it back through the agent, stops it, then benchmarks
# cold starts in both modes and runs the example's integration tests.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
cd example_project

echo "== unified-launcher check"
unified-launcher check

echo; echo "== unified-launcher up --detach"
unified-launcher up --detach
trap 'unified-launcher down >/dev/null 2>&1 || true' EXIT

echo; echo "== a request through the environment"
python - <<'PY'
import json, urllib.request
state = json.load(open(".launcher/up.json"))
gw, agent = state["services"]["api_gateway"]["url"], state["services"]["agent"]["url"]
req = urllib.request.Request(gw + "/items", data=json.dumps({"name": "demo lamp"}).encode(),
                             headers={"Content-Type": "application/json"}, method="POST")
item = json.load(urllib.request.urlopen(req))
print("POST", gw + "/items", "->", item)
for _ in range(2):
    print("GET ", agent + f"/describe/{item['id']}", "->", json.load(urllib.request.urlopen(agent + f"/describe/{item['id']}")))
PY

echo; echo "== unified-launcher status"
unified-launcher status
echo; echo "== unified-launcher down"
unified-launcher down
trap - EXIT

echo; echo "== cold starts, single_process (apps in-process)"
unified-launcher bench --runs 10 --svg .launcher/waterfall-single.svg
echo; echo "== cold starts, multi_process (profile ci)"
unified-launcher bench --runs 10 --profile ci --svg .launcher/waterfall-multi.svg

echo; echo "== the example's integration tests"
python -m pytest -p no:cacheprovider
