"""Integration tests of UnifiedLauncher: real processes, real sockets, real redis-server."""

from __future__ import annotations

import asyncio
import json
import re
import sys
import textwrap
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from pytest_unified_launcher import (
    ConfigError,
    LauncherStatus,
    ServiceStartupError,
    UnifiedLauncher,
    load_config,
)
from pytest_unified_launcher._ports import is_free
from conftest import APPS, PY, TCP



def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "launcher.toml"
    path.write_text(textwrap.dedent(text).replace("{PY}", PY).replace("{TCP}", TCP))
    return path


async def start_error(tmp_path: Path, text: str) -> ServiceStartupError:
    """Start every service of the config ``text``: the ServiceStartupError that must come of it."""
    path = write_config(tmp_path, text)
    async with UnifiedLauncher(load_config(path, environ={})) as launcher:
        with pytest.raises(ServiceStartupError) as info:
            await launcher.start()
    return info.value


def get_json(base: str | None, path: str) -> Any:
    assert base is not None, "the service has no URL"
    with urllib.request.urlopen(base + path, timeout=5) as resp:
        return json.loads(resp.read())


GRAPH = """
[launcher]
state_dir = "state"
[services.cache]
command = "redis-server --port ${port} --bind 127.0.0.1 --save '' --appendonly no"
[services.plain]
command = ["{PY}", "{TCP}", "${port}"]
[services.seed]
command = ["{PY}", "-c", "print('seeded')"]
task = true
depends_on = ["plain"]
[services.api]
app = "web:app"
depends_on = ["cache", "seed"]
health = { http = "/health" }
env = { REDIS_URL = "redis://127.0.0.1:${services.cache.port}/0", GREETING = "hi" }
[services.router]
app = "web:router"
depends_on = ["api"]
env = { API_URL = "${services.api.url}" }
[services.factory]
app = "web:create_app"
health = { http = "/health" }
"""


@pytest.fixture
def graph_config(tmp_path: Path) -> Path:
    path = write_config(tmp_path, GRAPH)
    (tmp_path / "web.py").write_text((APPS / "web.py").read_text())
    return path


@pytest.mark.parametrize("mode", ["single_process", "multi_process"])
async def test_graph_starts_and_stops_cleanly(graph_config: Path, mode: str, redis_server: str, no_orphans: None) -> None:
    """Both modes bring up the whole graph with the same URLs contract and leave nothing behind."""
    config = load_config(graph_config, mode=mode, environ={})
    launcher = UnifiedLauncher(config)
    try:
        handles = await launcher.start()
        assert launcher.get_status() is LauncherStatus.RUNNING
        assert get_json(handles["api"].url, "/health") == {"ok": True}
        assert get_json(handles["api"].url, "/env/GREETING")["value"] == "hi"
        assert get_json(handles["router"].url, "/health") == {"kind": "router"}
        assert get_json(handles["factory"].url, "/health") == {"kind": "factory"}
        assert handles["seed"].state == "completed" and handles["cache"].state == "running"
        expected_runner = "in_process" if mode == "single_process" else "subprocess"
        assert handles["api"].runner == expected_runner
        assert (handles["api"].pid is None) == (mode == "single_process")
        assert handles["router"].level == 3 and handles["cache"].level == 0
        report = launcher.report()
        api = report["runs"][0]["services"]["api"]
        seed = report["runs"][0]["services"]["seed"]
        assert api["started_at"] >= seed["ready_at"]  # started only once its dependencies were ready
        ports = [h.port for h in handles.values() if h.port]
    finally:
        await launcher.stop()
    assert launcher.get_status() is LauncherStatus.STOPPED
    assert all(is_free("127.0.0.1", p) for p in ports)
    assert launcher.report()["runs"][0]["total_teardown_seconds"] is not None


async def test_start_subset_starts_only_its_closure(graph_config: Path, no_orphans: None) -> None:
    """start(['seed']) starts seed and plain, nothing else."""
    async with UnifiedLauncher(load_config(graph_config, environ={})) as launcher:
        handles = await launcher.start(["seed"])
        assert sorted(handles) == ["plain", "seed"]
        assert launcher.services["cache"].state == "stopped"


async def test_tmpfs_scratch_lives_in_memory_and_is_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_orphans: None
) -> None:
    """A tmpfs service writes its ${tmp} in /dev/shm; stopping the launcher removes it."""
    from pytest_unified_launcher import config as config_mod

    monkeypatch.setattr(config_mod, "MEMORY_MIN_FREE", 0)  # it writes 1 kB, whatever the room
    path = write_config(tmp_path, """
        [services.writer]
        setup = [["{PY}", "-c", "open('${tmp}/data', 'w').write('x' * 1000)"]]
        command = ["{PY}", "{TCP}", "${port}"]
        tmpfs = true
    """)
    config = load_config(path, environ={})
    scratch = config.services["writer"].tmp
    assert scratch.parent == Path("/dev/shm") / config.tmp_root.name
    async with UnifiedLauncher(config) as launcher:
        await launcher.start()
        assert (scratch / "data").stat().st_size == 1000
    assert not scratch.parent.exists() and not config.tmp_root.exists()


