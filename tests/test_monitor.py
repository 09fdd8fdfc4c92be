"""The health monitor (SPEC 10), on real processes and sockets: a service that answers 503, one
that hangs, one that dies; subscribers; resources; the probe rate limit; richer http checks."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import textwrap
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from pytest_unified_launcher import ServiceStartupError, UnifiedLauncher, load_config
from pytest_unified_launcher.errors import ServiceDiedError, ServiceUnhealthyError
from conftest import APPS, PY

FLAKY = str(APPS / "flaky_http.py")


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "launcher.toml"
    path.write_text(textwrap.dedent(text).replace("{PY}", PY).replace("{FLAKY}", FLAKY))
    return path


FLAKY_SERVICE = """
[launcher]
state_dir = "state"
[services.web]
command = ["{PY}", "{FLAKY}", "${port}"]
health = { http = "/health", interval = 0.05, failure_threshold = 2, timeout = 0.3 }
"""


def steer(url: str | None, mode: str) -> None:
    assert url is not None
    with urllib.request.urlopen(f"{url}/mode/{mode}", timeout=5) as response:
        assert response.status == 200


async def until(predicate: Any, timeout: float = 30.0) -> None:
    """Wait (not a timing assertion: a generous bound) until ``predicate()`` holds."""
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "condition not reached"
        await asyncio.sleep(0.01)


class Recorder:
    """A subscriber that keeps every event (called on the launcher's loop thread)."""

    def __init__(self) -> None:
        self.events: list[Any] = []
        self.lock = threading.Lock()

    def __call__(self, event: Any) -> None:
        with self.lock:
            self.events.append(event)

    def kinds(self, service: str | None = None) -> list[str]:
        with self.lock:
            return [e.kind for e in self.events if service is None or e.service == service]


async def test_a_service_answering_503_turns_unhealthy_then_recovers(tmp_path: Path) -> None:
    """failure_threshold failed probes make a ready service unhealthy (an event, the state, a
    test needing it errors); one passing probe makes it running again (recovered)."""
    config = load_config(write(tmp_path, FLAKY_SERVICE), environ={})
    recorder = Recorder()
    async with UnifiedLauncher(config) as launcher:
        launcher.subscribe(recorder)
        handles = await launcher.start()
        web = handles["web"]
        steer(web.url, "503")
        await until(lambda: web.state == "unhealthy")
        unhealthy = next(e for e in recorder.events if e.kind == "unhealthy")
        assert "2 probes failed in a row" in unhealthy.detail and "HTTP 503" in unhealthy.detail
        with pytest.raises(ServiceUnhealthyError, match=r"service 'web' is unhealthy: .*HTTP 503"):
            await launcher.start(["web"])
        steer(web.url, "ok")
        await until(lambda: web.state == "running")
        assert (await launcher.start(["web"]))["web"] is web
        report = launcher.report()
    assert recorder.kinds("web") == ["ready", "unhealthy", "recovered", "stopped"]
    health = report["health"]["web"]
    assert health["failures"] >= 2 and health["probes"] > health["failures"]
    assert health["response_ms"]["p95"] >= health["response_ms"]["p50"] > 0
    assert [t["kind"] for t in health["transitions"]] == ["ready", "unhealthy", "recovered"]  # before the stop


async def test_a_hung_service_turns_unhealthy(tmp_path: Path) -> None:
    """A service that stops answering (its probe times out) turns unhealthy, its process alive."""
    config = load_config(write(tmp_path, FLAKY_SERVICE), environ={})
    recorder = Recorder()
    async with UnifiedLauncher(config) as launcher:
        launcher.subscribe(recorder)
        web = (await launcher.start())["web"]
        steer(web.url, "hang")
        await until(lambda: "unhealthy" in recorder.kinds("web"))
        assert web.alive and web.state == "unhealthy"
        detail = next(e.detail for e in recorder.events if e.kind == "unhealthy")
        assert "timed out" in detail


async def test_a_death_is_an_event_at_once(tmp_path: Path) -> None:
    """A ready service whose process exits is 'died' through its pidfd, without any probe or
    test asking: the monitor's interval is an hour here. Its next start() says so."""
    config = load_config(write(tmp_path, FLAKY_SERVICE.replace("interval = 0.05", "interval = 3600")), environ={})
    recorder = Recorder()
    async with UnifiedLauncher(config) as launcher:
        launcher.subscribe(recorder)
        web = (await launcher.start())["web"]
        assert web.pid is not None
        assert web.pid is not None
        os.kill(web.pid, signal.SIGKILL)
        await until(lambda: "died" in recorder.kinds("web"))
        assert web.state == "died"
        died = next(e for e in recorder.events if e.kind == "died")
        assert died.detail == "was killed by SIGKILL"
        with pytest.raises(ServiceDiedError, match="is no longer running: was killed by SIGKILL"):
            await launcher.start(["web"])
        report = launcher.report()
    assert report["runs"][0]["services"]["web"]["died"] == "was killed by SIGKILL"
    assert [t["kind"] for t in report["health"]["web"]["transitions"]][:2] == ["ready", "died"]


async def test_a_failing_subscriber_does_not_silence_the_others(tmp_path: Path,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    """A subscriber that raises is logged; the next one still hears every event; unsubscribe works."""
    config = load_config(write(tmp_path, FLAKY_SERVICE), environ={})
    recorder, late = Recorder(), Recorder()

    def broken(event: Any) -> None:
        raise RuntimeError("subscriber bug")

    async with UnifiedLauncher(config) as launcher:
        launcher.subscribe(broken)
        launcher.subscribe(recorder)
        unsubscribe = launcher.subscribe(late)
        unsubscribe()
        await launcher.start()
    assert recorder.kinds() == ["ready", "stopped"]
    assert late.kinds() == []
    assert "a health event subscriber failed on web ready" in caplog.text


async def test_restarts_and_stops_of_our_own_are_no_deaths(tmp_path: Path) -> None:
    """A handle's restart() and stop() are 'stopped' and 'restarted', never 'died'."""
    config = load_config(write(tmp_path, FLAKY_SERVICE), environ={})
    recorder = Recorder()
    async with UnifiedLauncher(config) as launcher:
        launcher.subscribe(recorder)
        web = (await launcher.start())["web"]
        await web.arestart()
        await web.astop()
    assert recorder.kinds("web") == ["ready", "stopped", "restarted", "stopped"]


async def test_resources_of_a_process_and_none_of_an_in_process_app(tmp_path: Path) -> None:
    """A subprocess service has its memory, CPU, files and threads sampled; an in-process app
    shares the test process, and the report says so."""
    config = load_config(write(tmp_path, FLAKY_SERVICE + """
        [services.api]
        app = "tests.apps.web:app"
        health = { http = "/health" }
        """.replace("        ", "")), environ={}, mode="single_process")
    (tmp_path / "tests").symlink_to(APPS.parent)
    async with UnifiedLauncher(config) as launcher:
        await launcher.start()
    report = launcher.report()  # sampled at ready and once more before the stop
    web = report["resources"]["web"]
    assert web["rss_peak_bytes"] > 1_000_000 and web["threads"] >= 1 and web["open_files"] >= 3
    assert web["cpu_seconds"] > 0 and web["samples"] >= 2
    assert "in-process" in report["resources"]["api"]["n/a"]


async def test_interval_zero_turns_the_probes_off(tmp_path: Path) -> None:
    """health.interval = 0: no probe after ready (a 503 goes unseen), the exit is still watched."""
    config = load_config(write(tmp_path, FLAKY_SERVICE.replace("interval = 0.05", "interval = 0")), environ={})
    recorder = Recorder()
    async with UnifiedLauncher(config) as launcher:
        launcher.subscribe(recorder)
        web = (await launcher.start())["web"]
        steer(web.url, "503")
        await asyncio.sleep(0.3)
        assert web.state == "running"
        assert launcher.report()["health"]["web"]["probes"] == 0
        assert web.pid is not None
        os.kill(web.pid, signal.SIGKILL)
        await until(lambda: "died" in recorder.kinds("web"))


def windows_over(hits: list[float], limit: int) -> list[tuple[float, int]]:
    """Every 1-second window (starting at a hit) that holds more than ``limit`` hits."""
    return [(t, n) for t in hits if (n := sum(1 for h in hits if t <= h < t + 1.0)) > limit]


@pytest.fixture
def counted_server(tmp_path: Path) -> Any:
    """A flaky_http server outside the launcher (an external service), counting its probes."""
    hits = tmp_path / "hits"
    server = subprocess.Popen([PY, FLAKY, "0"], stdout=subprocess.DEVNULL, env={**os.environ, "HITS_FILE": str(hits)})
    try:
        yield f"http://127.0.0.1:{_port_of(server.pid)}", hits
    finally:
        server.kill()
        server.wait()


async def test_probes_never_exceed_ten_a_second(tmp_path: Path, counted_server: tuple[str, Path]) -> None:
    """At most 10 probes of one service in any second: while an external service is waited for
    (the fast startup backoff included) and when the monitor's interval asks for more."""
    url, hits = counted_server
    steer(url, "503")
    config = load_config(write(tmp_path, f"""
        [launcher]
        state_dir = "state"
        [services.ext]
        url = "{url}"
        health = {{ http = "/health", interval = 0.001, failure_threshold = 1000 }}
        startup_timeout = 1.5
        """), environ={})
    async with UnifiedLauncher(config) as launcher:
        with pytest.raises(ServiceStartupError, match="not healthy after 1.5 s"):
            await launcher.start()
        startup = [float(x) for x in hits.read_text().split()]
        steer(url, "ok")
        await launcher.start(["ext"], retry_failed=True)  # ready: now the monitor probes as fast as it may
        await asyncio.sleep(1.5)
    monitored = [float(x) for x in hits.read_text().split()][len(startup):]
    assert len(startup) >= 10 and len(monitored) >= 10  # it did probe, as fast as allowed
    assert windows_over(startup, 10) == []
    assert windows_over(monitored, 10) == []


def _port_of(pid: int) -> int:
    import psutil

    end = time.monotonic() + 10
    while time.monotonic() < end:
        conns = [c for c in psutil.Process(pid).net_connections("tcp") if c.status == psutil.CONN_LISTEN]
        if conns:
            return int(conns[0].laddr.port)
        time.sleep(0.01)
    raise AssertionError("the server did not listen")


@pytest.mark.parametrize(("health", "passes", "why"), [
    ('{ path = "/health", status = [200] }', True, None),
    ('{ path = "/health", status = [204] }', False, "answered HTTP 200 (expected 204)"),
    ('{ path = "/health", body = "status: ok" }', True, None),
    ('{ path = "/health", body = "^ready$" }', False, "its body does not match /^ready$/"),
    ('{ path = "/health", body = "probe=yes", headers = { X-Probe = "yes" } }', True, None),
    ('{ path = "/health", body = "probe=yes" }', False, "does not match /probe=yes/"),
])
async def test_richer_http_checks(tmp_path: Path, health: str, passes: bool, why: str | None) -> None:
    """health.http as a table: accepted statuses, a body pattern, request headers, in startup."""
    config = load_config(write(tmp_path, f"""
        [launcher]
        state_dir = "state"
        [services.web]
        command = ["{{PY}}", "{{FLAKY}}", "${{port}}"]
        health = {{ http = {health} }}
        startup_timeout = {30 if passes else 3}
        """), environ={})
    async with UnifiedLauncher(config) as launcher:
        if passes:
            await launcher.start()
        else:
            with pytest.raises(ServiceStartupError) as info:
                await launcher.start()
            assert why is not None and why in str(info.value)


def make_certs(folder: Path) -> dict[str, Path]:
    """A CA, a server cert for 127.0.0.1 and a client cert, both signed by it (openssl)."""
    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
        "-subj", "/CN=test-ca")
    for name in ("server", "client"):
        run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
            "-subj", f"/CN={name}")
        (folder / f"{name}.ext").write_text("subjectAltName=IP:127.0.0.1\n")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext")
    return {n: folder / n for n in ("ca.pem", "server.pem", "server.key", "client.pem", "client.key")}


