#!/usr/bin/env bash
# The whole test suite: set-up, the project's tests, then the example backend's end-to-end
# tests in both modes and in both xdist modes. Any failure (or pytest exit 5, no tests) fails.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
py="$PWD/.venv/bin/python"
export PATH="$PWD/.venv/bin:$PATH"
"$py" -m pytest "$@"
cd example_project
"$py" -m pytest -p no:cacheprovider                                  # single_process
"$py" -m pytest -p no:cacheprovider --launcher-profile=ci            # multi_process
"$py" -m pytest -p no:cacheprovider -n 2                              # xdist, shared
"$py" -m pytest -p no:cacheprovider -n 2 --launcher-xdist=per_worker  # xdist, per worker