async def test_exit_during_startup_fails_at_once_with_code_and_tail(tmp_path: Path, no_orphans: None) -> None:
    """A process that dies during startup is reported with its exit code and output, not a timeout."""
    path = write_config(tmp_path, """
        [services.crash]
        command = ["{PY}", "-c", "import sys; print('boom: bad settings'); sys.exit(3)"]
        port = "auto"
        startup_timeout = 120
    """)
    async with UnifiedLauncher(load_config(path, environ={})) as launcher:
        with pytest.raises(ServiceStartupError) as info:
            await launcher.start()
    assert info.value.service == "crash"
    assert "exited with code 3" in str(info.value) and "boom: bad settings" in str(info.value)
    assert launcher.get_status() is LauncherStatus.STOPPED


async def test_a_daemon_a_service_left_is_stopped_with_it(tmp_path: Path, no_orphans: None) -> None:
    """A process that left the service's group and ancestry (a double-forked daemon) stops with it."""
    path = write_config(tmp_path, """
        [services.web]
        command = ["{PY}", "{TCP}", "${port}", "--daemon-child"]
    """)
    async with UnifiedLauncher(load_config(path, environ={})) as launcher:
        await launcher.start()


async def test_command_that_daemonizes_is_told_to_stay_in_the_foreground(tmp_path: Path, no_orphans: None) -> None:
    """A command exiting 0 before it is ready is explained, and what it left in the background stops."""
    error = await start_error(tmp_path, """
        [services.daemon]
        command = ["{PY}", "-S", "-c", "import os, time\\nif os.fork() == 0:\\n    os.setsid()\\n    time.sleep(60)\\n"]
    """)  # -S (no site-packages, a third of the start time): it must exit within the default 0.5 s health
    message = str(error)
    assert "exited with code 0 before it was ready: a service's command must keep running in the foreground" in message
    assert "it left pid " in message and "in the background, which is stopped now" in message


@pytest.mark.parametrize(
    ("service", "expected"),
    [
        ('command = ["./not-executable.sh"]',
         "cannot run command './not-executable.sh': Permission denied (it is not executable: chmod +x ./not-executable.sh)"),
        ('command = ["{PY}", "-c", "import time; time.sleep(30)"]\nsetup = [["./not-executable.sh"]]',
         "cannot run setup command './not-executable.sh': Permission denied (it is not executable"),
        ('command = ["{PY}", "-c", "import time; time.sleep(30)"]\nhealth = { command = ["./not-executable.sh"] }',
         "health check (command ./not-executable.sh): cannot run probe command './not-executable.sh': Permission denied"),
        ('command = ["{PY}", "-c", "import time; time.sleep(30)"]\nhealth = { command = ["no-such-probe"] }',
         "health check (command no-such-probe): probe command 'no-such-probe' not found; is it installed and on PATH?"),
    ],
    ids=["command", "setup", "probe", "missing-probe"],
)
async def test_a_program_that_cannot_run_fails_at_once_with_the_fix(tmp_path: Path, service: str, expected: str,
                                                                      no_orphans: None) -> None:
    """A program that is missing or not executable fails the start at once (a probe's was retried
    until the timeout, a setup step's was a PermissionError trace)."""
    (tmp_path / "not-executable.sh").write_text("#!/bin/sh\nexit 0\n")
    path = write_config(tmp_path, f"[services.svc]\n{service}\nstartup_timeout = 60\n")
    async with UnifiedLauncher(load_config(path, environ={})) as launcher:
        with pytest.raises(ServiceStartupError) as info:
            await asyncio.wait_for(launcher.start(), 30)  # far below the 60 s timeout: no waiting it out
    assert expected in str(info.value)


async def test_notify_without_ready_says_what_was_missing(tmp_path: Path, no_orphans: None) -> None:
    """A notify service that never sends READY=1 says so, not "last probe: not probed yet"."""
    error = await start_error(tmp_path, """
        [services.quiet]
        command = ["{PY}", "-c", "import time; time.sleep(30)"]
        health = { notify = true }
        startup_timeout = 0.5
    """)
    assert "(last probe: no READY=1 on NOTIFY_SOCKET: the program must speak sd_notify" in str(error)


async def test_missing_cwd_is_named_not_the_command(tmp_path: Path, no_orphans: None) -> None:
    """A cwd that does not exist is named as such (spawning said the command was not found)."""
    error = await start_error(tmp_path, """
        [services.job]
        command = ["{PY}", "-c", "pass"]
        cwd = "no/such/dir"
        task = true
    """)
    assert f"its working directory {tmp_path / 'no' / 'such' / 'dir'} does not exist" in str(error)
    assert "not found" not in str(error)


