#!/usr/bin/env bash
# The project's tests under other Pythons, each in its own .venv-X.Y. Which ones: $PYTHONS (paths
# or names), else python3.12, python3.13 and python3.14 where they run. Not part of
# ./scripts/test.sh (it would triple CI's time); run it after touching asyncio or process code.
#   PYTHONS="/root/.pyenv/versions/3.12.1/bin/python /root/.pyenv/versions/3.13.0/bin/python" ./scripts/test-pythons.sh
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh  # redis-server and PostgreSQL
found=0
for python in ${PYTHONS:-python3.12 python3.13 python3.14}; do
  version="$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)" || continue
  found=1
  venv=".venv-$version"
  [ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
  "$venv/bin/python" -m pip install -q --disable-pip-version-check -e ".[test,example,cli]" 2>&1 \
    | grep -v "is ignored: it is neither a file nor a directory" >&2 || true
  echo "== Python $version ($python)" >&2
  "$venv/bin/python" -m pytest -q -p no:cacheprovider "$@"
done
[ "$found" = 1 ] || { echo "test-pythons: none of ${PYTHONS:-python3.12 python3.13 python3.14} runs here; set PYTHONS" >&2; exit 1; }
