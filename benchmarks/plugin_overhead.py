"""What the plugin costs pytest.

    .venv/bin/python benchmarks/plugin_overhead.py

1. `pytest --collect-only` on 50 tests in a project without services, with the plugin and with
   `-p no:unified_launcher`: median of 9 alternating runs each.
2. The per-test cost once services run: 300 tests marked `services("plain")` using the
   `services` fixture, against the same 300 tests unmarked, minus the one-off startup.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

PY = sys.executable
TCP = str(Path(__file__).resolve().parent.parent / "tests" / "apps" / "tcp_server.py")
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _scratch import scratch_dir


def timed(args: list[str], cwd: Path) -> float:
    t = time.perf_counter()
    subprocess.run([PY, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args], cwd=cwd,
                   check=True, capture_output=True)
    return time.perf_counter() - t


def collect_only() -> str:
    root = scratch_dir()
    (root / "test_many.py").write_text("".join(f"def test_{i}():\n    pass\n" for i in range(50)))
    with_plugin, without = [], []
    for _ in range(9):
        with_plugin.append(timed(["--collect-only"], root))
        without.append(timed(["--collect-only", "-p", "no:unified_launcher"], root))
    a, b = statistics.median(with_plugin), statistics.median(without)
    return f"| collect-only, 50 tests, no services | {a * 1000:.0f} ms | {b * 1000:.0f} ms | {100 * (a - b) / b:+.1f}% | <= +10% |"


def per_test() -> str:
    root = scratch_dir()
    (root / "launcher.toml").write_text(f'[services.plain]\ncommand = ["{PY}", "{TCP}", "${{port}}"]\n')
    body = "".join(f"@pytest.mark.services('plain')\ndef test_{i}(services):\n    pass\n" for i in range(300))
    (root / "test_marked.py").write_text("import pytest\n" + body)
    (root / "test_plain.py").write_text("import pytest\n" + body.replace("@pytest.mark.services('plain')\n", "")
                                        .replace("(services)", "()"))
    marked, plain, startup = [], [], []
    for _ in range(5):
        marked.append(timed(["test_marked.py", "--launcher-report=r.json"], root))
        startup.append(json.loads((root / "r.json").read_text())["runs"][0]["total_startup_seconds"])
        plain.append(timed(["test_plain.py"], root))
    overhead = (statistics.median(marked) - statistics.median(plain) - statistics.median(startup)) / 300
    return f"| a test whose services already run | {overhead * 1e6:.0f} µs per test | | | < 1 ms |"


def main() -> None:
    print("| measure | with plugin | without | difference | goal |\n|---|---|---|---|---|")
    print(collect_only())
    print(per_test())


if __name__ == "__main__":
    main()