async def test_health_path_answering_404_fails_without_waiting_out_the_timeout(tmp_path: Path,
                                                                               no_orphans: None) -> None:
    """A server that keeps answering 404 on the probed path fails once that has lasted about a
    second (not at its 60 s startup_timeout), named as a wrong path, with the key to fix."""
    error = await start_error(tmp_path, """
        [services.web]
        command = ["{PY}", "-m", "http.server", "${port}", "--bind", "127.0.0.1"]
        health = { http = "/nothere" }
        startup_timeout = 60
    """)
    message = str(error)
    assert "timed out" not in message
    assert "health check (http GET http://127.0.0.1:" in message
    assert ("/nothere answered HTTP 404 for 1.0 s: the server answers, but not on that path; "
            "check the service's health = { http = ... }") in message


async def test_health_timeout_names_the_last_probe(tmp_path: Path, no_orphans: None) -> None:
    """A service that never becomes healthy is killed and reported with the last probe's answer."""
    error = await start_error(tmp_path, """
        [services.mute]
        command = ["{PY}", "-c", "import time; print('starting'); time.sleep(60)"]
        port = "auto"
        health = { tcp = true }
        startup_timeout = 1
    """)
    assert "health check (tcp) timed out after 1.0 s (last probe: connection refused)" in str(error)
    assert "starting" in error.log_tail


async def test_failure_fails_dependents_and_spares_others(tmp_path: Path, no_orphans: None) -> None:
    """A failed service fails its dependents without starting them; unrelated services run on."""
    path = write_config(tmp_path, """
        [services.good]
        command = ["{PY}", "{TCP}", "${port}"]
        [services.bad]
        command = ["{PY}", "-c", "raise SystemExit(7)"]
        [services.child]
        command = ["{PY}", "{TCP}", "${port}"]
        depends_on = ["bad"]
    """)
    async with UnifiedLauncher(load_config(path, environ={})) as launcher:
        with pytest.raises(ServiceStartupError) as info:
            await launcher.start()
        assert info.value.service == "bad" and "exited with code 7" in str(info.value)
        assert launcher.services["good"].state == "running"
        assert launcher.services["child"].state == "stopped" and launcher.services["child"].pid is None
        assert launcher.get_status() is LauncherStatus.DEGRADED
        # Remembered: asking again fails the same way without another attempt.
        with pytest.raises(ServiceStartupError, match="service 'bad' failed to start: exited with code 7"):
            await launcher.start(["child"])
        assert launcher.report()["runs"][0]["services"]["bad"]["attempts"] == 1


async def test_failing_task_reports_its_output(tmp_path: Path, no_orphans: None) -> None:
    """A task that exits non-zero fails with its log tail; its dependents never start."""
    error = await start_error(tmp_path, """
        [services.migrate]
        command = ["{PY}", "-c", "print('migration 002 failed'); raise SystemExit(1)"]
        task = true
        [services.app]
        command = ["{PY}", "{TCP}", "${port}"]
        depends_on = ["migrate"]
    """)
    assert error.service == "migrate" and "migration 002 failed" in error.log_tail


async def test_retries_with_backoff(tmp_path: Path, no_orphans: None) -> None:
    """retries = 2: a first failed attempt is followed by a second, which succeeds."""
    marker = tmp_path / "tried"
    path = write_config(tmp_path, f"""
        [services.flaky]
        command = ["{{PY}}", "-c", "import os,sys,runpy; p='{marker}'; done=os.path.exists(p); open(p,'w').close(); sys.argv=['x','${{port}}']; sys.exit(1) if not done else runpy.run_path('{{TCP}}', run_name='__main__')"]
        retries = 2
    """)
    async with UnifiedLauncher(load_config(path, environ={})) as launcher:
        handles = await launcher.start()
        assert handles["flaky"].state == "running"
        assert launcher.report()["runs"][0]["services"]["flaky"]["attempts"] == 2


async def test_sigterm_ignored_gets_sigkill_and_grandchild_dies(tmp_path: Path, no_orphans: None) -> None:
    """A service ignoring SIGTERM is killed after stop_timeout; a forked grandchild does not survive."""
    path = write_config(tmp_path, """
        [services.stubborn]
        command = ["{PY}", "{TCP}", "${port}", "--ignore-term"]
        stop_timeout = 0.5
        [services.forker]
        command = ["{PY}", "{TCP}", "${port}", "--fork"]
    """)
    import psutil

    async with UnifiedLauncher(load_config(path, environ={})) as launcher:
        handles = await launcher.start()
        kids = psutil.Process(handles["forker"].pid).children(recursive=True)
        assert kids, "the forker should have a child"
    assert not any(k.is_running() and k.status() != psutil.STATUS_ZOMBIE for k in kids)


async def test_port_in_use_is_reported(tmp_path: Path, no_orphans: None) -> None:
    """A fixed port another process holds fails that service naming the port."""
    import socket

    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    port = holder.getsockname()[1]
    path = write_config(tmp_path, f"""
        [services.clash]
        command = ["{{PY}}", "{{TCP}}", "${{port}}"]
        port = {port}
    """)
    try:
        async with UnifiedLauncher(load_config(path, environ={})) as launcher:
            with pytest.raises(ServiceStartupError, match=f"port {port} already in use"):
                await launcher.start()
    finally:
        holder.close()


