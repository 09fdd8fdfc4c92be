#!/usr/bin/env bash
# Idempotent set-up on a fresh Debian machine: redis-server, PostgreSQL and podman from Debian
# packages when missing, the local test images, then a virtualenv in .venv with the project and
# everything its tests need.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
# podman (with runc) for image services; docker is used when it is there and podman is not.
if ! command -v podman >/dev/null 2>&1 && ! command -v docker >/dev/null 2>&1; then
  need+=(podman runc)
fi
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

# crun, podman's default runtime on Debian 12, fails on cgroup v1 hosts ("cgroups in hybrid mode
# not supported"); runc works. Only written when there is no containers.conf at all.
if command -v podman >/dev/null 2>&1 && command -v runc >/dev/null 2>&1 && [ "$(id -u)" -eq 0 ] \
    && [ ! -e /etc/containers/containers.conf ] && [ "$(stat -fc %T /sys/fs/cgroup)" != cgroup2fs ]; then
  mkdir -p /etc/containers
  printf '[engine]\nruntime = "runc"\n' >/etc/containers/containers.conf
  echo "setup: wrote /etc/containers/containers.conf (runtime = runc: crun does not run on cgroup v1)" >&2
fi
# The images the tests and the example's `containers` profile run (no registry needed).
if command -v podman >/dev/null 2>&1 || command -v docker >/dev/null 2>&1; then
  ./images/build.sh
fi
