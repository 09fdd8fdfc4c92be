"""The core engine's speed targets, each measured in this run (median of N repetitions).

    .venv/bin/python benchmarks/core.py

- import pytest_unified_launcher (timed inside a fresh interpreter)
- load and validate a 200-service config
- validate a dependency chain of 1,000 and of 10,000 services (the ratio shows it is linear)
- an in-process app ready after its dependency is ready (modules already imported)
- stopping 5 in-process apps
- stopping subprocess services, against their own exit time
"""

from __future__ import annotations

import asyncio
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


def median_ms(values: list[float]) -> str:
    return f"{statistics.median(values) * 1000:.1f} ms"


def bench_import(n: int = 9) -> str:
    """Timed inside each fresh interpreter: the import alone, not the interpreter's start."""
    code = "import time; t = time.perf_counter(); import pytest_unified_launcher; print(time.perf_counter() - t)"
    times = [float(subprocess.run([PY, "-c", code], check=True, capture_output=True, text=True).stdout)
             for _ in range(n)]
    return median_ms(times)


def bench_config(n: int = 15) -> str:
    from pytest_unified_launcher import load_config

    lines = ["[launcher]\nstate_dir = 'state'\n"]
    for i in range(200):
        deps = f'depends_on = ["s{i - 1}", "s{i // 2}"]\n' if i > 1 else ""
        lines.append(f'[services.s{i}]\ncommand = ["srv", "--port", "${{port}}"]\n{deps}'
                     f'env = {{ PEER = "${{services.s{max(i - 1, 0)}.url}}" }}\n' if i > 1 else
                     f'[services.s{i}]\ncommand = ["srv", "--port", "${{port}}"]\n')
    path = scratch_dir() / "launcher.toml"
    path.write_text("".join(lines))
    load_config(path)  # warm: pydantic builds its validators once per process
    times = []
    for _ in range(n):
        t = time.perf_counter()
        load_config(path)
        times.append(time.perf_counter() - t)
    return median_ms(times)


def _chain(n: int) -> dict[str, object]:
    """``n`` services in one dependency chain, each naming its predecessor's address."""
    services: dict[str, object] = {"s0": {"command": ["srv", "${port}"]}}
    for i in range(1, n):
        services[f"s{i}"] = {"command": ["srv", "${port}", f"${{services.s{i - 1}.url}}"],
                             "depends_on": [f"s{i - 1}"]}
    return {"launcher": {"state_dir": str(scratch_dir())}, "services": services}


def bench_chain(n: int = 3) -> str:
    """parse() of a 1k and a 10k chain (ports from a counter: no claims file in the way)."""
    from pytest_unified_launcher import parse

    def median_s(size: int) -> float:
        data = _chain(size)
        times = []
        for _ in range(n):
            ports = iter(range(20000, 65000))
            t = time.perf_counter()
            parse(data, source=HERE / "launcher.toml", environ={}, allocate_port=lambda a, b, ports=ports: next(ports),
                  tmp_root="/tmp/ul-bench")
            times.append(time.perf_counter() - t)
        return statistics.median(times)

    small, large = median_s(1_000), median_s(10_000)
    return f"{small * 1000:.0f} ms vs {large * 1000:.0f} ms (x{large / small:.1f})"


def _inprocess_config(n_apps: int) -> object:
    import graph7

    from pytest_unified_launcher import parse

    services: dict[str, dict[str, object]] = {"dep": {"command": [PY, TCP, "${port}"]}}
    names = list(graph7.GRAPH)[:n_apps]
    for name in names:
        services[name] = {"app": f"graph7.svc:{name}", "depends_on": ["dep"]}
    import socket

    def port(name: str, host: str) -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return int(s.getsockname()[1])

    return parse({"launcher": {"mode": "single_process", "state_dir": str(scratch_dir())}, "services": services},
                 source=HERE / "launcher.toml", allocate_port=port)


def bench_inprocess(n: int = 9) -> tuple[str, str]:
    import graph7
    import graph7.svc

    from pytest_unified_launcher import UnifiedLauncher

    # Zero-delay apps: what is measured is the launcher, not the apps' own start-up work.
    for name in graph7.GRAPH:
        setattr(graph7.svc, name, graph7.svc.make(0.0))
    after_dep, stop5 = [], []
    for _ in range(n):
        launcher = UnifiedLauncher(_inprocess_config(5))  # type: ignore[arg-type]

        async def run(launcher: UnifiedLauncher = launcher) -> None:
            await launcher.start()
            services = launcher.report()["runs"][0]["services"]
            dep_ready = services["dep"]["ready_at"]
            after_dep.append(max(s["ready_at"] for n_, s in services.items() if n_ != "dep") - dep_ready)
            t = time.perf_counter()
            await launcher._thread.call(launcher._stop([n_ for n_ in launcher.services if n_ != "dep"]))
            stop5.append(time.perf_counter() - t)
            await launcher.stop()

        asyncio.run(run())
    return median_ms(after_dep), median_ms(stop5)


def bench_subprocess_stop(n: int = 9) -> str:
    """Launcher stop time minus the process's own exit time (SIGTERM to exit, measured alone)."""
    import os
    import signal

    from pytest_unified_launcher import UnifiedLauncher, parse

    own, ours = [], []
    for _ in range(n):
        proc = subprocess.Popen([PY, TCP, "0"], stdout=subprocess.DEVNULL)
        time.sleep(0.3)
        t = time.perf_counter()
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait()
        own.append(time.perf_counter() - t)
        config = parse({"launcher": {"state_dir": str(scratch_dir())},
                        "services": {"s": {"command": [PY, TCP, "${port}"]}}},
                       source=HERE / "launcher.toml", allocate_port=lambda a, b: 0 or _free())
        launcher = UnifiedLauncher(config)

        async def run(launcher: UnifiedLauncher = launcher) -> None:
            await launcher.start()
            t = time.perf_counter()
            await launcher.stop()
            ours.append(time.perf_counter() - t)

        asyncio.run(run())
    return f"{median_ms(ours)} (the process's own exit: {median_ms(own)})"


def _free() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    rows = [
        ("import pytest_unified_launcher", bench_import(), "< 100 ms"),
        ("load + validate a 200-service config", bench_config(), "< 50 ms"),
        ("validate a 1k vs a 10k service chain", bench_chain(), "x10 (linear)"),
    ]
    after_dep, stop5 = bench_inprocess()
    rows.append(("in-process app ready after its dependency", after_dep, "< 15 ms"))
    rows.append(("stop 5 in-process apps", stop5, "< 30 ms"))
    rows.append(("stop a subprocess service", bench_subprocess_stop(), "own exit + 10 ms"))
    print("| measure (median) | this run | goal |\n|---|---|---|")
    for name, value, goal in rows:
        print(f"| {name} | {value} | {goal} |")


if __name__ == "__main__":
    main()
