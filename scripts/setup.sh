#!/usr/bin/env bash
# Idempotent set-up on a fresh Debian machine: redis-server and PostgreSQL from Debian packages
# when missing, then a virtualenv in .venv with the project and everything its tests need.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
if ! command -v postgres >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
  need+=(postgresql)
fi
if [ ${#need[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  echo "setup: installing ${need[*]} from Debian packages" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
# pip's output is kept quiet unless it fails; this machine's pip config adds harmless
# "Location ... is ignored" warnings, which are dropped.
log=$(mktemp)
if ! .venv/bin/python -m pip install -q --disable-pip-version-check -e ".[test,example,cli]" >"$log" 2>&1; then
  cat "$log" >&2
  rm -f "$log"
  echo "setup: pip install failed (above)" >&2
  exit 1
fi
grep -v "is ignored: it is neither a file nor a directory" "$log" >&2 || true
rm -f "$log"
