"""What ``[launcher] preload`` saves: 4 apps that import psycopg and redis, behind a slow dependency.

    .venv/bin/python benchmarks/preload.py [--runs 10] [--rounds 2]

Two configs differ only in ``preload = ["psycopg", "redis"]``: a TCP server that takes 0.8 s to
listen, then 4 FastAPI apps that need it (multi_process, pre-imported spawner). The helper
imports the preload modules while the dependency starts, so each forked app skips ~0.14 s of
imports. Each round runs ``unified-launcher bench --runs N`` for both configs, alternating (every
run is a cold start with a fresh helper). Prints one markdown table of the medians over rounds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TCP = ROOT / "tests" / "apps" / "tcp_server.py"
sys.path.insert(0, str(ROOT / "benchmarks"))
from _scratch import scratch_dir

APP = '''
import psycopg  # noqa: F401  heavy third-party imports, as real apps have
import redis  # noqa: F401
from fastapi import FastAPI

app = FastAPI()


@app.get("/health")
def health() -> dict[str, str]:
    return {"ok": "yes"}
'''


def config(preload: bool) -> str:
    lines = ["[launcher]", 'mode = "multi_process"']
    if preload:
        lines.append('preload = ["psycopg", "redis"]')
    lines += ["[services.gate]", f'command = ["{sys.executable}", "{TCP}", "${{port}}", "--delay", "0.8"]']
    for i in range(1, 5):
        lines += [f"[services.app{i}]", 'app = "heavy_app:app"', 'depends_on = ["gate"]', 'health = { http = "/health" }']
    return "\n".join(lines) + "\n"


def bench(folder: Path, runs: int) -> dict[str, float]:
    out = folder / "bench.json"
    subprocess.run([sys.executable, "-m", "pytest_unified_launcher", "bench", "--runs", str(runs), "--json", str(out)],
                   cwd=folder, check=True, capture_output=True)
    summary = json.loads(out.read_text())["summary"]
    apps = [summary["services"][f"app{i}"]["p50"] for i in range(1, 5)]
    return {"p50": summary["total"]["p50"], "p95": summary["total"]["p95"], "app": statistics.median(apps)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    base = scratch_dir()
    folders = {}
    for name, preload in (("with preload", True), ("without", False)):
        folder = base / name.replace(" ", "-")
        folder.mkdir()
        (folder / "heavy_app.py").write_text(APP)
        (folder / "launcher.toml").write_text(config(preload))
        folders[name] = folder
    results: dict[str, list[dict[str, float]]] = {name: [] for name in folders}
    for r in range(args.rounds):
        for name, folder in folders.items():
            results[name].append(bench(folder, args.runs))
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr, flush=True)
    print("| config | total up P50 | total up P95 | each app's startup (P50) |")
    print("|---|---|---|---|")
    for name, rows in results.items():
        def med(key: str, rows: list[dict[str, float]] = rows) -> float:
            return statistics.median(row[key] for row in rows)

        print(f"| {name} | {med('p50'):.3f} s | {med('p95'):.3f} s | {med('app'):.3f} s |")


if __name__ == "__main__":
    main()
