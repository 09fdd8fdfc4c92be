"""Seconds from `kill -9` of a launcher to nothing left (the sentinel's reaping), median and max.

    .venv/bin/python benchmarks/sentinel.py [ROUNDS]

Each round starts `unified-launcher up` with one command service whose ``${tmp}`` is in
/dev/shm, kills `up` with SIGKILL once the service is up, and polls (every 5 ms) until the
service's process, its scratch folder, its port, the run file and up's port claims are all gone,
with no later run of anything.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PY = sys.executable
TCP = str(HERE.parent / "tests" / "apps" / "tcp_server.py")
sys.path.insert(0, str(HERE))
from _scratch import scratch_dir

from pytest_unified_launcher._ports import claimed, is_free

CONFIG = f"""
[launcher]
state_dir = "state"
[services.svc]
command = ["{PY}", "{TCP}", "${{port}}", "--term-file", "${{tmp}}/term"]
tmpfs = true
"""


def left(pid: int, root: Path, port: int, state: Path, owner: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            alive = fh.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        alive = False
    found = [f"pid {pid}"] if alive else []
    found += [str(root)] if root.exists() else []
    found += [f"port {port}"] if not is_free("127.0.0.1", port) else []
    found += [str(p) for p in (state / "run").glob("*.json")]
    found += [f"claim on port {port}"] if claimed(port) else []
    return found


def one_round() -> float:
    project = scratch_dir()
    (project / "launcher.toml").write_text(CONFIG)
    record = project / "state" / "up.json"
    out = open(project / "up.out", "wb")
    proc = subprocess.Popen([PY, "-m", "pytest_unified_launcher", "up"], cwd=project, stdin=subprocess.DEVNULL,
                            stdout=out, stderr=subprocess.STDOUT)
    out.close()
    deadline = time.monotonic() + 60
    svc = None
    while svc is None and time.monotonic() < deadline:
        try:
            svc = json.loads(record.read_text())["services"]["svc"]
        except (OSError, ValueError, KeyError):
            time.sleep(0.01)
    if svc is None:
        proc.kill()
        raise SystemExit(f"up never got ready: {(project / 'up.out').read_text()}")
    with open(f"/proc/{svc['pid']}/cmdline", "rb") as fh:
        argv = fh.read().decode().split("\0")
    root = Path(argv[argv.index("--term-file") + 1]).parent.parent
    t0 = time.perf_counter()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    while left(svc["pid"], root, svc["port"], project / "state", proc.pid):
        if time.perf_counter() - t0 > 30:
            os.killpg(svc["pid"], signal.SIGKILL)
            raise SystemExit(f"still left after 30 s: {left(svc['pid'], root, svc['port'], project / 'state', proc.pid)}")
        time.sleep(0.005)
    return time.perf_counter() - t0


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    times = [one_round() for _ in range(rounds)]
    print(f"| measure ({rounds} rounds) | median | max |\n|---|---|---|\n"
          f"| SIGKILL of `up` to nothing left (process, /dev/shm folder, port, run file, claims) "
          f"| {statistics.median(times):.3f} s | {max(times):.3f} s |")


if __name__ == "__main__":
    main()
