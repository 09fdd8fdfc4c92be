"""Image services with real podman (SPEC 8): local images (``images/build.sh``, no registry),
real containers on real published ports, and nothing left afterwards.

Each test checks the engine itself for leftovers: ``podman ps -a`` filtered by this test's
session labels must be empty when it ends, whatever happened (a failed start, Ctrl-C, SIGKILL).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import PY, default_sigint
from test_monitor import until

from pytest_unified_launcher import UnifiedLauncher, load_config
from pytest_unified_launcher._containers import SERVICE_LABEL, SESSION_LABEL
from pytest_unified_launcher.errors import ServiceStartupError

ROOT = Path(__file__).resolve().parent.parent
REDIS_IMAGE = "localhost/ul-redis:1"
#: The engine under test: podman (what the test command installs and runs);
#: ``UL_TEST_ENGINE=docker`` runs the same tests against a Docker daemon (README, Containers).
ENGINE = os.environ.get("UL_TEST_ENGINE", "podman")
podman_only = pytest.mark.skipif(ENGINE != "podman", reason="podman's own behaviour (its pull, netavark, PATH)")
#: This machine cannot raise RLIMIT_NOFILE/NPROC: containers need lowered limits (README).
ULIMITS = "ulimits = { nofile = 4096, nproc = 4096 }"
CACHE_HEALTH = 'health = { exec = ["redis-cli", "ping"], interval = 0.2, failure_threshold = 2, timeout = 0.5 }'
CACHE = f"""
[launcher]
state_dir = "state"
container_engine = "{ENGINE}"
[services.cache]
image = "{REDIS_IMAGE}"
container_port = 6379
pull = "never"
{ULIMITS}
{CACHE_HEALTH}
env = {{ SECRET_TOKEN = "s3cr3t-value" }}
"""


@pytest.fixture(scope="session")
def podman() -> str:
    """The engine with the test images built (``scripts/setup.sh`` installs podman and builds
    them; for docker they are copied over from podman)."""
    path = shutil.which(ENGINE)
    if path is None:
        pytest.fail(f"{ENGINE} is not installed: run ./scripts/setup.sh (the README's test command does)")
    subprocess.run([str(ROOT / "images" / "build.sh")], check=True, capture_output=True, timeout=600)
    if ENGINE != "podman" and subprocess.run([ENGINE, "image", "inspect", REDIS_IMAGE], capture_output=True,
                                             timeout=60).returncode != 0:
        subprocess.run(f"podman save {REDIS_IMAGE} | {ENGINE} load", shell=True, check=True, capture_output=True,
                       timeout=600)
    return path


def containers(label: str) -> list[str]:
    """Every container (running or not) with ``label`` (``key`` or ``key=value``)."""
    out = subprocess.run([ENGINE, "ps", "-a", "-q", "--filter", f"label={label}"], capture_output=True,
                         text=True, check=True, timeout=60).stdout
    return out.split()


def settled(label: str, seconds: float = 30.0) -> list[str]:
    """The containers with ``label`` once they are gone, or those left after ``seconds``."""
    end = time.monotonic() + seconds
    while (left := containers(label)) and time.monotonic() < end:
        time.sleep(0.2)
    return left


def ping(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"PING\r\n")
        return sock.recv(64)


def port_free(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


@pytest.fixture
def project(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, podman: str) -> Iterator[Path]:
    """A project with one Redis image service. Under xdist the container tests take turns (a
    lock shared by the run's workers): they look for leftovers by the service's label, which
    would see another test's containers."""
    import fcntl

    (tmp_path / "launcher.toml").write_text(CACHE)
    with open(tmp_path_factory.getbasetemp().parent / "containers.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield tmp_path
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


async def test_a_container_is_a_service_like_any_other(project: Path) -> None:
    """Started, probed inside (exec) and on its published port, labelled, logged from its first
    line, reported with its image and digest; then stopped, removed, and its port free."""
    config = load_config(project / "launcher.toml", environ={})
    async with UnifiedLauncher(config) as launcher:
        cache = (await launcher.start(["cache"]))["cache"]
        assert cache.runner == "container" and cache.state == "running" and cache.port and cache.container_id
        assert cache.url == f"redis://127.0.0.1:{cache.port}"
        assert ping(cache.port) == b"+PONG\r\n"
        labelled = containers(f"{SESSION_LABEL}={launcher.id}")
        assert len(labelled) == 1 and cache.container_id and cache.container_id.startswith(labelled[0])
        assert containers(f"{SERVICE_LABEL}=cache") == labelled
        assert "Ready to accept connections" in cache.logs()  # the container's output, in its log
        # The container's env reaches it by name, never on a command line (ps shows those).
        argv = await asyncio.to_thread(Path(f"/proc/{cache.pid}/cmdline").read_text)
        assert "--env-file=" in argv and "s3cr3t-value" not in argv
        env_file = Path(argv.split("--env-file=")[1].split("\0")[0])
        assert not await asyncio.to_thread(env_file.exists)  # read when the container was made, then removed
        port = cache.port
    report = launcher.report()
    row = report["runs"][0]["services"]["cache"]
    assert row["runner"] == "container" and row["image"] == REDIS_IMAGE
    assert row["image_digest"].startswith("sha256:") and row["pull_seconds"] is None
    assert report["resources"]["cache"]["rss_peak_bytes"] > 1_000_000  # redis-server's, not podman's
    assert report["health"]["cache"]["probes"] >= 0
    assert containers(f"{SESSION_LABEL}={launcher.id}") == []
    assert port_free(port)


async def test_the_pid_file_is_believed_only_for_the_containers_own_process(project: Path) -> None:
    """The engine's pid file names the container's process when it is written; by the time it
    is read that process may be gone and its pid another's. A pid counts (for the stop signal,
    the resources) only when its cgroup carries the container's id, between two equal start
    times."""
    from pytest_unified_launcher._containers import container_process
    from pytest_unified_launcher._process import start_time

    config = load_config(project / "launcher.toml", environ={})
    async with UnifiedLauncher(config) as launcher:
        cache = (await launcher.start(["cache"]))["cache"]
        cid = cache.container_id
        assert cid is not None
        out = await asyncio.to_thread(subprocess.run, [ENGINE, "inspect", "--format={{.State.Pid}}", cid],
                                      capture_output=True, text=True, check=True)
        pid = int(out.stdout)
        assert container_process(pid, cid) == (pid, start_time(pid))
        assert container_process(os.getpid(), cid) is None  # a process outside the container
        assert container_process(cache.pid, cid) is None  # the engine's own process, too
        assert container_process(pid, "0" * 64) is None  # another container's id
        assert container_process(pid, "") is None


async def test_the_monitor_probes_inside_and_sees_a_death(project: Path) -> None:
    """health.exec keeps running inside the container after ready: a paused Redis is unhealthy,
    then recovered; a container killed from outside is 'died' at once."""
    config = load_config(project / "launcher.toml", environ={})
    events: list[tuple[str, str]] = []
    async with UnifiedLauncher(config) as launcher:
        launcher.subscribe(lambda e: events.append((e.service, e.kind)))
        cache = (await launcher.start(["cache"]))["cache"]
        assert cache.container_id is not None
        await engine_async("exec", cache.container_id, "redis-cli", "CLIENT", "PAUSE", "4000", "ALL")
        await until(lambda: ("cache", "unhealthy") in events, 60)
        # A timed-out exec is left to finish (killing it would leave its command in the
        # container): never more than one at a time, however many probes failed meanwhile.
        assert len(_pings_in_containers()) <= 1
        await until(lambda: ("cache", "recovered") in events, 60)
        await engine_async("kill", cache.container_id)
        await until(lambda: ("cache", "died") in events, 60)
        assert cache.state == "died"
    assert containers(f"{SESSION_LABEL}={launcher.id}") == []


def _pings_in_containers() -> list[int]:
    import psutil

    return [p.pid for p in psutil.process_iter(["cmdline"]) if p.info["cmdline"] == ["redis-cli", "ping"]]


async def engine_async(*args: str) -> None:
    await asyncio.to_thread(subprocess.run, [ENGINE, *args], check=True, capture_output=True, timeout=60)


@pytest.mark.parametrize(("service", "expected"), [
    pytest.param(f'image = "{REDIS_IMAGE}"\ncommand = ["redis-server", "--port", "notaport"]\ncontainer_port = 6379',
                 ["container exited with code 1", "notaport"], id="exits-during-startup"),
    pytest.param('image = "localhost/ul-not-built:1"\ncontainer_port = 6379',
                 ['image localhost/ul-not-built:1 is not present and pull = "never"', f"{ENGINE} pull"],
                 id="missing-image"),
    pytest.param(f'image = "{REDIS_IMAGE}"\ncommand = ["no-such-program"]',
                 ["container exited with code 127", "not found in the image"], id="command-not-in-image"),
])
async def test_a_failed_start_names_the_cause_and_leaves_nothing(project: Path, service: str,
                                                                 expected: list[str]) -> None:
    (project / "launcher.toml").write_text(f'[launcher]\nstate_dir = "state"\ncontainer_engine = "{ENGINE}"\n'
                                           f'[services.cache]\n{service}\n'
                                           f'pull = "never"\n{ULIMITS}\nstartup_timeout = 20\n')
    config = load_config(project / "launcher.toml", environ={})
    async with UnifiedLauncher(config) as launcher:
        with pytest.raises(ServiceStartupError) as info:
            await launcher.start(["cache"])
    text = str(info.value)
    assert all(part in text for part in expected), text
    assert containers(f"{SESSION_LABEL}={launcher.id}") == []


def _podman_only(project: Path) -> Path:
    """A PATH folder with podman and no docker (a machine may have both in /usr/bin)."""
    folder = project / "podman-only"
    folder.mkdir(exist_ok=True)
    if not (folder / "podman").exists():
        (folder / "podman").symlink_to(shutil.which("podman") or "/usr/bin/podman")
    return folder


@podman_only
async def test_a_missing_engine_and_a_failed_pull_say_the_fix(project: Path) -> None:
    """docker asked for but absent: named with the fix; pull = "missing" of an image no registry
    has: the pull's failure, with what to check (this machine reaches no registry at all)."""
    config = load_config(project / "launcher.toml", environ={"LAUNCHER_CONTAINER_ENGINE": "docker"})
    no_docker = {**os.environ, "PATH": str(_podman_only(project))}
    async with UnifiedLauncher(config, base_env=no_docker) as launcher:
        with pytest.raises(ServiceStartupError, match=r'container_engine = "docker" but docker is not on PATH; '
                                                      r'install it, or set container_engine = "podman"'):
            await launcher.start(["cache"])
    (project / "launcher.toml").write_text(CACHE.replace(REDIS_IMAGE, "localhost/ul-not-built:1")
                                           .replace('pull = "never"', 'pull = "missing"'))
    config = load_config(project / "launcher.toml", environ={})
    async with UnifiedLauncher(config) as launcher:
        with pytest.raises(ServiceStartupError, match=r"cannot pull image localhost/ul-not-built:1 .*podman login"):
            await launcher.start(["cache"])
    assert containers(f"{SESSION_LABEL}={launcher.id}") == []


def _pytest(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PY, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:randomly", *args], cwd=project,
                          capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)


TEST_FILE = """
import json, os, socket, pytest

@pytest.mark.parametrize("n", range(4))
@pytest.mark.services("cache")
def test_cache(services, n):
    cache = services["cache"]
    with socket.create_connection(("127.0.0.1", cache.port), timeout=5) as sock:
        sock.sendall(b"PING\\r\\n")
        assert sock.recv(64) == b"+PONG\\r\\n"
    with open("seen.txt", "a") as out:
        out.write(json.dumps([os.environ.get("PYTEST_XDIST_WORKER", "main"), cache.container_id]) + "\\n")
"""


@pytest.mark.parametrize("xdist", ["shared", "per_worker"])
def test_xdist_shares_one_container_or_gives_each_worker_its_own(project: Path, xdist: str) -> None:
    (project / "test_cache.py").write_text(TEST_FILE)
    result = _pytest(project, "-n", "2", f"--launcher-xdist={xdist}", "--launcher-report=report.json")
    assert result.returncode == 0, result.stdout + result.stderr
    seen = [json.loads(line) for line in (project / "seen.txt").read_text().splitlines()]
    ids = {cid for _, cid in seen}
    assert len(seen) == 4 and all(ids)
    workers = {worker for worker, _ in seen}
    assert len(ids) == (1 if xdist == "shared" else len(workers)), seen
    assert settled(SERVICE_LABEL + "=cache") == []


def test_keep_then_attach_then_down(project: Path) -> None:
    """--launcher-keep leaves the container running; --launcher-attach uses that one; `down`
    removes it."""
    (project / "test_cache.py").write_text(TEST_FILE)
    kept = _pytest(project, "--launcher-keep")
    assert kept.returncode == 0, kept.stdout + kept.stderr
    first = {cid for _, cid in map(json.loads, (project / "seen.txt").read_text().splitlines())}
    assert len(first) == 1 and containers(f"{SERVICE_LABEL}=cache")
    attached = _pytest(project, "--launcher-attach")
    assert attached.returncode == 0, attached.stdout + attached.stderr
    both = {cid for _, cid in map(json.loads, (project / "seen.txt").read_text().splitlines())}
    assert both == first
    # Its engine process killed (the OOM killer, a cleanup script): the container lives on
    # without it, and `down` must still remove it.
    import psutil

    engines = [p for p in psutil.process_iter(["cmdline"]) if (p.info["cmdline"] or [])[1:2] == ["run"]
               and f"--label={SERVICE_LABEL}=cache" in (p.info["cmdline"] or [])]
    assert len(engines) == 1
    engines[0].kill()
    engines[0].wait(30)
    assert containers(f"{SERVICE_LABEL}=cache")
    down = subprocess.run([PY, "-m", "pytest_unified_launcher", "down"], cwd=project, capture_output=True,
                          text=True, timeout=120)
    assert down.returncode == 0, down.stdout + down.stderr
    assert settled(SERVICE_LABEL + "=cache") == []


def test_up_detach_status_down(project: Path) -> None:
    cli = [PY, "-m", "pytest_unified_launcher"]
    up = subprocess.run([*cli, "up", "--detach"], cwd=project, capture_output=True, text=True, timeout=120)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        record = json.loads((project / "state" / "up.json").read_text())
        assert ping(record["services"]["cache"]["port"]) == b"+PONG\r\n"
        status = subprocess.run([*cli, "status"], cwd=project, capture_output=True, text=True, timeout=60)
        assert status.returncode == 0 and "cache" in status.stdout and "running" in status.stdout
    finally:
        down = subprocess.run([*cli, "down"], cwd=project, capture_output=True, text=True, timeout=120)
    assert down.returncode == 0, down.stdout + down.stderr
    assert settled(SERVICE_LABEL + "=cache") == []


#: The cache, never ready: its start lasts until the session is interrupted.
SLOW_START = CACHE.replace(CACHE_HEALTH, 'health = { log = "never printed" }\nstartup_timeout = 120')


@pytest.mark.parametrize("how", ["ctrl-c", "sigkill"])
def test_nothing_is_left_after_ctrl_c_or_a_killed_session(project: Path, how: str) -> None:
    """A session interrupted while its container starts: Ctrl-C stops it; SIGKILL of pytest
    leaves it to the sentinel, which removes the session's containers by label."""
    (project / "launcher.toml").write_text(SLOW_START)
    (project / "test_slow.py").write_text(
        "import pytest\n@pytest.mark.services('cache')\ndef test_slow(services):\n    pass\n")
    proc = subprocess.Popen([PY, "-m", "pytest", "-p", "no:cacheprovider", "test_slow.py"], cwd=project,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=default_sigint)
    try:
        end = time.monotonic() + 120
        while not containers(SERVICE_LABEL + "=cache") and time.monotonic() < end:
            time.sleep(0.1)
        assert containers(SERVICE_LABEL + "=cache"), "the container never started"
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT if how == "ctrl-c" else signal.SIGKILL)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert settled(SERVICE_LABEL + "=cache", seconds=60) == []


def test_a_session_killed_outright_is_reaped_by_the_next_run_too(project: Path) -> None:
    """No sentinel (it was killed with the session): the next launcher's reap removes the
    container by its session label, from the run record's engine."""
    script = textwrap.dedent("""
        import os, signal, sys
        from pytest_unified_launcher import UnifiedLauncher, load_config
        launcher = UnifiedLauncher(load_config("launcher.toml", environ={}))
        launcher.start_blocking(["cache"])
        print(launcher.id, flush=True)
        if launcher._sentinel.pid:
            os.kill(launcher._sentinel.pid, signal.SIGKILL)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([PY, "-c", script], cwd=project, capture_output=True, text=True, timeout=120)
    session = proc.stdout.split()[0]
    assert containers(f"{SESSION_LABEL}={session}")  # its sentinel was killed first: nobody removed it
    config = load_config(project / "launcher.toml", environ={})
    launcher = UnifiedLauncher(config)
    try:
        launcher.start_blocking(["cache"])
        assert settled(f"{SESSION_LABEL}={session}") == []
    finally:
        launcher.stop_blocking()
        launcher.close()
    assert containers(f"{SESSION_LABEL}={launcher.id}") == []


@podman_only
def test_check_lists_image_services_and_a_missing_engine(project: Path) -> None:
    cli = [PY, "-m", "pytest_unified_launcher", "check"]
    ok = subprocess.run(cli, cwd=project, capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0 and "image" in ok.stdout and "exec redis-cli ping" in ok.stdout
    env = {**os.environ, "LAUNCHER_CONTAINER_ENGINE": "docker",
           "PATH": f"{os.path.dirname(sys.executable)}:{_podman_only(project)}"}
    missing = subprocess.run(cli, cwd=project, capture_output=True, text=True, timeout=60, env=env)
    assert missing.returncode != 0 and "Traceback" not in missing.stderr
    assert "cache need a container engine" in missing.stderr and "docker is not on PATH" in missing.stderr


@pytest.mark.parametrize("xdist", ["shared", "per_worker"])
def test_an_xdist_worker_killed_mid_test_leaves_no_container(project: Path, xdist: str) -> None:
    """A worker SIGKILLed while its container runs: the controller (or the worker's sentinel)
    removes it; the run reports the crash."""
    (project / "test_dies.py").write_text(textwrap.dedent("""
        import os, signal
        import pytest

        @pytest.mark.services("cache")
        def test_dies(services):
            assert services["cache"].container_id
            os.kill(os.getpid(), signal.SIGKILL)

        @pytest.mark.parametrize("i", range(3))
        def test_other(i): pass
    """))
    result = _pytest(project, "-n", "2", f"--launcher-xdist={xdist}")
    assert result.returncode == 1 and "crashed" in result.stdout, result.stdout + result.stderr
    assert settled(SERVICE_LABEL + "=cache", seconds=60) == []


def test_bench_times_cold_container_starts(project: Path) -> None:
    bench = subprocess.run([PY, "-m", "pytest_unified_launcher", "bench", "--runs", "2", "--json", "bench.json",
                            "--svg", "waterfall.svg"], cwd=project, capture_output=True, text=True, timeout=300)
    assert bench.returncode == 0, bench.stdout + bench.stderr
    report = json.loads((project / "bench.json").read_text())
    rows = [run["services"]["cache"] for run in report["runs"]]
    assert len(rows) == 2 and all(r["runner"] == "container" and r["image"] == REDIS_IMAGE for r in rows)
    assert len({r["image_digest"] for r in rows}) == 1  # the same image, each run a new container
    assert 'data-service="cache"' in (project / "waterfall.svg").read_text()
    assert settled(SERVICE_LABEL + "=cache") == []


@podman_only
async def test_a_pull_is_timed_apart_and_drawn_apart(project: Path, tmp_path: Path) -> None:
    """pull = "always": the engine pulls (here from an OCI archive: no registry is reachable)
    before the container runs; the report has its time, the waterfall draws it apart."""
    archive = tmp_path / "redis.oci.tar"
    await asyncio.to_thread(subprocess.run, ["podman", "save", "--format", "oci-archive", "-o", str(archive),
                                             REDIS_IMAGE], check=True, capture_output=True, timeout=120)
    (project / "launcher.toml").write_text(CACHE.replace(f'"{REDIS_IMAGE}"', f'"oci-archive:{archive}"')
                                           .replace('pull = "never"', 'pull = "always"'))
    config = load_config(project / "launcher.toml", environ={})
    async with UnifiedLauncher(config) as launcher:
        cache = (await launcher.start(["cache"]))["cache"]
        assert cache.port is not None and ping(cache.port) == b"+PONG\r\n"
        assert f"$ podman pull oci-archive:{archive}" in cache.logs(100)
    from pytest_unified_launcher.report import render_svg

    run = launcher.report()["runs"][0]
    assert run["services"]["cache"]["pull_seconds"] > 0
    assert 'class="phase-pull"' in render_svg(run, budget_seconds=25)
    assert containers(f"{SESSION_LABEL}={launcher.id}") == []


def test_an_adopted_pid_of_another_user_cannot_name_a_container_to_remove(project: Path) -> None:
    """A shared record's pid reused by a second local user's process whose command line says
    `--name ul-x-cache`: adopting it and stopping must not remove that (root's) container."""
    # Another user's program (the system python: the suite's venv may be out of its reach).
    folder = Path(tempfile.mkdtemp(dir="/tmp"))  # theirs to read: pytest's tmp_path is root's alone
    folder.chmod(0o755)
    (folder / "run").write_text("import time\ntime.sleep(120)\n")
    # Its command line reads like an engine's: `python3 run --name=ul-x-cache`.
    attacker = subprocess.Popen(["/usr/bin/python3", "run", "--name=ul-x-cache"], cwd=folder,
                                user=101, group=101, start_new_session=True)
    try:
        victim = subprocess.run([ENGINE, "run", "-d", "--rm", "--name", "ul-x-cache", "--ulimit",
                                 "nofile=4096:4096", "--ulimit", "nproc=4096:4096", REDIS_IMAGE],
                                capture_output=True, text=True, timeout=120)
        assert victim.returncode == 0, victim.stderr
        from pytest_unified_launcher._process import start_time

        launcher = UnifiedLauncher(load_config(project / "launcher.toml", environ={}))
        try:
            launcher.adopt("cache", pid=attacker.pid, token=start_time(attacker.pid))
            assert launcher.services["cache"].container_id is None
            launcher.stop_blocking()
        finally:
            launcher.close()
        alive = subprocess.run([ENGINE, "ps", "-q", "--filter", "name=^ul-x-cache$"], capture_output=True,
                               text=True, timeout=60).stdout.split()
        assert alive, "the victim's container was removed"
    finally:
        attacker.kill()
        attacker.wait()
        shutil.rmtree(folder)
        subprocess.run([ENGINE, "rm", "-f", "ul-x-cache"], capture_output=True, timeout=120)


@podman_only
def test_the_services_variables_never_reach_the_engine_running_as_root(project: Path, tmp_path: Path) -> None:
    """[env] PATH naming a folder another user owns: the container gets it, root's engine does
    not (its network helper ran that user's `iptables` as root)."""
    planted = tmp_path / "planted"
    planted.mkdir()
    marker = tmp_path / "ran-as-root"
    for tool in ("iptables", "ip6tables", "nft", "conmon", "runc", "netavark", "aardvark-dns"):
        real = shutil.which(tool, path="/usr/sbin:/usr/bin:/sbin:/bin:/usr/libexec/podman") or "/bin/false"
        script = planted / tool
        script.write_text(f"#!/bin/sh\nid -u >> {marker}\nexec {real} \"$@\"\n")
        script.chmod(0o755)
        os.chown(script, 101, 101)
    os.chown(planted, 101, 101)
    (project / "launcher.toml").write_text(CACHE.replace("[services.cache]", f'[env]\nPATH = "{planted}:/usr/bin:/bin"\n'
                                                                              "[services.cache]")
                                           .replace(f'image = "{REDIS_IMAGE}"',
                                                    f'image = "{REDIS_IMAGE}"\ncommand = ["/usr/bin/redis-server", "--protected-mode", "no"]'))
    launcher = UnifiedLauncher(load_config(project / "launcher.toml", environ={}))
    try:
        cache = launcher.start_blocking(["cache"])["cache"]
        assert cache.port is not None and ping(cache.port) == b"+PONG\r\n"  # started, exec probe passed
    finally:
        launcher.stop_blocking()
        launcher.close()
    assert not marker.exists(), f"root ran a planted program: {marker.read_text()}"


async def test_a_killed_engine_process_still_has_its_container_removed(project: Path) -> None:
    """The engine process (podman run) killed under the launcher (OOM killer, a cleanup): the
    container lives on without it; the stop removes it all the same."""
    config = load_config(project / "launcher.toml", environ={})
    async with UnifiedLauncher(config) as launcher:
        cache = (await launcher.start(["cache"]))["cache"]
        assert cache.pid is not None
        os.kill(cache.pid, signal.SIGKILL)
        await until(lambda: cache.state == "died", 60)
        assert containers(f"{SESSION_LABEL}={launcher.id}")  # still there: nobody removed it yet
    assert containers(f"{SESSION_LABEL}={launcher.id}") == []


async def test_a_mount_under_tmp_is_made_at_start(project: Path) -> None:
    (project / "launcher.toml").write_text(CACHE.replace('pull = "never"', 'pull = "never"\nmounts = ["${tmp}/data:/data"]'))
    config = load_config(project / "launcher.toml", environ={})
    async with UnifiedLauncher(config) as launcher:
        cache = (await launcher.start(["cache"]))["cache"]
        assert (cache.config.tmp / "data").is_dir()
    assert containers(f"{SESSION_LABEL}={launcher.id}") == []


def test_check_finds_an_image_that_is_not_there_with_pull_never(project: Path) -> None:
    (project / "launcher.toml").write_text(CACHE.replace(REDIS_IMAGE, "localhost/ul-not-built:1"))
    result = subprocess.run([PY, "-m", "pytest_unified_launcher", "check"], cwd=project, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"service 'cache', key 'image': image localhost/ul-not-built:1 is not present ({ENGINE}) and " \
           'pull = "never"' in result.stderr and f"fix: pull or build it first ({ENGINE} pull" in result.stderr