@pytest.mark.parametrize("monitor", [False, True], ids=["startup", "monitor"])
async def test_https_with_a_private_ca_and_a_client_cert(tmp_path: Path, monitor: bool) -> None:
    """https probes trust ca_file and present cert/key, while starting and in the monitor (its
    aiohttp session); without the client cert the server refuses the probe."""
    certs = make_certs(tmp_path)
    service = """
        [launcher]
        state_dir = "state"
        [services.web]
        command = ["{PY}", "{FLAKY}", "${port}", "--tls", "server.pem", "server.key", "--client-ca", "ca.pem"]
        health = { http = { path = "https://127.0.0.1:${port}/health", ca_file = "ca.pem", CLIENT }, interval = 0.05 }
        startup_timeout = TIMEOUT
        """
    config = load_config(write(tmp_path, service.replace("CLIENT", 'cert = "client.pem", key = "client.key"')
                               .replace("TIMEOUT", "30")), environ={})
    recorder = Recorder()
    async with UnifiedLauncher(config) as launcher:
        launcher.subscribe(recorder)
        await launcher.start()
        if monitor:
            await until(lambda: launcher.report()["health"]["web"]["probes"] >= 3)
            assert launcher.report()["health"]["web"]["failures"] == 0
    assert certs["ca.pem"].exists()
    refused = load_config(write(tmp_path, service.replace(", CLIENT", "").replace("TIMEOUT", "3")), environ={})
    async with UnifiedLauncher(refused) as launcher:
        with pytest.raises(ServiceStartupError, match="health check"):
            await launcher.start()