async def test_setup_runs_before_every_start(tmp_path: Path, no_orphans: None) -> None:
    """setup commands run before the service, in its ${tmp}; a failing setup fails the start."""
    path = write_config(tmp_path, """
        [services.svc]
        setup = [["{PY}", "-c", "open('${tmp}/ready.txt','w').write('x')"]]
        command = ["{PY}", "-c", "import os,sys,runpy; assert os.path.exists('${tmp}/ready.txt'); sys.argv=['x','${port}']; runpy.run_path('{TCP}', run_name='__main__')"]
        [services.badsetup]
        setup = ["false"]
        command = ["sleep", "30"]
    """)
    async with UnifiedLauncher(load_config(path, environ={})) as launcher:
        assert (await launcher.start(["svc"]))["svc"].state == "running"
        with pytest.raises(ServiceStartupError, match="setup command `false` exited with code 1"):
            await launcher.start(["badsetup"])


async def test_handle_restart_and_died_service(tmp_path: Path, no_orphans: None) -> None:
    """restart() gives a new process; a service that dies is reported on the next start, not restarted."""
    import os
    import signal

    path = write_config(tmp_path, """
        [services.svc]
        command = ["{PY}", "{TCP}", "${port}"]
    """)
    async with UnifiedLauncher(load_config(path, environ={})) as launcher:
        handle = (await launcher.start())["svc"]
        first = handle.pid
        await handle.arestart()
        assert handle.pid is not None and handle.pid != first and handle.state == "running"
        os.kill(handle.pid, signal.SIGKILL)
        await asyncio.sleep(0.2)
        with pytest.raises(ServiceStartupError, match="is no longer running: was killed by SIGKILL"):
            await launcher.start()


async def test_in_process_app_sees_env_and_lifespan(graph_config: Path, no_orphans: None) -> None:
    """An in-process app's env is in os.environ before import, and its lifespan runs both ways."""
    sys.modules.pop("web", None)
    config = load_config(graph_config, mode="single_process", environ={})
    launcher = UnifiedLauncher(config)
    try:
        handles = await launcher.start(["api"])
        import web  # type: ignore[import-not-found]  # the test's copy, imported by the launcher from the config folder

        assert web.LIFESPAN_EVENTS == ["startup"]
        assert get_json(handles["api"].url, "/env/REDIS_URL")["value"].startswith("redis://127.0.0.1:")
    finally:
        await launcher.stop()
    assert web.LIFESPAN_EVENTS == ["startup", "shutdown"]
    sys.modules.pop("web", None)


@pytest.mark.parametrize(
    ("mode", "app", "expected"),
    [
        ("single_process", "hanging", "the app's lifespan startup did not finish within {timeout:.1f} s"),
        ("single_process", "failing", "the app's lifespan startup failed"),
        ("multi_process", "hanging", "last probe: the app never started listening"),
        ("multi_process", "failing", "exited with code 5 (the app's lifespan startup failed)"),
    ],
)
async def test_app_lifespan_that_hangs_or_fails(tmp_path: Path, mode: str, app: str, expected: str,
                                                no_orphans: None) -> None:
    """A lifespan startup that hangs ends at the startup timeout (in-process it ran on unbounded),
    and one that fails is named; the launcher then still starts another app (a failed lifespan
    once stopped its event-loop thread).

    No fixed short deadline: a failing app is waited for until it exits (an event), and a hanging
    one's timeout is a multiple of how long a healthy app took to start here and now (a fixed 1 s
    cut off a loaded machine's app before its failure, and blamed the timeout)."""
    (tmp_path / "web.py").write_text((APPS / "web.py").read_text())
    pace = await _cold_start_seconds(tmp_path, mode)
    timeout = round(max(1.0, 4 * pace), 1) if app == "hanging" else 600.0
    path = write_config(tmp_path, f"""
        [services.bad]
        app = "web:{app}"
        startup_timeout = {timeout}
        [services.good]
        app = "web:app"
        health = {{ http = "/health" }}
    """)
    guard = timeout + 60 * max(1.0, pace)  # only against a hang of the test itself
    sys.modules.pop("web", None)
    async with UnifiedLauncher(load_config(path, mode=mode, environ={})) as launcher:
        with pytest.raises(ServiceStartupError) as info:
            await asyncio.wait_for(launcher.start(["bad"]), guard)
        assert expected.format(timeout=timeout) in str(info.value)
        handles = await asyncio.wait_for(launcher.start(["good"]), guard)
        assert get_json(handles["good"].url, "/health") == {"ok": True}
    sys.modules.pop("web", None)


