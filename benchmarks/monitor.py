"""The health monitor's cost and speed (SPEC 10), measured on real processes.

    .venv/bin/python benchmarks/monitor.py [--seconds 60] [--deaths 10] [--hangs 3]

1. Own CPU: 10 services (5 HTTP, probed through the shared aiohttp session; 5 TCP), default
   interval (2 s) and resource sampling, watched for --seconds; the launcher process's CPU over
   that window (every thread: the monitor runs on the launcher's loop thread), against the same
   window with the monitor off (interval = 0 and no sampling: the idle launcher's floor).
   Reported per service-hour and as a share of one core for the 10. Goal: < 0.1% of a core.
   Beside it the floor: the same probes and samples by a hand-written loop (one task, the same
   aiohttp session settings, raw connects, psutil), so what is the monitor's own overhead and
   what is the cost of a probe on this machine can be told apart.
2. Death: a service SIGKILLed, time until the `died` event reaches a subscriber (by the exit
   notification, a pidfd; no probe involved: interval = 1 hour). Goal: <= 50 ms.
3. Hang: a service that stops answering (default interval 2 s, threshold 3, timeout 1 s), time
   until `unhealthy`. Goal: <= interval x threshold + 1 probe timeout = 7 s.
Prints one markdown table.
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
from pytest_unified_launcher import UnifiedLauncher, load_config
from pytest_unified_launcher._monitor import RESOURCE_SECONDS

PY = sys.executable
FLAKY = ROOT / "tests" / "apps" / "flaky_http.py"
TCP = ROOT / "tests" / "apps" / "tcp_server.py"


def config_text(health: str, *, http: int = 5, tcp: int = 5) -> str:
    lines = ['[launcher]', 'state_dir = "state"']
    for i in range(http):
        lines += [f"[services.http{i}]", f'command = ["{PY}", "{FLAKY}", "${{port}}"]',
                  f'health = {{ http = "/health"{health} }}']
    for i in range(tcp):
        lines += [f"[services.tcp{i}]", f'command = ["{PY}", "{TCP}", "${{port}}"]',
                  f'health = {{ tcp = true{health} }}']
    return "\n".join(lines) + "\n"


def own_cpu(health: str, seconds: float, *, sampling: bool) -> tuple[float, int]:
    """CPU seconds of this process over ``seconds`` with the 10 services up; and probes run."""
    import pytest_unified_launcher._monitor as monitor_mod

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "launcher.toml"
        path.write_text(config_text(health))
        launcher = UnifiedLauncher(load_config(path, environ={}))
        saved = monitor_mod.RESOURCE_SECONDS
        monitor_mod.RESOURCE_SECONDS = RESOURCE_SECONDS if sampling else 10 ** 6
        try:
            launcher.start_blocking()
            time.sleep(3)  # past the first ticks (the aiohttp import, the first samples)
            probes0 = sum(s.probes for s in launcher.monitor.stats.values())
            t0 = time.process_time()
            time.sleep(seconds)
            cpu = time.process_time() - t0
            probes = sum(s.probes for s in launcher.monitor.stats.values()) - probes0
        finally:
            monitor_mod.RESOURCE_SECONDS = saved
            launcher.stop_blocking()
    return cpu, probes


def by_hand_cpu(seconds: float) -> float:
    """CPU seconds of this process over ``seconds`` while a hand-written loop does the monitor's
    work for the same 10 services (started with the monitor off): every 2 s on a grid, 5 GETs
    through one aiohttp session and 5 TCP connects at once; every 10 s a psutil sample of each."""
    import asyncio
    import socket

    import aiohttp
    import psutil

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "launcher.toml"
        path.write_text(config_text(", interval = 0"))
        launcher = UnifiedLauncher(load_config(path, environ={}))
        handles = launcher.start_blocking()
        try:
            urls = [f"{h.url}/health" for n, h in handles.items() if n.startswith("http")]
            addrs = [("127.0.0.1", h.port) for n, h in handles.items() if n.startswith("tcp")]
            procs = [psutil.Process(h.pid) for h in handles.values() if h.pid]

            async def watch() -> float:
                session = aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar(), auto_decompress=False)
                timeout = aiohttp.ClientTimeout(total=1.0)

                async def get(url: str) -> None:
                    async with session.get(url, timeout=timeout) as response:
                        await response.read()

                def connect(addr: tuple[str, int]) -> None:
                    with socket.socket() as sock:
                        sock.setblocking(False)
                        sock.connect_ex(addr)

                def sample() -> None:
                    for proc in procs:
                        with proc.oneshot():
                            proc.memory_info(), proc.cpu_times(), proc.num_threads(), proc.num_fds()

                loop = asyncio.get_running_loop()
                t0 = cpu0 = 0.0
                tick = start = math.floor(loop.time() / 2) * 2
                while True:
                    tick += 2
                    await asyncio.sleep(tick - loop.time())
                    if tick - start == 4:  # warmed up (the aiohttp import, the connections)
                        t0, cpu0 = loop.time(), time.process_time()
                    if t0 and loop.time() - t0 >= seconds:
                        cpu = time.process_time() - cpu0
                        await session.close()
                        return cpu
                    if (tick - start) % 10 == 0:
                        sample()
                    for addr in addrs:
                        connect(addr)
                    await asyncio.gather(*(get(url) for url in urls))

            return asyncio.run(watch())
        finally:
            launcher.stop_blocking()


class FirstEvent:
    """A subscriber that notes when the first event of ``kind`` arrived."""

    def __init__(self, kind: str) -> None:
        self.kind, self.seen, self.at = kind, threading.Event(), 0.0

    def __call__(self, event: object) -> None:
        if getattr(event, "kind", None) == self.kind and not self.seen.is_set():
            self.at = time.monotonic()
            self.seen.set()


def event_latency(kind: str, runs: int, health: str, act: str) -> list[float]:
    """Seconds from the act (a SIGKILL, a hang) to the ``kind`` event, ``runs`` times."""
    out = []
    for _ in range(runs):
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "launcher.toml"
            path.write_text(config_text(health, http=1, tcp=0))
            launcher = UnifiedLauncher(load_config(path, environ={}))
            first = FirstEvent(kind)
            launcher.subscribe(first)
            try:
                handle = launcher.start_blocking()["http0"]
                time.sleep(0.3)
                t0 = time.monotonic()
                if act == "kill":
                    assert handle.pid is not None
                    os.kill(handle.pid, signal.SIGKILL)
                else:
                    urllib.request.urlopen(f"{handle.url}/mode/hang", timeout=5).read()
                if not first.seen.wait(30):
                    raise SystemExit(f"no {kind} event within 30 s")
                out.append(first.at - t0)
            finally:
                launcher.stop_blocking()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--deaths", type=int, default=10)
    parser.add_argument("--hangs", type=int, default=3)
    args = parser.parse_args()

    off, _ = own_cpu(", interval = 0", args.seconds, sampling=False)
    on, probes = own_cpu("", args.seconds, sampling=True)
    by_hand = by_hand_cpu(args.seconds)
    monitor_cpu = max(0.0, on - off)
    floor_cpu = max(0.0, by_hand - off)
    per_service_hour = monitor_cpu / 10 / (args.seconds / 3600)
    core_share = monitor_cpu / args.seconds * 100
    deaths = event_latency("died", args.deaths, ", interval = 3600", "kill")
    hangs = event_latency("unhealthy", args.hangs, "", "hang")

    print(f"10 services watched {args.seconds:g} s at the default interval: {probes} probes")
    print()
    print("| measure | this run | goal |")
    print("|---|---|---|")
    print(f"| launcher CPU, monitor on (10 services) | {on:.3f} s in {args.seconds:g} s | |")
    print(f"| launcher CPU, monitor off (interval = 0, no sampling) | {off:.3f} s | |")
    print(f"| launcher CPU, monitor off + a hand-written loop doing its work | {by_hand:.3f} s | |")
    print(f"| the monitor's CPU / the hand-written loop's (both minus off) | "
          f"{monitor_cpu / floor_cpu if floor_cpu else float('nan'):.2f}x | |")
    print(f"| the hand-written loop's share of one core (the floor here) | {floor_cpu / args.seconds * 100:.3f}% | |")
    print(f"| the monitor's own CPU per service-hour | {per_service_hour:.2f} s | |")
    print(f"| the monitor's share of one core, 10 services | {core_share:.3f}% | < 0.1% |")
    print(f"| death -> `died` event, median / max of {len(deaths)} | {statistics.median(deaths) * 1000:.1f} ms / "
          f"{max(deaths) * 1000:.1f} ms | <= 50 ms |")
    print(f"| hang -> `unhealthy` event, median / max of {len(hangs)} | {statistics.median(hangs):.2f} s / "
          f"{max(hangs):.2f} s | <= 7 s (2 s x 3 + 1 s) |")


if __name__ == "__main__":
    main()