def test_the_resources_of_a_process_tree_without_a_cgroup(tmp_path: Path) -> None:
    """A service without its own cgroup (not root) is its process tree: a child it forked counts;
    between lookups of the tree a child that ended drops out, and its pid, if reused, is not
    counted as the service's."""
    from pytest_unified_launcher import _resources

    parent = subprocess.Popen([PY, "-c", "import os, time\nif os.fork() == 0: time.sleep(60)\nos.wait()\ntime.sleep(60)"])
    try:
        deadline = time.monotonic() + 10
        sampler = _resources.ResourceSampler(parent.pid, None)  # token None: no cgroup
        while True:
            res = sampler.sample()
            if len(sampler._pids()) == 2 or time.monotonic() > deadline:
                break
            sampler._tree = None  # the child may not be forked yet: look the tree up again
        assert res.threads >= 2 and res.rss_peak_bytes > 1_000_000
        child = [pid for pid in sampler._pids() if pid != parent.pid]
        assert len(child) == 1
        os.kill(child[0], signal.SIGKILL)
        deadline = time.monotonic() + 10
        while sampler._pids() != [parent.pid] and time.monotonic() < deadline:
            time.sleep(0.01)  # until the parent has collected it
        assert sampler._pids() == [parent.pid]
        assert sampler.sample().threads == 1
    finally:
        parent.kill()
        parent.wait()