async def _cold_start_seconds(folder: Path, mode: str) -> float:
    """How long a healthy app (``folder``'s web.py) takes to start from cold in ``mode`` on this
    machine now: the pace a test's deadlines are scaled by."""
    path = write_config(folder, """
        [services.good]
        app = "web:app"
        health = { http = "/health" }
    """)
    sys.modules.pop("web", None)
    async with UnifiedLauncher(load_config(path, mode=mode, environ={})) as launcher:
        handles = await launcher.start(["good"])
        seconds = handles["good"].startup_seconds
    sys.modules.pop("web", None)
    assert seconds is not None
    return seconds


async def test_in_process_import_over_the_timeout_is_named(tmp_path: Path, no_orphans: None) -> None:
    """An in-process app whose import outlasts startup_timeout is told so (it blamed the lifespan)."""
    (tmp_path / "slow.py").write_text("import time\ntime.sleep(1.2)\nfrom fastapi import FastAPI\napp = FastAPI()\n")
    path = write_config(tmp_path, """
        [services.slow]
        app = "slow:app"
        startup_timeout = 0.5
    """)
    sys.modules.pop("slow", None)
    async with UnifiedLauncher(load_config(path, mode="single_process", environ={})) as launcher:
        with pytest.raises(ServiceStartupError) as info:
            await launcher.start()
    sys.modules.pop("slow", None)
    assert re.search(r"importing 'slow:app' took \d+\.\d s, over its startup_timeout of 0\.5 s", str(info.value))


async def test_sys_exit_in_an_in_process_apps_task_does_not_stop_the_launcher(tmp_path: Path,
                                                                                no_orphans: None) -> None:
    """An in-process app's background task calling sys.exit does not kill the launcher's loop
    (asyncio lets SystemExit escape run_forever: every later start and stop then hung)."""
    (tmp_path / "web.py").write_text((APPS / "web.py").read_text())
    path = write_config(tmp_path, """
        [services.api]
        app = "web:app"
        health = { http = "/health" }
        [services.other]
        command = ["{PY}", "{TCP}", "${port}"]
    """)
    sys.modules.pop("web", None)
    launcher = UnifiedLauncher(load_config(path, mode="single_process", environ={}))
    try:
        handles = await asyncio.wait_for(launcher.start(["api"]), 20)
        assert get_json(handles["api"].url, "/exit-in-background") == {"scheduled": True}
        await asyncio.sleep(0.1)
        handles = await asyncio.wait_for(launcher.start(["other"]), 20)  # the loop still works
        assert handles["other"].state == "running"
    finally:
        await asyncio.wait_for(launcher.stop(), 20)
        sys.modules.pop("web", None)


async def test_bad_app_import_string(tmp_path: Path, no_orphans: None) -> None:
    """A wrong app import string fails that service with a precise message in both modes."""
    path = write_config(tmp_path, """
        [services.api]
        app = "nosuchmodule:app"
    """)
    for mode in ("single_process", "multi_process"):
        async with UnifiedLauncher(load_config(path, mode=mode, environ={})) as launcher:
            with pytest.raises(ServiceStartupError, match="cannot import module 'nosuchmodule'"):
                await launcher.start()


def test_explicit_single_process_conflict_raises_config_error(tmp_path: Path) -> None:
    """Two in-process apps with one variable set differently cannot share a process."""
    path = write_config(tmp_path, """
        [launcher]
        mode = "single_process"
        [services.a]
        app = "web:app"
        env = { X = "1" }
        [services.b]
        app = "web:app"
        env = { X = "2" }
    """)
    with pytest.raises(ConfigError, match="set X to different values"):
        UnifiedLauncher(load_config(path, environ={}))


async def test_taken_auto_port_moves_when_nothing_refers_to_it(tmp_path: Path, no_orphans: None) -> None:
    """An auto port taken after it was reserved: a service nobody refers to moves to a new port;
    one whose address another service uses fails clearly instead."""
    import socket

    path = write_config(tmp_path, """
        [services.loner]
        command = ["{PY}", "{TCP}", "${port}"]
        [services.base]
        command = ["{PY}", "{TCP}", "${port}"]
        [services.user]
        command = ["{PY}", "-c", "print('${services.base.port}')"]
        task = true
        depends_on = ["base"]
    """)
    config = load_config(path, environ={})
    squatters = []
    for name in ("loner", "base"):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", config.services[name].port))
        sock.listen(1)
        squatters.append(sock)
    try:
        async with UnifiedLauncher(config) as launcher:
            loner = (await launcher.start(["loner"]))["loner"]
            assert loner.port != config.services["loner"].port and loner.state == "running"
            assert loner.url == f"tcp://127.0.0.1:{loner.port}"
            assert launcher.report()["runs"][0]["services"]["loner"]["attempts"] == 1
            with pytest.raises(ServiceStartupError, match=f"port {config.services['base'].port} already in use"):
                await launcher.start(["user"])
    finally:
        for sock in squatters:
            sock.close()


