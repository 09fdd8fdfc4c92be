"""Startup and teardown of one 7-service, 3-level graph of uvicorn apps, by each contestant.

    .venv/bin/python benchmarks/peers.py --rounds 10

Contestants (interleaved round by round, so machine noise hits all alike):
  launcher-multi      this launcher, multi_process (each app its own process), apps forked from
                      the pre-imported spawner (the default)
  launcher-multi-plain  the same with spawner = "plain": a fresh interpreter per app
  launcher-single     this launcher, single_process (apps in-process)
  asyncio-by-hand     a hand-written asyncio script: spawn each service once its own
                      dependencies answer, poll /health every 10 ms, SIGTERM everything at once
  mirakuru-serial     mirakuru HTTPExecutor, one by one in dependency order (as its users write it)
  mirakuru-threads    mirakuru HTTPExecutor, one thread per service of a level, level by level
  xprocess            pytest-xprocess ProcessStarter with a log pattern, one by one

Level 0 apps take 0.3 s to become ready, level 1 0.2 s, level 2 0.1 s (their lifespan sleeps).
"critical path" is, per level, the slowest service's own spawn-to-ready time (measured by the
hand-written script), summed: the floor for plain spawning. "own CPU while up" is the CPU the
contestant's own process burnt meanwhile (its polling and bookkeeping, competing with the
services for the cores). Prints one markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import types
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _scratch import scratch_dir
from graph7 import GRAPH, LEVELS

PY = sys.executable
MARK = "UL_BENCH_PEERS"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def uvicorn_argv(name: str, port: int) -> list[str]:
    return [PY, "-m", "uvicorn", f"graph7.svc:{name}", "--host", "127.0.0.1", "--port", str(port),
            "--log-level", "info", "--app-dir", str(HERE)]


def env_for(name: str) -> dict[str, str]:
    return {**os.environ, MARK: "1"}


def leftovers() -> int:
    """Benchmark processes still alive (they carry the MARK variable)."""
    count = 0
    for proc in psutil.process_iter():
        try:
            if proc.pid != os.getpid() and MARK in proc.environ() and proc.status() != psutil.STATUS_ZOMBIE:
                count += 1
        except psutil.Error:
            continue
    return count


def kill_leftovers() -> None:
    for proc in psutil.process_iter():
        try:
            if proc.pid != os.getpid() and MARK in proc.environ():
                proc.kill()
        except psutil.Error:
            continue


def cpu_seconds() -> float:
    """CPU time this process (the contestant's own launcher code, not its services) has used."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def healthy(port: int) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as r:
            return r.status == 200
    except OSError:
        return False


# --------------------------------------------------------------------------- contestants


Result = tuple[float, float, float, float]  # up, down, critical path (by-hand only), CPU while up


def by_hand() -> Result:
    """The hand-written asyncio script."""

    async def main() -> Result:
        ports = {n: free_port() for n in GRAPH}
        procs: dict[str, asyncio.subprocess.Process] = {}
        ready: dict[str, asyncio.Event] = {n: asyncio.Event() for n in GRAPH}
        own: dict[str, float] = {}

        async def poll(port: int) -> None:
            while True:
                try:
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                    writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                    await writer.drain()
                    status = await reader.readline()
                    writer.close()
                    if b" 200 " in status:
                        return
                except OSError:
                    pass
                await asyncio.sleep(0.01)

        async def one(name: str) -> None:
            for dep in GRAPH[name][1]:
                await ready[dep].wait()
            t = time.perf_counter()
            procs[name] = await asyncio.create_subprocess_exec(
                *uvicorn_argv(name, ports[name]), env=env_for(name), stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL, start_new_session=True)
            await poll(ports[name])
            own[name] = time.perf_counter() - t
            ready[name].set()

        c0, t0 = cpu_seconds(), time.perf_counter()
        await asyncio.gather(*(one(n) for n in GRAPH))
        up, cpu = time.perf_counter() - t0, cpu_seconds() - c0
        t1 = time.perf_counter()
        for p in procs.values():
            os.killpg(p.pid, signal.SIGTERM)
        await asyncio.gather(*(p.wait() for p in procs.values()))
        down = time.perf_counter() - t1
        critical = sum(max(own[n] for n in level) for level in LEVELS)
        return up, down, critical, cpu

    return asyncio.run(main())


def launcher(mode: str, spawner: str = "preimport") -> Result:
    from pytest_unified_launcher import UnifiedLauncher, parse

    services = {
        name: {"app": f"graph7.svc:{name}", "depends_on": list(deps), "env": {MARK: "1"},
               "health": {"http": "/health"}}
        for name, (delay, deps) in GRAPH.items()
    }
    state = str(scratch_dir())
    config = parse({"launcher": {"mode": mode, "state_dir": state, "spawner": spawner}, "services": services},
                   source=HERE / "launcher.toml", allocate_port=lambda n, h: free_port())
    ul = UnifiedLauncher(config)

    async def run() -> tuple[float, float, float]:
        c0, t0 = cpu_seconds(), time.perf_counter()
        await ul.start()
        up, cpu = time.perf_counter() - t0, cpu_seconds() - c0
        t1 = time.perf_counter()
        await ul.stop()
        return up, time.perf_counter() - t1, cpu

    up, down, cpu = asyncio.run(run())
    # In single_process mode the apps run in this process: its CPU is theirs, not overhead.
    return up, down, float("nan"), cpu if mode == "multi_process" else float("nan")


def mirakuru_run(threaded: bool) -> Result:
    from mirakuru import HTTPExecutor

    ports = {n: free_port() for n in GRAPH}
    execs = {n: HTTPExecutor(uvicorn_argv(n, ports[n]), url=f"http://127.0.0.1:{ports[n]}/health",
                             timeout=60, envvars={MARK: "1"}, shell=False, method="GET")
             for n in GRAPH}
    c0, t0 = cpu_seconds(), time.perf_counter()
    if threaded:
        for level in LEVELS:
            threads = [threading.Thread(target=execs[n].start) for n in level]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
    else:
        for level in LEVELS:
            for n in level:
                execs[n].start()
    up, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    t1 = time.perf_counter()
    for level in reversed(LEVELS):
        for n in level:
            execs[n].stop()
    return up, time.perf_counter() - t1, float("nan"), cpu


def xprocess_run() -> Result:
    from _pytest._py.path import LocalPath
    from xprocess import ProcessStarter, XProcess

    root = LocalPath(str(scratch_dir()))
    xp = XProcess(types.SimpleNamespace(), root)
    ports = {n: free_port() for n in GRAPH}
    c0, t0 = cpu_seconds(), time.perf_counter()
    for level in LEVELS:
        for n in level:
            class Starter(ProcessStarter):
                pattern = "Application startup complete"
                args = uvicorn_argv(n, ports[n])
                env = env_for(n)
                timeout = 60
                terminate_on_interrupt = True

            xp.ensure(n, Starter)
    up, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    t1 = time.perf_counter()
    for level in reversed(LEVELS):
        for n in level:
            xp.getinfo(n).terminate()
    return up, time.perf_counter() - t1, float("nan"), cpu


CONTESTANTS = {
    "launcher-multi": lambda: launcher("multi_process"),
    "launcher-multi-plain": lambda: launcher("multi_process", "plain"),
    "launcher-single": lambda: launcher("single_process"),
    "asyncio-by-hand": by_hand,
    "mirakuru-serial": lambda: mirakuru_run(False),
    "mirakuru-threads": lambda: mirakuru_run(True),
    "xprocess": xprocess_run,
}


def run_isolated(name: str) -> Result:
    """One contestant's round in a fresh interpreter (so single_process imports are cold too)."""
    code = (f"import sys; sys.path.insert(0, {str(HERE)!r}); import peers; "
            f"print(*peers.CONTESTANTS[{name!r}]())")
    out = subprocess.run([PY, "-c", code], capture_output=True, text=True, timeout=300, cwd=HERE)
    if out.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{out.stderr[-2000:]}")
    up, down, crit, cpu = (float(x) for x in out.stdout.split()[-4:])
    return up, down, crit, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--only", default=",".join(CONTESTANTS))
    args = parser.parse_args()
    names = args.only.split(",")
    ups: dict[str, list[float]] = {n: [] for n in names}
    downs: dict[str, list[float]] = {n: [] for n in names}
    cpus: dict[str, list[float]] = {n: [] for n in names}
    left: dict[str, int] = dict.fromkeys(names, 0)
    critical: list[float] = []
    for r in range(args.rounds):
        for name in names:
            up, down, crit, cpu = run_isolated(name)
            time.sleep(0.3)
            left[name] += leftovers()
            kill_leftovers()
            ups[name].append(up)
            downs[name].append(down)
            cpus[name].append(cpu)
            if name == "asyncio-by-hand":
                critical.append(crit)
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{n} {ups[n][-1]:.2f}s" for n in names),
              file=sys.stderr, flush=True)

    def p95(v: list[float]) -> float:
        return statistics.quantiles(v, n=100, method="inclusive")[94] if len(v) > 1 else v[0]

    crit_median = statistics.median(critical) if critical else float("nan")
    print(f"\ncritical path of plain spawning (median of {len(critical)}): {crit_median:.2f} s\n")
    print("| contestant | up median | up P95 | over critical path | own CPU while up | teardown median "
          "| processes left |")
    print("|---|---|---|---|---|---|---|")
    for name in names:
        med = statistics.median(ups[name])
        cpu = statistics.median(cpus[name])
        shown_cpu = "n/a (apps in-process)" if cpu != cpu else f"{cpu:.3f} s"
        print(f"| {name} | {med:.2f} s | {p95(ups[name]):.2f} s | {med - crit_median:+.2f} s "
              f"({med / crit_median:.2f}x) | {shown_cpu} | {statistics.median(downs[name]):.3f} s | {left[name]} |")


if __name__ == "__main__":
    main()