def test_a_killed_service_is_not_alive_before_the_loop_hears_of_it(tmp_path: Path) -> None:
    """A failing test's report lists a service killed a moment before as dead (its log tail
    first): alive() asks the process, not only the exit status the launcher's loop collects
    (under a loaded CI the loop had not got to it yet, and the killed service looked alive)."""
    launcher = UnifiedLauncher(load_config(write(tmp_path, FLAKY_SERVICE), environ={}))
    try:
        web = launcher.start_blocking(["web"])["web"]
        assert web.pid is not None and web.alive
        busy, release = threading.Event(), threading.Event()

        def hold() -> None:  # the loop, busy elsewhere, as under load
            busy.set()
            release.wait(30)

        launcher._thread.loop.call_soon_threadsafe(hold)
        assert busy.wait(10)
        try:
            os.kill(web.pid, signal.SIGKILL)
            end = time.monotonic() + 10
            while psutil_status(web.pid) not in ("zombie", "gone") and time.monotonic() < end:
                time.sleep(0.005)
            assert not web.alive
        finally:
            release.set()
    finally:
        launcher.stop_blocking()
        launcher.close()


def psutil_status(pid: int) -> str:
    import psutil

    try:
        return psutil.Process(pid).status()
    except psutil.NoSuchProcess:
        return "gone"