async def test_report_keeps_the_first_start_and_names_death_and_interruption(tmp_path: Path, no_orphans: None) -> None:
    """The run keeps a restarted service's first start (restarts apart, not counted as startup),
    marks one that died before its stop as died, and one whose start was cut short as interrupted."""
    import os
    import signal

    from pytest_unified_launcher._process import process_token

    path = write_config(tmp_path, """
        [services.svc]
        command = ["{PY}", "{TCP}", "${port}"]
        [services.slow]
        command = ["{PY}", "-c", "import time; time.sleep(60)"]
        port = "auto"
        health = { tcp = true }
        startup_timeout = 60
    """)
    async with UnifiedLauncher(load_config(path, environ={})) as launcher:
        handle = (await launcher.start(["svc"]))["svc"]
        first = launcher.report()["runs"][0]
        await handle.arestart()
        assert launcher.report()["runs"][0]["total_startup_seconds"] == first["total_startup_seconds"]
        assert handle.pid is not None
        os.kill(handle.pid, signal.SIGKILL)
        while process_token(handle.pid) != "?":  # dead (a zombie until the launcher collects it)  # noqa: ASYNC110 (polling another process)
            await asyncio.sleep(0.01)
        starting = asyncio.ensure_future(launcher.start(["slow"]))
        while launcher.services["slow"].pid is None:  # noqa: ASYNC110 (polling the launcher from outside)
            await asyncio.sleep(0.01)
        await launcher.stop(close=False)
        with pytest.raises(asyncio.CancelledError):
            await starting
        run = launcher.report()["runs"][0]
    svc = run["services"]["svc"]
    assert svc["started_at"] == first["services"]["svc"]["started_at"]
    assert len(svc["restarts"]) == 1 and svc["restarts"][0]["started_at"] > svc["ready_at"]
    assert svc["died"] == "was killed by SIGKILL"
    assert run["services"]["slow"]["interrupted"] is True


async def test_two_environments_of_one_project_log_apart(tmp_path: Path, no_orphans: None) -> None:
    """Two launchers of one config running at once (two pytest sessions in one project) write
    separate logs: the second one's go to logs/<its id>/ (they replaced each other's)."""
    path = write_config(tmp_path, """
        [launcher]
        state_dir = "state"
        [services.plain]
        command = ["{PY}", "{TCP}", "${port}"]
    """)
    async with UnifiedLauncher(load_config(path, environ={})) as first, \
            UnifiedLauncher(load_config(path, environ={})) as second:
        one = (await first.start())["plain"]
        two = (await second.start())["plain"]
        assert one.log_path == tmp_path / "state" / "logs" / "plain.log"
        assert two.log_path == tmp_path / "state" / "logs" / second.id / "plain.log"
        assert str(one.port) in one.logs() and str(two.port) not in one.logs()
        assert str(two.port) in two.logs()


async def test_a_setup_step_cut_short_gets_the_stop_signal_before_sigkill(tmp_path: Path, no_orphans: None) -> None:
    """A setup step over the startup timeout (or cut short by Ctrl-C) is asked to stop first, as a
    service is: initdb's bootstrap backend killed with SIGKILL leaves its shared memory behind."""
    cleaned = tmp_path / "cleaned"
    step = (
        "import signal,sys,time,pathlib\n"
        f"signal.signal(signal.SIGTERM, lambda *a: (pathlib.Path({str(cleaned)!r}).write_text('x'), sys.exit(1)))\n"
        f"pathlib.Path({str(tmp_path / 'started')!r}).write_text('x')\n"
        "time.sleep(60)\n"
    )
    error = await start_error(tmp_path, f"""
        [services.db]
        setup = [["{{PY}}", "-c", {json.dumps(step)}]]
        command = ["sleep", "30"]
        startup_timeout = 2
    """)
    assert "did not finish within 2.0 s" in str(error)
    assert (tmp_path / "started").exists()
    assert cleaned.exists(), "the setup step got SIGKILL without a chance to clean up"


#: A service that exits once ${tmp}/quit exists, and notes a SIGTERM in the file argv[2].
POLITE = (
    "import os,pathlib,signal,sys,time\n"
    "tmp, term = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])\n"
    "signal.signal(signal.SIGTERM, lambda *a: (term.write_text('x'), sys.exit(0)))\n"
    "while not (tmp / 'quit').exists(): time.sleep(0.02)\n"
)


