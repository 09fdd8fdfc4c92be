"""Fault injection into real runs: each fault looped, orphans counted with psutil after each.

The default run loops each process-level fault a few times; `pytest -m reliability` runs the
full suite (20 loops each, bounded in count and time) and prints the tally that the README's
reliability section quotes.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from conftest import PY, TCP, default_sigint, launcher_processes
from leftovers import SEED, KilledRun, copy_example
from pytest_unified_launcher import ServiceStartupError, UnifiedLauncher, load_config

FULL = 20
FAST = 2
TALLY: dict[str, list[int]] = {}
#: SIGKILL faults: name -> [runs, killed mid-session, runs that left anything].
KILLS: dict[str, list[int]] = {}


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

    async def go() -> None:
        async with UnifiedLauncher(load_config(path, environ={})) as launcher:
            assert (await launcher.start())["svc"].state == "running"

    asyncio.run(go())
    assert not (run_dir / "garbage.json").exists() and not (run_dir / "stale.json").exists()


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


# --------------------------------------------------------------------------- SIGKILL, with no later run


def kill_runs(name: str, times: int, body: Callable[[Path, random.Random], KilledRun]) -> None:
    """Run ``body`` ``times`` times, each a session it kills; fail naming whatever any run left."""
    rng = random.Random(f"{SEED}:{name}")
    failures = []
    mid_session = 0
    for i in range(times):
        work = Path(tempfile.mkdtemp(prefix="reliability-kill-"))
        work.chmod(0o755)  # the example's database runs as `postgres` in the project folder
        try:
            run = body(work, rng)
            left = run.settle()
            mid_session += run.mid_session
            when = f"SIGKILL at {run.killed_at:.2f} s{'' if run.mid_session else ' (the session had ended)'}"
            print(f"{name} #{i} (UL_KILL_SEED={SEED}): {when}: {'; '.join(left) or 'nothing left'}")
            if left:
                tail = run.out.read_text(errors="replace")[-1500:]
                failures.append(f"#{i}, {when}: {left}\n--- its output:\n{tail}")
        finally:
            shutil.rmtree(work, ignore_errors=True)
    KILLS[name] = [times, mid_session, len(failures)]
    assert not failures, (f"{name} (replay: UL_KILL_SEED={SEED}): left after SIGKILL, with no later run:\n"
                          + "\n".join(failures))


#: The example's session, per mode: pytest's arguments.
EXAMPLE_MODES = {"single_process": [], "multi_process": ["--launcher-profile=ci"], "-n 2 shared": ["-n", "2"]}
#: mode -> seconds a whole session of the example lasts here (measured once, by a run left alone).
SESSION_SECONDS: dict[str, float] = {}


def session_seconds(mode: str) -> float:
    """How long the example's session lasts on this machine now: the kill moments are drawn up to it."""
    if mode not in SESSION_SECONDS:
        work = Path(tempfile.mkdtemp(prefix="reliability-kill-"))
        work.chmod(0o755)
        try:
            run = KilledRun(copy_example(work), EXAMPLE_MODES[mode])
            run.watch(lambda: False, timeout=300)
            SESSION_SECONDS[mode] = time.monotonic() - run.t0
            run.kill()
            assert run.proc.returncode == 0, run.out.read_text()
            left = run.settle()
            assert not left, f"a whole session of the example ({mode}) left: {left}"
        finally:
            shutil.rmtree(work, ignore_errors=True)
        print(f"the example's session ({mode}) lasts {SESSION_SECONDS[mode]:.2f} s here")
    return SESSION_SECONDS[mode]


def example_at_random(mode: str) -> Callable[[Path, random.Random], KilledRun]:
    args = EXAMPLE_MODES[mode]

    def body(work: Path, rng: random.Random) -> KilledRun:
        delay = rng.uniform(0.0, session_seconds(mode))
        run = KilledRun(copy_example(work), args)
        run.kill(after=delay - (time.monotonic() - run.t0))
        return run

    return body


SMALL_SESSION = """
    import pytest

    @pytest.mark.services("{service}")
    def test_it(services):
        pass
"""


