"""Startup and teardown of one Redis container (SPEC 8): this launcher, a hand-written podman
loop and testcontainers-python, side by side in one run, on the same local image.

    .venv/bin/python benchmarks/containers.py [--rounds 10] [--json PATH]

Contestants (interleaved round by round, a b c a b c ..., so machine noise hits all alike; one
warm-up round first, not counted), each starting localhost/ul-redis:1 cold (a new container)
with the lowered ulimits this machine needs (nofile and nproc 4096):
  launcher        ``UnifiedLauncher(load_config(launcher.toml, environ={}))`` (a fresh temp
                  state_dir each round), ``start_blocking(["cache"])`` with health = { tcp = true },
                  pull = "never"; teardown ``stop_blocking()`` (the launcher's graceful stop:
                  its stop signal to the container's process, then the attached ``podman run
                  --rm`` removes the container and exits), then ``close()``
  hand-loop       ``podman run -d --rm --name X --ulimit .. -p 127.0.0.1:PORT:6379 IMAGE``, then
                  a raw-socket PING every 5 ms until +PONG; teardown ``podman rm -f -t 10 X`` (what
                  a careful user writes: a graceful stop, then removal; redis exits at once on
                  SIGTERM, so the 10 s grace costs nothing)
  testcontainers  testcontainers-python through podman's Docker-compatible API (``podman system
                  service --time=0 unix:///tmp/ul-bench-podman.sock``, started for the run and
                  stopped at its end; its own start is not timed), DOCKER_HOST pointing there,
                  TESTCONTAINERS_RYUK_DISABLED=true (Ryuk's image cannot be pulled: no registry)
                  and TESTCONTAINERS_CONNECTION_MODE=docker_host (see below).
                  ``DockerContainer(IMAGE).with_exposed_ports(6379).with_kwargs(ulimits=[..])``,
                  ``.start()``, then the same raw-socket PING loop as hand-loop on
                  ``get_container_host_ip()``:``get_exposed_port(6379)`` (a generic container and
                  our own wait, not testcontainers' RedisContainer: that one needs the redis
                  client package, which this project does not use); teardown ``.stop()`` (a
                  forced removal through the API)

Startup: time.perf_counter from the request (for the launcher: from load_config; for
testcontainers: from building the DockerContainer, which opens its own Docker client: docker-py
asks the API's /version first, and podman 4.3 answers that in ~0.5 s, most of testcontainers'
startup here) to the first +PONG on the published port. Teardown: from the stop request until
the call returns. After each teardown the port must be free and ``podman ps -a --filter ...``
empty, or the run stops loudly.

Goals (ratios of medians): launcher startup / testcontainers startup <= 0.6; launcher startup /
hand-loop startup <= 1.05; launcher teardown / testcontainers teardown <= 0.5.

testcontainers is not a dependency of the project: if it is not importable its column is
skipped (pip install -e ".[bench]"). TESTCONTAINERS_CONNECTION_MODE=docker_host: inside a
container (this machine has /.dockerenv) testcontainers 4.x would pick its "gateway_ip" mode and
fail on podman 4.3's API (KeyError 'HostConfig' in its network lookup); docker_host (connect to
localhost and the mapped port) is what it uses by itself on an ordinary host.

Prints the command line, podman's version and runtime, nproc, then one markdown table and the
goal ratios; --json PATH writes the raw numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))
from _scratch import scratch_dir

from pytest_unified_launcher import UnifiedLauncher, load_config

IMAGE = "localhost/ul-redis:1"
PORT_IN = 6379
SOCK = "/tmp/ul-bench-podman.sock"
ULIMITS = {"nofile": 4096, "nproc": 4096}
PODMAN = "podman"
HAND_PREFIX = f"ulbench-hand-{os.getpid()}-"
PING_EVERY = 0.005
START_TIMEOUT = 60.0

# testcontainers reads its settings from the environment when imported: set them first.
os.environ["DOCKER_HOST"] = f"unix://{SOCK}"
os.environ["TESTCONTAINERS_RYUK_DISABLED"] = "true"
os.environ["TESTCONTAINERS_CONNECTION_MODE"] = "docker_host"
try:
    import docker
    from testcontainers.core.container import DockerContainer
    from testcontainers.core.labels import SESSION_ID as TC_SESSION
except ImportError:
    DockerContainer = None  # type: ignore[assignment,misc]
    TC_SESSION = ""

LAUNCHER_TOML = """\
[launcher]
state_dir = "{state}"
[services.cache]
image = "{image}"
container_port = {port}
pull = "never"
ulimits = {{ nofile = {nofile}, nproc = {nproc} }}
health = {{ tcp = true }}
"""


class BenchError(SystemExit):
    pass


# --------------------------------------------------------------------------- helpers


def podman(*args: str, check: bool = True, timeout: float = 60) -> str:
    out = subprocess.run([PODMAN, *args], capture_output=True, text=True, timeout=timeout)
    if check and out.returncode != 0:
        raise BenchError(f"podman {shlex.join(args)} failed ({out.returncode}): {out.stderr.strip()}")
    return out.stdout.strip()


def run_checked(argv: list[str]) -> None:
    """Run ``argv`` to its end; a failure stops the run, with the program's own message."""
    out = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if out.returncode != 0:
        raise BenchError(f"{shlex.join(argv)} failed ({out.returncode}): {out.stderr.strip()}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pong(host: str, port: int) -> bool:
    """One raw-socket Redis PING: True on +PONG."""
    try:
        with socket.create_connection((host, port), timeout=1.0) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def wait_pong(host: str, port: int) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while not pong(host, port):
        if time.monotonic() > deadline:
            raise BenchError(f"no +PONG from {host}:{port} within {START_TIMEOUT:g} s")
        time.sleep(PING_EVERY)


def port_free(port: int) -> bool:
    """Nothing holds ``port`` on any IPv4 address (no SO_REUSEADDR: a bound port counts)."""
    with socket.socket() as s:
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


def containers(filter_: str) -> list[str]:
    """``podman ps -a --filter FILTER``: the ids of matching containers, running or not."""
    out = podman("ps", "-a", "-q", "--no-trunc", "--filter", filter_)
    return out.split()


def check_clean(tool: str, port: int, filter_: str) -> None:
    """After a teardown: the port free and no container left, or stop loudly."""
    left = containers(filter_)
    if left:
        raise BenchError(f"{tool}: container(s) left after teardown (podman ps -a --filter {filter_}): {left}")
    if not port_free(port):
        raise BenchError(f"{tool}: port {port} still in use after teardown")


# --------------------------------------------------------------------------- contestants

Result = tuple[float, float]  # startup, teardown (seconds)
launcher_sessions: list[str] = []  # every launcher id used, for the final sweep


def launcher_round() -> Result:
    folder = scratch_dir()
    path = folder / "launcher.toml"
    path.write_text(LAUNCHER_TOML.format(state=folder / "state", image=IMAGE, port=PORT_IN, **ULIMITS))
    t0 = time.perf_counter()
    launcher = UnifiedLauncher(load_config(path, environ={}))
    launcher_sessions.append(launcher.id)
    port = 0
    try:
        handle = launcher.start_blocking(["cache"])["cache"]
        assert handle.port is not None
        port = handle.port
        wait_pong(handle.host, port)
        up = time.perf_counter() - t0
    finally:
        t1 = time.perf_counter()
        launcher.stop_blocking()
        down = time.perf_counter() - t1
        launcher.close()
    check_clean("launcher", port, f"label=io.unified-launcher.session={launcher.id}")
    return up, down


hand_count = 0


def hand_round() -> Result:
    global hand_count
    hand_count += 1
    name = f"{HAND_PREFIX}{hand_count}"
    port = free_port()
    ulimits = [arg for kind, n in ULIMITS.items() for arg in ("--ulimit", f"{kind}={n}:{n}")]
    t0 = time.perf_counter()
    try:
        run_checked([PODMAN, "run", "-d", "--rm", "--name", name, *ulimits, "-p", f"127.0.0.1:{port}:{PORT_IN}", IMAGE])
        wait_pong("127.0.0.1", port)
        up = time.perf_counter() - t0
    finally:
        t1 = time.perf_counter()
        run_checked([PODMAN, "rm", "-f", "-t", "10", name])
        down = time.perf_counter() - t1
    check_clean("hand-loop", port, f"name=^{name}$")
    return up, down


def testcontainers_round() -> Result:
    ulimits = [docker.types.Ulimit(name=kind, soft=n, hard=n) for kind, n in ULIMITS.items()]
    t0 = time.perf_counter()
    container = DockerContainer(IMAGE).with_exposed_ports(PORT_IN).with_kwargs(ulimits=ulimits)
    port = 0
    try:
        container.start()
        port = container.get_exposed_port(PORT_IN)
        wait_pong(container.get_container_host_ip(), port)
        up = time.perf_counter() - t0
    finally:
        t1 = time.perf_counter()
        container.stop()
        down = time.perf_counter() - t1
    check_clean("testcontainers", port, f"label=org.testcontainers.session-id={TC_SESSION}")
    return up, down


# --------------------------------------------------------------------------- podman's API service


def socket_answers() -> bool:
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(2)
            s.connect(SOCK)
            s.sendall(b"GET /_ping HTTP/1.0\r\nHost: d\r\n\r\n")
            return b" 200 " in s.recv(256)
    except OSError:
        return False


def start_service(log: Path) -> subprocess.Popen[bytes]:
    """``podman system service`` on SOCK (its own session: a Ctrl-C stays with us, and we stop
    it once testcontainers' containers are gone)."""
    if os.path.exists(SOCK):
        if socket_answers():
            raise BenchError(f"{SOCK} is already served (another run of this benchmark?); stop it first")
        os.unlink(SOCK)  # a stale socket file of a killed run
    with open(log, "wb") as out:
        proc = subprocess.Popen([PODMAN, "system", "service", "--time=0", f"unix://{SOCK}"], stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 30
    while not socket_answers():
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_service(proc)
            raise BenchError(f"podman system service did not answer on {SOCK}:\n{log.read_text()[-2000:]}")
        time.sleep(0.05)
    return proc


def stop_service(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is not None and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    if os.path.exists(SOCK):
        os.unlink(SOCK)


def sweep() -> list[str]:
    """Remove whatever this run left (after an error or Ctrl-C): the containers it named or
    labelled. Returns what it removed."""
    filters = [f"name=^{HAND_PREFIX}"] + [f"label=io.unified-launcher.session={s}" for s in launcher_sessions]
    if TC_SESSION:
        filters.append(f"label=org.testcontainers.session-id={TC_SESSION}")
    left: list[str] = []
    for f in filters:
        left += containers(f)
    if left:
        podman("rm", "-f", "-t", "0", *sorted(set(left)), check=False)
    return left


# --------------------------------------------------------------------------- main


def p95(v: list[float]) -> float:
    return statistics.quantiles(v, n=100, method="inclusive")[94] if len(v) > 1 else v[0]


def ensure_image() -> None:
    if subprocess.run([PODMAN, "image", "exists", IMAGE]).returncode != 0:
        print(f"{IMAGE} missing: running images/build.sh", file=sys.stderr, flush=True)
        subprocess.run([str(ROOT / "images" / "build.sh")], check=True)


def environment() -> dict[str, Any]:
    python = sys.executable
    if python.startswith(str(Path.cwd()) + os.sep):
        python = os.path.relpath(python)
    info = podman("info", "--format", "{{.Host.Security.Rootless}}|{{.Host.OCIRuntime.Version}}")
    rootless, runtime = info.split("|", 1)
    env = {
        "command": shlex.join([python, *sys.argv]),
        "podman": podman("version", "--format", "{{.Client.Version}}"),
        "runtime": runtime.split("\n")[0],
        "rootless": rootless == "true",
        "nproc": subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip(),
    }
    if DockerContainer is not None:
        from importlib.metadata import version

        env["testcontainers"] = version("testcontainers")
        env["docker-py"] = version("docker")
    return env


interrupted_once = False


def interrupted(signum: int, frame: object) -> None:
    """Ctrl-C and SIGTERM: unwind (every finally runs, nothing is left behind). Noted too, as
    the launcher's stop_blocking() absorbs a first Ctrl-C to finish its graceful stop."""
    global interrupted_once
    interrupted_once = True
    raise KeyboardInterrupt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--json", metavar="PATH", help="write the raw numbers there")
    args = parser.parse_args()
    signal.signal(signal.SIGINT, interrupted)
    signal.signal(signal.SIGTERM, interrupted)

    ensure_image()
    env = environment()
    contestants: dict[str, Callable[[], Result]] = {"launcher": launcher_round, "hand-loop": hand_round}
    if DockerContainer is not None:
        contestants["testcontainers"] = testcontainers_round
    else:
        print("testcontainers is not importable: its column is skipped (pip install -e \".[bench]\" to include it)",
              flush=True)
    ups: dict[str, list[float]] = {n: [] for n in contestants}
    downs: dict[str, list[float]] = {n: [] for n in contestants}

    service = None
    try:
        if DockerContainer is not None:
            service = start_service(scratch_dir() / "podman-service.log")
        for r in range(args.rounds + 1):
            for name, run in contestants.items():
                up, down = run()
                if interrupted_once:
                    raise KeyboardInterrupt
                if r > 0:
                    ups[name].append(up)
                    downs[name].append(down)
            label = "warm-up" if r == 0 else f"round {r}/{args.rounds}"
            print(f"{label}: " + ", ".join(f"{n} {ups[n][-1]:.3f}s/{downs[n][-1]:.3f}s" if r else n
                                           for n in contestants), file=sys.stderr, flush=True)
    finally:
        try:
            left = sweep()
            if left:
                print(f"removed containers left behind: {left}", file=sys.stderr)
        finally:
            stop_service(service)

    print(f"\n$ {env['command']}")
    print(f"podman {env['podman']} ({'rootless' if env['rootless'] else 'rootful'}, {env['runtime']}), "
          f"nproc {env['nproc']}" + (f", testcontainers {env['testcontainers']} (docker-py {env['docker-py']})"
                                     if "testcontainers" in env else ""))
    print(f"image {IMAGE}, ulimits nofile/nproc 4096, {args.rounds} cold rounds after 1 warm-up, interleaved\n")
    print("| tool | startup median | startup p95 | teardown median | teardown p95 | rounds |")
    print("|---|---|---|---|---|---|")
    for name in contestants:
        print(f"| {name} | {statistics.median(ups[name]) * 1000:.0f} ms | {p95(ups[name]) * 1000:.0f} ms | "
              f"{statistics.median(downs[name]) * 1000:.0f} ms | {p95(downs[name]) * 1000:.0f} ms | {len(ups[name])} |")

    ratios: dict[str, dict[str, Any]] = {}
    goals = [("launcher startup / testcontainers startup", ups, "testcontainers", 0.6),
             ("launcher startup / hand-loop startup", ups, "hand-loop", 1.05),
             ("launcher teardown / testcontainers teardown", downs, "testcontainers", 0.5)]
    print()
    for label, series, other, goal in goals:
        if other not in series:
            print(f"- {label}: n/a ({other} skipped; goal <= {goal:g})")
            continue
        ratio = statistics.median(series["launcher"]) / statistics.median(series[other])
        ratios[label] = {"ratio": ratio, "goal": goal, "met": ratio <= goal}
        print(f"- {label}: {ratio:.2f} (goal <= {goal:g}): {'met' if ratio <= goal else 'NOT met'}")

    if args.json:
        Path(args.json).write_text(json.dumps({
            **env, "image": IMAGE, "rounds": args.rounds,
            "startup_seconds": ups, "teardown_seconds": downs, "ratios": ratios,
        }, indent=2) + "\n")


if __name__ == "__main__":
    main()