@pytest.mark.parametrize(
    ("stop_command", "signalled"),
    [
        ('["{PY}", "-c", "import pathlib; pathlib.Path(\'${tmp}/quit\').touch()"]', False),
        ('["{PY}", "-c", "import sys; sys.exit(3)"]', True),
        ('["{PY}", "-c", "pass"]', True),
        ('["./no-such-program"]', True),
    ],
    ids=["stops-it", "fails", "succeeds-but-it-keeps-running", "cannot-run"],
)
async def test_stop_command_runs_before_the_stop_signal(tmp_path: Path, stop_command: str, signalled: bool,
                                                        no_orphans: None, caplog: pytest.LogCaptureFixture) -> None:
    """stop_command (compose users' `redis-cli shutdown`) runs first, with placeholders; when it
    fails, or the service is still running when stop_timeout is up, the stop signal follows."""
    path = write_config(tmp_path, f"""
        [services.svc]
        command = ["{{PY}}", "-c", {json.dumps(POLITE)}, "${{tmp}}", "{tmp_path / 'term'}"]
        stop_command = {stop_command}
        stop_timeout = 1
    """)
    async with UnifiedLauncher(load_config(path, environ={})) as launcher:
        handle = (await launcher.start())["svc"]
        await launcher.stop(close=False)
        assert handle.state == "stopped"
        assert (tmp_path / "term").exists() is signalled
    if signalled:
        assert "stop_command" in caplog.text and "sending signal 15" in caplog.text


# --------------------------------------------------------------------------- depends_on conditions (SPEC 11)

#: Listens at once, says "ready" in its log only once ${tmp}/go exists.
LATE_READY = (
    "import pathlib,socket,sys,time\n"
    "s = socket.socket(); s.bind(('127.0.0.1', int(sys.argv[1]))); s.listen()\n"
    "while not pathlib.Path(sys.argv[2], 'go').exists(): time.sleep(0.02)\n"
    "print('ready', flush=True); time.sleep(300)\n"
)


async def test_condition_started_starts_a_dependent_before_its_dependency_is_healthy(tmp_path: Path,
                                                                                     no_orphans: None) -> None:
    """condition = "started" (compose's service_started): the dependent starts once the
    dependency's process runs; a plain name still waits for healthy."""
    path = write_config(tmp_path, f"""
        [services.slow]
        command = ["{{PY}}", "-c", {json.dumps(LATE_READY)}, "${{port}}", "${{tmp}}"]
        health = {{ log = "ready" }}
        [services.eager]
        command = ["{{PY}}", "-c", "import pathlib,time; pathlib.Path('{tmp_path}/go-dir').mkdir(); time.sleep(300)"]
        depends_on = [{{ service = "slow", condition = "started" }}]
        [services.patient]
        command = ["sleep", "300"]
        depends_on = ["slow"]
    """)
    async with UnifiedLauncher(load_config(path, environ={})) as launcher:
        starting = asyncio.ensure_future(launcher.start())
        while not (tmp_path / "go-dir").exists():  # until eager's process has run
            assert not starting.done(), starting.result()
            await asyncio.sleep(0.02)
        assert launcher.services["slow"].state == "starting"  # not healthy yet, and eager ran
        assert launcher.services["patient"].pid is None  # waits for slow to be healthy
        (launcher.config.services["slow"].tmp / "go").touch()
        handles = await starting
        assert {n: h.state for n, h in handles.items()} == dict.fromkeys(handles, "running")
        runs = launcher.report()["runs"][0]["services"]
        assert runs["patient"]["started_at"] >= runs["slow"]["ready_at"]


async def test_an_optional_dependency_that_fails_or_is_missing_is_skipped(tmp_path: Path, no_orphans: None,
                                                                         caplog: pytest.LogCaptureFixture) -> None:
    """required = false: a dependency that fails, or that the config does not define, is skipped
    with a note; a required one still fails its dependents."""
    path = write_config(tmp_path, """
        [services.broken]
        command = ["{PY}", "-c", "import sys; sys.exit(3)"]
        [services.app]
        command = ["sleep", "300"]
        depends_on = [{ service = "broken", required = false }, { service = "search", required = false }]
        [services.strict]
        command = ["sleep", "300"]
        depends_on = ["broken"]
    """)
    async with UnifiedLauncher(load_config(path, environ={})) as launcher:
        assert (await launcher.start(["app"]))["app"].state == "running"
        with pytest.raises(ServiceStartupError, match="'broken' failed to start: exited with code 3"):
            await launcher.start(["strict"])
    assert "optional dependency 'broken' failed" in caplog.text
    assert "optional dependency 'search' is not defined in the config: starting without it" in caplog.text


async def test_restart_true_restarts_the_dependent_with_its_dependency(tmp_path: Path, no_orphans: None) -> None:
    """A test's restart() of a dependency restarts the running dependents that say restart = true
    (and theirs), and leaves the others alone, as compose does."""
    path = write_config(tmp_path, """
        [services.cache]
        command = ["{PY}", "{TCP}", "${port}"]
        [services.worker]
        command = ["sleep", "300"]
        depends_on = [{ service = "cache", restart = true }]
        [services.reporter]
        command = ["sleep", "301"]
        depends_on = [{ service = "worker", restart = true }]
        [services.viewer]
        command = ["sleep", "302"]
        depends_on = ["cache"]
    """)
    async with UnifiedLauncher(load_config(path, environ={})) as launcher:
        handles = await launcher.start()
        before = {n: h.pid for n, h in handles.items()}
        await handles["cache"].arestart()
        after = {n: h.pid for n, h in launcher.services.items()}
        assert [n for n in sorted(before) if after[n] != before[n]] == ["cache", "reporter", "worker"]
        assert all(h.state == "running" for h in launcher.services.values())