def small_project(work: Path, config: str, service: str) -> Path:
    project = work / "project"
    project.mkdir()
    write(project, config)
    (project / "test_it.py").write_text(textwrap.dedent(SMALL_SESSION.format(service=service)))
    (project / "pytest.ini").write_text("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    return project


def during_a_setup_sleep(work: Path, rng: random.Random) -> KilledRun:
    """A setup step that sleeps (its ${tmp} in /dev/shm): killed while it runs."""
    run = KilledRun(small_project(work, """
        [services.svc]
        setup = [["sleep", "300"]]
        command = ["{PY}", "{TCP}", "${port}"]
        tmpfs = true
        startup_timeout = 600
    """, "svc"), [])
    assert run.watch(lambda: run.running("300")), run.out.read_text()
    run.kill(after=rng.uniform(0.0, 0.5))
    return run


def during_initdb(work: Path, rng: random.Random) -> KilledRun:
    """The example's database setup with an empty template cache: killed while initdb runs."""
    cache = work / "cache"  # private to `postgres`: pg-init builds its template here, with initdb
    cache.mkdir(mode=0o700)
    os.chown(cache, pwd.getpwnam("postgres").pw_uid, -1)
    run = KilledRun(copy_example(work), [], env={"XDG_CACHE_HOME": str(cache)})
    assert run.watch(lambda: run.running("initdb")), run.out.read_text()
    run.kill(after=rng.uniform(0.0, 0.5))
    return run


SLOW_STOP = """
import signal, socket, sys, time

def stop(signum, frame):  # a slow stop: what a database flushing to disk looks like
    open("stopping", "w").close()
    time.sleep(60)
    sys.exit(0)

signal.signal(signal.SIGTERM, stop)
sock = socket.socket()
sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
sock.bind(("127.0.0.1", int(sys.argv[1])))
sock.listen(16)
while True:
    sock.accept()[0].close()
"""


def during_teardown(work: Path, rng: random.Random) -> KilledRun:
    """Two services being stopped at the session's end, one with a slow stop: killed meanwhile."""
    project = small_project(work, """
        [services.base]
        command = ["{PY}", "{TCP}", "${port}"]
        tmpfs = true
        [services.slow]
        command = ["{PY}", "slow_stop.py", "${port}"]
        depends_on = ["base"]
        stop_timeout = 120
        tmpfs = true
    """, "slow")
    (project / "slow_stop.py").write_text(SLOW_STOP)
    run = KilledRun(project, [])
    assert run.watch(lambda: (project / "stopping").exists()), run.out.read_text()
    run.kill(after=rng.uniform(0.0, 1.0))
    return run


PHASE_KILLS: dict[str, Callable[[Path, random.Random], KilledRun]] = {
    "SIGKILL during a setup step (sleep)": during_a_setup_sleep,
    "SIGKILL during a setup step (the example's initdb)": during_initdb,
    "SIGKILL during teardown (a slow stop)": during_teardown,
}
KILL_FAULTS = {**PHASE_KILLS,
               **{f"SIGKILL at random, the example, {mode}": example_at_random(mode) for mode in EXAMPLE_MODES}}


@pytest.mark.parametrize("fault", list(PHASE_KILLS))
def test_sigkill_fast(fault: str) -> None:
    """SIGKILL of pytest during a setup step and during teardown, once: nothing of the run is left, with no later run."""
    kill_runs(fault, 1, KILL_FAULTS[fault])


@pytest.mark.reliability
@pytest.mark.parametrize("fault", list(KILL_FAULTS))
def test_sigkill_loop(fault: str) -> None:
    """SIGKILL of pytest in each phase (20 random moments of the example's session): processes,
    ports, /dev/shm and ${tmp} folders, SysV segments, claims and run files all go, with no later run."""
    kill_runs(fault, FULL, KILL_FAULTS[fault])


@pytest.mark.reliability
def test_zz_print_tally() -> None:
    """Print the tally of the reliability run (quoted in the README)."""
    print("\n| fault | runs | orphans |\n|---|---|---|")
    for name, (runs, orphans) in TALLY.items():
        print(f"| {name} | {runs} | {orphans} |")
    print("\n| SIGKILL of pytest | runs | killed mid-session | runs that left anything |\n|---|---|---|---|")
    for name, (runs, mid_session, left) in KILLS.items():
        print(f"| {name.removeprefix('SIGKILL ')} | {runs} | {mid_session} | {left} |")
    assert TALLY
