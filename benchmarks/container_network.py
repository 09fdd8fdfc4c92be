"""Why image services keep podman's default bridge network: what slirp4netns would save at
teardown, and what it would cost every request a test makes.

    .venv/bin/python benchmarks/container_network.py [--rounds 5]

For each network (rootful podman's default bridge with netavark; ``slirp4netns`` with its own
port handler), one Redis container from the local image, ``--rm``, published on 127.0.0.1:
startup (from ``podman run`` to the first +PONG), teardown (SIGTERM to the container's process
until ``podman run`` has exited, i.e. podman's cleanup included), the round trip of a PING over
one connection (5000 of them) and 1 MB GETs a second. Medians over --rounds, interleaved.
Prints one markdown table.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

IMAGE = "localhost/ul-redis:1"
PORT = 16479
NETWORKS = {"bridge (default)": [], "slirp4netns": ["--network=slirp4netns:port_handler=slirp4netns"]}


def answered(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def traffic(port: int) -> tuple[float, float]:
    """Seconds per PING round trip; 1 MB GETs per second."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        t0 = time.perf_counter()
        for _ in range(5000):
            sock.sendall(b"PING\r\n")
            sock.recv(16)
        round_trip = (time.perf_counter() - t0) / 5000
        value = b"x" * 1_000_000
        sock.sendall(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1000000\r\n" + value + b"\r\n")
        sock.recv(16)
        t0 = time.perf_counter()
        for _ in range(10):
            sock.sendall(b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n")
            got = 0
            while got < len(value) + 12:
                got += len(sock.recv(1 << 20))
        return round_trip, 10 / (time.perf_counter() - t0)


def one_round(args: list[str], folder: Path) -> tuple[float, float, float, float]:
    pid_file = folder / "pid"
    pid_file.unlink(missing_ok=True)
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        ["podman", "run", "--rm", "--log-driver=none", f"--pidfile={pid_file}", "--ulimit=nofile=4096:4096",
         "--ulimit=nproc=4096:4096", *args, f"--publish=127.0.0.1:{PORT}:6379", IMAGE,
         "redis-server", "--port", "6379", "--protected-mode", "no", "--save", ""],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while not answered(PORT):
            if proc.poll() is not None:
                raise SystemExit(f"podman run {' '.join(args)} exited with {proc.returncode}")
            time.sleep(0.005)
        startup = time.perf_counter() - t0
        round_trip, gets = traffic(PORT)
        t0 = time.perf_counter()
        os.kill(int(pid_file.read_text()), signal.SIGTERM)
        proc.wait(30)
        teardown = time.perf_counter() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if answered(PORT):
        raise SystemExit(f"port {PORT} still answers after the teardown")
    return startup, teardown, round_trip, gets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    rounds = parser.parse_args().rounds
    results: dict[str, list[tuple[float, float, float, float]]] = {name: [] for name in NETWORKS}
    with tempfile.TemporaryDirectory() as folder:
        for args in NETWORKS.values():  # a warm-up each
            one_round(args, Path(folder))
        for _ in range(rounds):
            for name, args in NETWORKS.items():
                results[name].append(one_round(args, Path(folder)))
    print("| network | startup | teardown | PING round trip | 1 MB GETs/s | rounds |")
    print("|---|---|---|---|---|---|")
    for name, rows in results.items():
        up, down, trip, gets = (statistics.median(column) for column in zip(*rows, strict=True))
        print(f"| {name} | {up * 1000:.0f} ms | {down * 1000:.0f} ms | {trip * 1e6:.0f} us | {gets:.0f} | {rounds} |")


if __name__ == "__main__":
    main()