NOTIFY_WHEN_TOLD = (
    "import os, pathlib, socket, sys, time\n"
    "folder = pathlib.Path(sys.argv[1])\n"
    "(folder / f'spawned-{os.getpid()}').touch()\n"
    "while not (folder / 'go').exists():\n"
    "    time.sleep(0.01)\n"
    "socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).sendto(b'READY=1', os.environ['NOTIFY_SOCKET'])\n"
    "time.sleep(300)\n"
)


def test_a_restart_by_another_launcher_keeps_its_notify_socket(tmp_path: Path, no_orphans: None) -> None:
    """Shared xdist: worker B restarts a notify service worker A started; A ending its session
    (or adopting the new instance) must not remove the socket B's new instance reports READY=1
    on. Both used one path, so A's cleanup removed B's socket: redis-server's restart in the
    example project timed out with "sd_notify: -2" on CI."""
    import threading

    from pytest_unified_launcher._process import process_token

    script = tmp_path / "notify_when_told.py"
    script.write_text(NOTIFY_WHEN_TOLD)
    config = load_config(write_config(tmp_path, f"""
        [services.db]
        command = ["{{PY}}", "{script}", "{tmp_path}"]
        health = {{ notify = true }}
        startup_timeout = 20
    """), environ={})
    (tmp_path / "go").touch()
    first = UnifiedLauncher(config)
    pid = first.start_blocking(["db"])["db"].pid
    assert pid is not None
    (tmp_path / "go").unlink()
    second = UnifiedLauncher(config)
    try:
        second.adopt("db", pid=pid, token=process_token(pid))
        second.stop_blocking(["db"], close=False)
        outcome: list[BaseException | None] = []

        def restart() -> None:
            try:
                second.start_blocking(["db"])
                outcome.append(None)
            except BaseException as exc:
                outcome.append(exc)

        thread = threading.Thread(target=restart)
        thread.start()
        for _ in range(2000):
            if len(list(tmp_path.glob("spawned-*"))) == 2:
                break
            thread.join(0.01)
        assert len(list(tmp_path.glob("spawned-*"))) == 2, "the restart never spawned its process"
        first.forget()  # A's session ends while B's new instance is starting
        (tmp_path / "go").touch()
        thread.join(30)
        assert outcome == [None]
        assert second.services["db"].state == "running" and second.services["db"].pid != pid
    finally:
        second.stop_blocking()


async def test_an_external_service_that_never_answers_says_which_url_and_why(tmp_path: Path,
                                                                             no_orphans: None) -> None:
    """A url service is only waited for: unhealthy, it fails naming its URL and the last probe;
    a probe that cannot run fails at once, not at the timeout."""
    import socket

    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    error = await start_error(tmp_path, f"""
        [services.payments]
        url = "http://127.0.0.1:{port}"
        health = {{ tcp = true }}
        startup_timeout = 0.5
    """)
    assert str(error) == (f"service 'payments' failed to start: external service http://127.0.0.1:{port} "
                          "not healthy after 0.5 s (last probe: connection refused)")
    error = await asyncio.wait_for(start_error(tmp_path, f"""
        [services.payments]
        url = "http://127.0.0.1:{port}"
        health = {{ command = ["no-such-probe"] }}
        startup_timeout = 60
    """), 30)
    assert "probe command 'no-such-probe' not found; is it installed and on PATH?" in str(error)


async def test_a_start_cancelled_while_spawning_is_stopped_not_hung(tmp_path: Path) -> None:
    """Ctrl-C lands while a service's process is being spawned: the spawn completes (shielded)
    and stop() takes it over. It took it over without its start token, so every signal to it was
    refused and stop() waited forever for an exit (`up` hung after Ctrl-C under load)."""
    import os

    import psutil

    from pytest_unified_launcher._process import spawn
    from pytest_unified_launcher.runners import RunContext
    from pytest_unified_launcher.runners.subprocess import SubprocessRunner

    path = write_config(tmp_path, """
        [services.plain]
        command = ["{PY}", "{TCP}", "${port}"]
        stop_timeout = 0.5
        """)
    svc = load_config(path, environ={}).services["plain"]
    ctx = RunContext(launcher_id="cancelled-spawn", root=tmp_path, log_dir=tmp_path / "logs", base_env=dict(os.environ))
    runner = SubprocessRunner(svc, ctx)
    # The state a cancellation during `await shield(self._spawning)` leaves: spawning, no proc yet.
    runner._log_fd = runner._open_log()
    runner._spawning = asyncio.ensure_future(spawn(list(svc.command), env=ctx.service_env(svc), cwd=svc.cwd,
                                                   log_file=runner._log_fd))
    await asyncio.sleep(0.2)
    pid = (await asyncio.shield(runner._spawning)).pid
    await asyncio.wait_for(runner.stop(), timeout=30)
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
