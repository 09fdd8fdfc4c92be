"""Fault injection into real runs: each fault looped, orphans counted with psutil after each.

The default run loops each process-level fault a few times; `pytest -m reliability` runs the
full suite (20 loops each, bounded in count and time) and prints the tally that the README's
reliability section quotes.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from conftest import PY, TCP, default_sigint, launcher_processes
from pytest_unified_launcher import ServiceStartupError, UnifiedLauncher, load_config

FULL = 20
FAST = 2
TALLY: dict[str, list[int]] = {}


def write(tmp: Path, text: str) -> Path:
    path = tmp / "launcher.toml"
    path.write_text(textwrap.dedent(text).replace("{PY}", PY).replace("{TCP}", TCP))
    return path


def loop(name: str, times: int, tmp_path: Path, body: Callable[[Path, int], None]) -> None:
    """Run ``body`` ``times`` times; after each, count launcher processes still alive."""
    before = {p.pid for p in launcher_processes()}
    orphans = 0
    for i in range(times):
        work = tmp_path / f"run{i}"
        work.mkdir()
        body(work, i)
        left = [p for p in launcher_processes() if p.pid not in before]
        _, alive = psutil.wait_procs(left, timeout=3)
        orphans += len(alive)
        for p in alive:
            p.kill()
    TALLY[name] = [times, orphans]
    assert orphans == 0, f"{name}: {orphans} processes left over in {times} runs"


def start_expecting(path: Path, match: str) -> ServiceStartupError:
    async def go() -> ServiceStartupError:
        async with UnifiedLauncher(load_config(path, environ={})) as launcher:
            with pytest.raises(ServiceStartupError, match=match) as info:
                await launcher.start()
            return info.value

    return asyncio.run(go())


# --------------------------------------------------------------------------- the faults


def exits_during_startup(tmp: Path, i: int) -> None:
    output = "print('fatal: bad config', flush=True); " if i % 2 == 0 else ""
    path = write(tmp, f"""
        [services.dies]
        command = ["{{PY}}", "-c", "{output}raise SystemExit(4)"]
        port = "auto"
        startup_timeout = 60
    """)
    err = start_expecting(path, "exited with code 4")
    assert ("fatal: bad config" in err.log_tail) == (i % 2 == 0)


def never_healthy(tmp: Path, i: int) -> None:
    path = write(tmp, """
        [services.mute]
        command = ["sleep", "60"]
        port = "auto"
        startup_timeout = 0.3
    """)
    start_expecting(path, r"timed out after 0.3 s \(last probe: connection refused\)")


def crashes_mid_session(tmp: Path, i: int) -> None:
    path = write(tmp, """
        [services.svc]
        command = ["{PY}", "{TCP}", "${port}"]
    """)

    async def go() -> None:
        async with UnifiedLauncher(load_config(path, environ={})) as launcher:
            handle = (await launcher.start())["svc"]
            assert handle.pid is not None
            os.kill(handle.pid, signal.SIGSEGV)
            await asyncio.sleep(0.1)
            with pytest.raises(ServiceStartupError, match="is no longer running: was killed by SIGSEGV"):
                await launcher.start()

    asyncio.run(go())


def ignores_sigterm(tmp: Path, i: int) -> None:
    path = write(tmp, """
        [services.stubborn]
        command = ["{PY}", "{TCP}", "${port}", "--ignore-term"]
        stop_timeout = 0.2
    """)

    async def go() -> None:
        async with UnifiedLauncher(load_config(path, environ={})) as launcher:
            await launcher.start()

    asyncio.run(go())


def forks_and_exits(tmp: Path, i: int) -> None:
    path = write(tmp, """
        [services.daemonizes]
        command = ["{PY}", "-c", "import os, time; os.fork() == 0 and time.sleep(60)"]
        port = "auto"
    """)
    start_expecting(path, "exited with code 0")


def floods_logs(tmp: Path, i: int) -> None:
    path = write(tmp, """
        [services.chatty]
        command = ["{PY}", "-c", "import sys, runpy; sys.stdout.write(('x' * 1023 + '\\\\n') * 20480); sys.stdout.flush(); sys.argv = ['t', '${port}']; runpy.run_path('{TCP}', run_name='__main__')"]
    """)
    rss = psutil.Process().memory_info().rss

    async def go() -> None:
        async with UnifiedLauncher(load_config(path, environ={})) as launcher:
            handle = (await launcher.start())["chatty"]
            assert handle.log_path is not None and handle.log_path.stat().st_size >= 20 * 1024 * 1024
            assert "listening on" in handle.logs(5)

    asyncio.run(go())
    assert psutil.Process().memory_info().rss - rss < 64 * 1024 * 1024  # tails are read from the end


def fixed_port_taken(tmp: Path, i: int) -> None:
    holder = subprocess.Popen([PY, TCP, "0"], stdout=subprocess.PIPE, text=True)
    try:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
        port = _listening_port(holder.pid)
        path = write(tmp, f"""
            [services.clash]
            command = ["{{PY}}", "{{TCP}}", "${{port}}"]
            port = {port}
        """)
        err = start_expecting(path, f"port {port} already in use")
        assert f"pid {holder.pid}" in str(err)
    finally:
        holder.kill()
        holder.communicate()


def _listening_port(pid: int) -> int:
    end = time.monotonic() + 10
    while time.monotonic() < end:
        for conn in psutil.Process(pid).net_connections():
            if conn.status == psutil.CONN_LISTEN:
                return int(conn.laddr.port)
        time.sleep(0.02)
    raise AssertionError("holder never listened")


def two_launchers_at_once(tmp: Path, i: int) -> None:
    text = "".join(f'[services.s{k}]\ncommand = ["{{PY}}", "{{TCP}}", "${{port}}"]\n' for k in range(4))
    (tmp / "a").mkdir()
    (tmp / "b").mkdir()
    paths = [write(tmp / "a", text), write(tmp / "b", text)]

    async def go() -> None:
        launchers = [UnifiedLauncher(load_config(p, environ={})) for p in paths]
        try:
            results = await asyncio.gather(*(lch.start() for lch in launchers))
            ports = [h.port for r in results for h in r.values()]
            assert len(set(ports)) == len(ports) == 8
        finally:
            await asyncio.gather(*(lch.stop() for lch in launchers))

    asyncio.run(go())


def corrupt_state(tmp: Path, i: int) -> None:
    path = write(tmp, """
        [launcher]
        state_dir = "state"
        [services.svc]
        command = ["{PY}", "{TCP}", "${port}"]
    """)
    run_dir = tmp / "state" / "run"
    run_dir.mkdir(parents=True)
    (run_dir / "garbage.json").write_text("{not json")
    (run_dir / "stale.json").write_text('{"owner": {"pid": 999999, "token": "1"}, "processes": {"999998": {"service": "x", "token": "2"}}}')
    (tmp / "state" / "up.json").write_text("\x00\x01")
    from pytest_unified_launcher import _ports

    claims = _ports._CLAIMS
    claims.mkdir(mode=0o1777, exist_ok=True)
    (claims / "999999-1.json").write_text("[20001, ")  # a corrupt claim of a dead owner
    (claims / f"{os.getpid()}-garbage.json").write_text("{}")  # a stale token for a live pid
    (claims / ".lock").write_text("junk")

    async def go() -> None:
        async with UnifiedLauncher(load_config(path, environ={})) as launcher:
            assert (await launcher.start())["svc"].state == "running"

    asyncio.run(go())
    assert not (run_dir / "garbage.json").exists() and not (run_dir / "stale.json").exists()
    assert not (claims / "999999-1.json").exists() and not (claims / f"{os.getpid()}-garbage.json").exists()


def unwritable_state_dir(tmp: Path, i: int) -> None:
    path = write(tmp, """
        [launcher]
        state_dir = "/proc/unified-launcher-cannot-write-here"
        [services.svc]
        command = ["{PY}", "{TCP}", "${port}"]
    """)
    start_expecting(path, "cannot write its log under /proc/unified-launcher-cannot-write-here")


FAULTS: dict[str, Callable[[Path, int], None]] = {
    "exits during startup (with/without output)": exits_during_startup,
    "never becomes healthy": never_healthy,
    "crashes mid-session": crashes_mid_session,
    "ignores SIGTERM": ignores_sigterm,
    "forks a grandchild and exits": forks_and_exits,
    "20 MB of log output": floods_logs,
    "fixed port held by another process": fixed_port_taken,
    "two launchers at once, auto ports": two_launchers_at_once,
    "corrupt and stale state files": corrupt_state,
    "unwritable state_dir": unwritable_state_dir,
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_fault_fast(fault: str, tmp_path: Path) -> None:
    """Each fault, looped a few times in the default run: the right error, no orphans."""
    loop(fault, FAST, tmp_path, FAULTS[fault])


@pytest.mark.reliability
@pytest.mark.parametrize("fault", list(FAULTS))
def test_fault_loop(fault: str, tmp_path: Path) -> None:
    """Each fault looped 20 times: the right error every time, no orphans ever."""
    loop(fault, FULL, tmp_path, FAULTS[fault])


# --------------------------------------------------------------------------- Ctrl-C in pytest


PHASES = {
    "setup command": ('setup = [["sleep", "30"]]\ncommand = ["{PY}", "{TCP}", "${port}"]\n', "setup"),
    "mid-level": ('command = ["{PY}", "{TCP}", "${port}", "--delay", "30"]\ndepends_on = ["base"]\n', "spawn"),
    "during tests": ('command = ["{PY}", "{TCP}", "${port}"]\ndepends_on = ["base"]\n', "test"),
    "during teardown": ('command = ["{PY}", "{TCP}", "${port}", "--ignore-term"]\nstop_timeout = 3\ndepends_on = ["base"]\n',
                        "teardown"),
}


def ctrl_c(phase: str, tmp: Path, i: int) -> None:
    svc, when = PHASES[phase]
    text = ('[services.base]\ncommand = ["{PY}", "{TCP}", "${port}"]\n[services.target]\n' + svc)
    write(tmp, text)
    (tmp / "test_x.py").write_text(textwrap.dedent("""
        import pathlib, time
        import pytest

        @pytest.mark.services("target")
        def test_x():
            pathlib.Path("in-test").touch()
            time.sleep(0 if pathlib.Path("short").exists() else 60)
    """))
    if when == "teardown":
        (tmp / "short").touch()
    (tmp / "pytest.ini").write_text("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    proc = subprocess.Popen([PY, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-s"], cwd=tmp,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=default_sigint)
    end = time.monotonic() + 60
    while time.monotonic() < end:
        procs = launcher_processes()
        services = {p.environ().get("UNIFIED_LAUNCHER_SERVICE") for p in procs if p.is_running()}
        if when in ("setup", "spawn") and "target" in services:
            break
        if when == "test" and (tmp / "in-test").exists():
            break
        if when == "teardown" and (tmp / "in-test").exists():
            time.sleep(0.3)  # the test has returned; the stubborn service is being stopped
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode in (0, 2), out


@pytest.mark.parametrize("phase", list(PHASES))
def test_ctrl_c_fast(phase: str, tmp_path: Path) -> None:
    """Ctrl-C in every phase of a pytest session leaves nothing running."""
    loop(f"Ctrl-C {phase}", 1, tmp_path, lambda tmp, i: ctrl_c(phase, tmp, i))


@pytest.mark.reliability
@pytest.mark.parametrize("phase", list(PHASES))
def test_ctrl_c_loop(phase: str, tmp_path: Path) -> None:
    """Ctrl-C in every phase, 20 times each."""
    loop(f"Ctrl-C {phase}", FULL, tmp_path, lambda tmp, i: ctrl_c(phase, tmp, i))


@pytest.mark.reliability
def test_zz_print_tally() -> None:
    """Print the tally of the reliability run (quoted in the README)."""
    print("\n| fault | runs | orphans |\n|---|---|---|")
    for name, (runs, orphans) in TALLY.items():
        print(f"| {name} | {runs} | {orphans} |")
    assert TALLY
