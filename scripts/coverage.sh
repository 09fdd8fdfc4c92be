#!/usr/bin/env bash
# Branch coverage of pytest_unified_launcher over tests/, with every Python process the tests
# start (pytester subprocess runs, the CLI, app entry points, forked spawner children) measured
# too ([tool.coverage.run] patch in pyproject.toml); prints the combined figure per module.
#   ./scripts/coverage.sh [pytest args]      e.g. ./scripts/coverage.sh -x tests/test_cli.py
# COVERAGE_FLOOR=N fails the run below N percent in all, COVERAGE_MODULE_FLOOR=M when a module is below M.
set -uo pipefail
cd "$(dirname "$0")/.."
py="$PWD/.venv/bin/python"
data="$PWD/.coverage-data"
rm -rf "$data" && mkdir -p "$data"
export COVERAGE_FILE="$data/.coverage"   # absolute: children write here whatever their cwd
"$py" -m coverage run -m pytest -p no:cacheprovider "$@"
rc=$?
"$py" -m coverage combine -q --keep "$data" >/dev/null
"$py" -m coverage report --precision=1 ${COVERAGE_FLOOR:+--fail-under="$COVERAGE_FLOOR"}
report_rc=$?
if [ -n "${COVERAGE_MODULE_FLOOR:-}" ]; then  # and no module below this one
  "$py" -m coverage json -q -o "$data/coverage.json" &&
  "$py" - "$data/coverage.json" "$COVERAGE_MODULE_FLOOR" <<'PY' || report_rc=2
import json, sys
files = json.load(open(sys.argv[1]))["files"]
floor = float(sys.argv[2])
low = sorted((f["summary"]["percent_covered"], name) for name, f in files.items()
             if f["summary"]["percent_covered"] < floor)
for percent, name in low:
    print(f"coverage: {name} is at {percent:.1f}%, below the per-module floor of {floor:g}%")
sys.exit(1 if low else 0)
PY
fi
[ "$rc" -ne 0 ] && exit "$rc"
exit "$report_rc"
