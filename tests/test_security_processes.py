"""Trust (SPEC section 7) for processes and scratch folders, attacked as uid 101 ``postgres``.

Each test plants what a second local user could, runs the real launcher as root, and checks
that nothing of the victim's was touched: owners, modes, contents, processes alive.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from conftest import APPS, PY, TCP
from pytest_unified_launcher import LauncherConfig, ServiceStartupError, UnifiedLauncher, load_config
from pytest_unified_launcher._process import process_token

ATTACKER = "postgres"
SHM = Path("/dev/shm")

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="acts as a second user: needs root")


def as_attacker(*argv: str) -> None:
    """Run a system binary as the second user (it cannot enter /root, so no venv python)."""
    subprocess.run(list(argv), user=ATTACKER, check=True)


def write(tmp: Path, text: str) -> Path:
    path = tmp / "launcher.toml"
    path.write_text(textwrap.dedent(text).replace("{PY}", PY).replace("{TCP}", TCP))
    return path


def wait_for(check: Callable[[], bool], deadline: float = 30.0) -> bool:
    """Poll ``check`` until it holds (a generous deadline, never asserted as a duration)."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if check():
            return True
        time.sleep(0.05)
    return check()


@pytest.fixture
def scratch_name() -> Iterator[str]:
    """A fresh session scratch name (``ul-...``), removed on disk and in memory afterwards."""
    name = f"ul-sec{secrets.token_hex(4)}"
    yield name
    for root in (Path(tempfile.gettempdir()) / name, SHM / name):
        if root.is_symlink():
            root.unlink()
        else:
            shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def victim() -> Iterator[Path]:
    """A root-owned folder with a file: what an attacker wants chowned to itself (a stand-in /etc)."""
    folder = Path(tempfile.mkdtemp(prefix="victim-", dir="/var/tmp"))
    os.chmod(folder, 0o755)
    (folder / "shadow").write_text("secret\n")
    os.chmod(folder / "shadow", 0o600)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def untouched(victim: Path) -> None:
    for path in (victim, victim / "shadow"):
        st = os.lstat(path)
        assert (st.st_uid, st.st_gid) == (0, 0), f"{path} was chowned to {st.st_uid}:{st.st_gid}"
    assert (victim / "shadow").read_text() == "secret\n"
    assert os.lstat(victim / "shadow").st_mode & 0o777 == 0o600


# --------------------------------------------------------------------------- item 2: ${tmp} in /dev/shm


TMPFS_TASK = """
    [services.db]
    command = ["true"]
    task = true
    tmpfs = true
    user = "postgres"
    cwd = "/"
"""


@pytest.mark.parametrize("plant", ["link_as_service_dir", "link_inside_service_dir"])
def test_planted_memory_root_is_refused_not_chowned(plant: str, tmp_path: Path, scratch_name: str,
                                                    victim: Path) -> None:
    """A /dev/shm/ul-<id> pre-created by another user (with a link in it) is refused; its link's target is not chowned."""
    root = SHM / scratch_name
    as_attacker("mkdir", "-m", "777", str(root))
    if plant == "link_as_service_dir":
        as_attacker("ln", "-s", str(victim), str(root / "db"))
    else:
        as_attacker("mkdir", "-m", "777", str(root / "db"))
        as_attacker("ln", "-s", str(victim / "shadow"), str(root / "db" / "shadow"))
    config = load_config(write(tmp_path, TMPFS_TASK), environ={},
                         tmp_root=Path(tempfile.gettempdir()) / scratch_name)
    assert config.services["db"].tmp.parent == root

    async def go() -> None:
        async with UnifiedLauncher(config) as launcher:
            with pytest.raises(ServiceStartupError, match=r"already exists, owned by uid 101") as info:
                await launcher.start()
            assert "\n" not in str(info.value).split("\n\n")[0].strip()

    asyncio.run(go())
    untouched(victim)


def test_restart_does_not_follow_links_the_service_user_left(tmp_path: Path, scratch_name: str,
                                                             victim: Path) -> None:
    """On a restart, links the service user left in its own ${tmp} are not followed by the hand-over walk."""
    config = load_config(write(tmp_path, f"""
        [services.db]
        command = ["/bin/sh", "-c", "ln -sf {victim}/shadow ${{tmp}}/pwned; ln -sfn {victim} ${{tmp}}/etc"]
        task = true
        tmpfs = true
        user = "postgres"
        cwd = "/"
    """), environ={}, tmp_root=Path(tempfile.gettempdir()) / scratch_name)

    async def go() -> None:
        async with UnifiedLauncher(config) as launcher:
            await launcher.start()
            assert (config.services["db"].tmp / "pwned").is_symlink()
            await launcher.stop(["db"], close=False)  # a named stop keeps the session's scratch
            await launcher.start()

    asyncio.run(go())
    untouched(victim)


# --------------------------------------------------------------------------- item 4: pid reuse


def take_pid(pid: int, attempts: int = 200) -> subprocess.Popen[bytes] | None:
    """Start an unrelated group leader (``sleep``) with exactly ``pid`` (as root, via ns_last_pid)."""
    for _ in range(attempts):
        try:
            Path("/proc/sys/kernel/ns_last_pid").write_text(str(pid - 1))
        except OSError:
            pytest.skip("cannot set /proc/sys/kernel/ns_last_pid here")
        proc = subprocess.Popen(["sleep", "300"], start_new_session=True)
        if proc.pid == pid:
            return proc
        proc.kill()
        proc.wait()
    return None


REUSE_CONFIGS = {
    "command": """
        [services.svc]
        command = ["{PY}", "{TCP}", "${port}"]
    """,
    "forked_app": """
        [launcher]
        mode = "multi_process"
        spawner = "preimport"
        [services.svc]
        app = "web:app"
    """,
}


@pytest.mark.parametrize("kill_all", [False, True], ids=["stop", "kill_all"])
@pytest.mark.parametrize("kind", sorted(REUSE_CONFIGS))
def test_a_reused_pid_is_not_signalled_at_teardown(kind: str, kill_all: bool, tmp_path: Path) -> None:
    """A service that died mid-session is not 'stopped' by signalling whatever process got its pid
    later: neither by the teardown nor by kill_all (a second Ctrl-C)."""
    (tmp_path / "web.py").write_text((APPS / "web.py").read_text())
    config = load_config(write(tmp_path, REUSE_CONFIGS[kind]), environ={})

    async def go() -> subprocess.Popen[bytes] | None:
        async with UnifiedLauncher(config) as launcher:
            handle = (await launcher.start())["svc"]
            pid = handle.pid
            assert pid is not None
            os.kill(pid, signal.SIGKILL)
            assert await asyncio.to_thread(wait_for, lambda: not psutil.pid_exists(pid))
            unrelated = await asyncio.to_thread(take_pid, pid)
            if unrelated is None:
                pytest.skip("could not get the dead service's pid reused")
            try:
                if kill_all:
                    launcher.kill_all()
                await launcher.stop(close=False)
            except Exception:
                pass  # reporting the crash is fine; killing the bystander is not
            return unrelated

    unrelated = asyncio.run(go())
    assert unrelated is not None
    try:
        time.sleep(0.2)
        assert unrelated.poll() is None, f"an unrelated process with the reused pid was killed ({unrelated.returncode})"
    finally:
        unrelated.kill()
        unrelated.wait()


# --------------------------------------------------------------------------- item 17: notify.sock


NOTIFY_CLIENT = (
    "import os, socket, time\n"
    "s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)\n"
    "s.sendto(b'READY=1', os.environ['NOTIFY_SOCKET'])\n"
    "time.sleep(300)\n"
)


def notify_service_as_postgres(tmp_path: Path, scratch_name: str) -> tuple[LauncherConfig, Path]:
    """A notify service run as uid 101 `postgres`, and its client script (remove it afterwards)."""
    client = Path("/var/tmp") / f"{scratch_name}-notify.py"  # readable by the service user
    client.write_text(NOTIFY_CLIENT)
    os.chmod(client, 0o644)
    config = load_config(write(tmp_path, f"""
        [services.db]
        command = ["/usr/bin/python3", "{client}"]
        health = {{ notify = true }}
        user = "postgres"
        startup_timeout = 20
        cwd = "/"
    """), environ={}, tmp_root=Path(tempfile.gettempdir()) / scratch_name)
    return config, client


def test_service_user_cannot_squat_notify_socket(tmp_path: Path, scratch_name: str) -> None:
    """A service user that squats its NOTIFY_SOCKET's name between two starts cannot break or redirect the next start."""
    config, client = notify_service_as_postgres(tmp_path, scratch_name)
    tmp = config.services["db"].tmp

    async def go() -> None:
        async with UnifiedLauncher(config) as launcher:
            await launcher.start()
            await launcher.stop(["db"], close=False)
            # The service user owns ${tmp}: it squats the socket's name there with a folder.
            as_attacker("mkdir", "-p", str(tmp / "notify.sock"))
            handle = (await launcher.start())["db"]
            assert handle.pid is not None and psutil.pid_exists(handle.pid)

    try:
        asyncio.run(go())
    finally:
        client.unlink()


def test_service_user_cannot_plant_the_next_notify_folder(tmp_path: Path, scratch_name: str) -> None:
    """Each start binds its NOTIFY_SOCKET in a new folder of the session's scratch root: the
    service user can neither plant one there (a link to redirect the next start's socket) nor
    write into the one it is given; the launcher's folders are gone after each stop."""
    config, client = notify_service_as_postgres(tmp_path, scratch_name)
    root = config.services["db"].tmp.parent
    victim = tmp_path / "victim"
    victim.mkdir()

    async def go() -> None:
        async with UnifiedLauncher(config) as launcher:
            for _ in range(2):
                await launcher.start()
                folders = list(root.glob(".notify-db-*"))
                assert len(folders) == 1 and not folders[0].is_symlink()
                st = folders[0].stat()
                assert (st.st_uid, st.st_mode & 0o777) == (0, 0o710)
                with pytest.raises(subprocess.CalledProcessError):  # its own folder: no writing there
                    await asyncio.to_thread(as_attacker, "touch", str(folders[0] / "planted"))
                with pytest.raises(subprocess.CalledProcessError):  # the scratch root: no planting
                    await asyncio.to_thread(as_attacker, "ln", "-s", str(victim), str(root / ".notify-db-planted"))
                await launcher.stop(["db"], close=False)
                assert not list(root.glob(".notify-db-*"))

    try:
        asyncio.run(go())
    finally:
        client.unlink()
    assert list(victim.iterdir()) == []


# --------------------------------------------------------------------------- reap at once (the sentinel)


def leftovers(pids: list[int], roots: list[Path], ports: list[int], state: Path, owner: int) -> list[str]:
    """What a killed launcher left: live processes, scratch folders, bound ports, run files, port claims."""
    from pytest_unified_launcher._ports import claimed, is_free

    left = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                left.append(f"pid {pid}")
        except psutil.NoSuchProcess:
            pass
    left += [str(root) for root in roots if root.exists()]
    left += [f"port {port}" for port in ports if not is_free("127.0.0.1", port)]
    left += [str(p) for p in (state / "run").glob("*.json")]
    left += [f"claim on port {port}" for port in ports if claimed(port)]
    return left


def scratch_roots(pid: int) -> list[Path]:
    """The session's scratch roots (on disk and in /dev/shm), read from a service's ``--term-file ${tmp}/...``."""
    argv = psutil.Process(pid).cmdline()
    tmp = Path(argv[argv.index("--term-file") + 1]).parent
    return [tmp.parent, Path(tempfile.gettempdir()) / tmp.parent.name]


def gone_without_a_later_run(pids: list[int], roots: list[Path], ports: list[int], state: Path, owner: int) -> None:
    assert roots[0].exists() and pids
    wait_for(lambda: not leftovers(pids, roots, ports, state, owner), deadline=30)
    left = leftovers(pids, roots, ports, state, owner)
    if left:  # a failure must not leave them to the rest of the suite
        for pid in pids:
            with contextlib.suppress(OSError):
                os.killpg(pid, signal.SIGKILL)
        for root in roots:
            shutil.rmtree(root, ignore_errors=True)
    assert not left, f"left after SIGKILL, with no later run: {left}"


SENTINEL_CONFIG = f"""
[launcher]
state_dir = "state"
[services.svc]
command = ["{PY}", "{TCP}", "${{port}}", "--term-file", "${{tmp}}/term"]
tmpfs = true
"""


@pytest.mark.parametrize("fds", ["few fds", "fds past 1023"])
def test_sigkill_of_pytest_mid_session_leaves_nothing(pytester: pytest.Pytester, fds: str) -> None:
    """kill -9 of a pytest session: its services, ${tmp} in /dev/shm, run file and port claims go
    at once, with no later run; also from a session whose fds are numbered past select()'s 1023
    (the sentinel's pipe end then is too)."""
    pytester.makefile(".toml", launcher=SENTINEL_CONFIG)
    if fds == "fds past 1023":
        pytester.makeconftest("""
            import os, resource
            soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 2048), max(hard, 2048)))
            HELD = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
        """)
    pytester.makepyfile("""
        import json, os, time
        import pytest

        @pytest.mark.services("svc")
        def test_hang(services):
            handle = services["svc"]
            with open("ready.tmp", "w") as fh:
                json.dump({"pid": handle.pid, "port": handle.port}, fh)
            os.rename("ready.tmp", "ready.json")
            time.sleep(300)
    """)
    with open(pytester.path / "out.txt", "wb") as out:
        proc = subprocess.Popen([PY, "-m", "pytest", "-q", "-p", "no:cacheprovider"], cwd=pytester.path,
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        assert wait_for(lambda: (pytester.path / "ready.json").exists() or proc.poll() is not None, 120), "never ready"
        assert proc.poll() is None, (pytester.path / "out.txt").read_text()
        ready = json_load(pytester.path / "ready.json")
        roots = scratch_roots(ready["pid"])
    finally:
        proc.kill()
        proc.wait()
    gone_without_a_later_run([ready["pid"]], roots, [ready["port"]], pytester.path / "state", proc.pid)


def json_load(path: Path) -> dict[str, int]:
    return dict(json.loads(path.read_text()))


def test_sigkill_during_a_setup_step_leaves_nothing(pytester: pytest.Pytester) -> None:
    """kill -9 of pytest while a setup step (an initdb) runs: the step and its /dev/shm folder go at once, with no later run."""
    pytester.makefile(".toml", launcher=SENTINEL_CONFIG.replace("tmpfs = true", textwrap.dedent("""
        tmpfs = true
        startup_timeout = 600
        setup = [["/bin/sh", "-c", "sleep 300; true", "${tmp}"]]
    """)))
    pytester.makepyfile("""
        import pytest

        @pytest.mark.services("svc")
        def test_it(services):
            pass
    """)

    def setup_step() -> psutil.Process | None:
        for child in psutil.Process(proc.pid).children():
            with contextlib.suppress(psutil.Error):
                if "sleep 300; true" in child.cmdline():
                    return child
        return None

    with open(pytester.path / "out.txt", "wb") as out:
        proc = subprocess.Popen([PY, "-m", "pytest", "-q", "-p", "no:cacheprovider"], cwd=pytester.path,
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        assert wait_for(lambda: setup_step() is not None or proc.poll() is not None, 120), "the setup never ran"
        step = setup_step()
        assert step is not None, (pytester.path / "out.txt").read_text()
        assert wait_for(lambda: bool(step.children()))  # the shell has started its sleep
        pids = [step.pid] + [c.pid for c in step.children()]
        tmp = Path(step.cmdline()[-1])
        roots = [tmp.parent, Path(tempfile.gettempdir()) / tmp.parent.name]
    finally:
        proc.kill()
        proc.wait()
    gone_without_a_later_run(pids, roots, [], pytester.path / "state", proc.pid)


def test_sigkill_of_up_leaves_nothing(tmp_path: Path) -> None:
    """kill -9 of `unified-launcher up`: its services, ${tmp} folders, run file and port claims go at once, with no later run."""
    (tmp_path / "launcher.toml").write_text(SENTINEL_CONFIG)
    record = tmp_path / "state" / "up.json"

    def service() -> dict[str, int] | None:
        try:
            return dict(json.loads(record.read_text())["services"]["svc"])
        except (OSError, ValueError, KeyError):
            return None

    with open(tmp_path / "out.txt", "wb") as out:
        proc = subprocess.Popen([PY, "-m", "pytest_unified_launcher", "up"], cwd=tmp_path,
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        assert wait_for(lambda: service() is not None or proc.poll() is not None, 120), "up never got ready"
        svc = service()
        assert svc is not None and proc.poll() is None, (tmp_path / "out.txt").read_text()
        roots = scratch_roots(svc["pid"])
    finally:
        proc.kill()
        proc.wait()
    gone_without_a_later_run([svc["pid"]], roots, [svc["port"]], tmp_path / "state", proc.pid)


def test_sigkill_of_an_xdist_controller_leaves_nothing(pytester: pytest.Pytester) -> None:
    """kill -9 of an xdist controller (-n 2, shared services): the services its workers started go at once, with no later run."""
    pytester.makefile(".toml", launcher=SENTINEL_CONFIG)
    pytester.makepyfile("""
        import json, os, time
        import pytest

        @pytest.mark.parametrize("i", range(2))
        @pytest.mark.services("svc")
        def test_hang(services, i):
            handle = services["svc"]
            with open(f"ready{i}.tmp", "w") as fh:
                json.dump({"pid": handle.pid, "port": handle.port}, fh)
            os.rename(f"ready{i}.tmp", f"ready{i}.json")
            time.sleep(300)
    """)
    with open(pytester.path / "out.txt", "wb") as out:
        proc = subprocess.Popen([PY, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "2"], cwd=pytester.path,
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    workers: list[psutil.Process] = []
    try:
        assert wait_for(lambda: (pytester.path / "ready0.json").exists() or proc.poll() is not None, 120), "never ready"
        assert proc.poll() is None, (pytester.path / "out.txt").read_text()
        ready = json_load(pytester.path / "ready0.json")
        roots = scratch_roots(ready["pid"])
        workers = psutil.Process(proc.pid).children()
    finally:
        proc.kill()
        proc.wait()
    try:
        gone_without_a_later_run([ready["pid"]], roots, [ready["port"]], pytester.path / "state", proc.pid)
    finally:
        for worker in workers:  # they may sleep on in their test: not what is checked here
            with contextlib.suppress(psutil.Error):
                worker.kill()


def test_sigkill_of_an_xdist_controller_after_its_workers_leaves_nothing(pytester: pytest.Pytester) -> None:
    """kill -9 of an xdist controller after its workers finished (they handed the shared services
    over) and before it stopped them: the services still go at once (nothing named them any more:
    the workers had closed their run files and let their sentinels go)."""
    pytester.makefile(".toml", launcher=SENTINEL_CONFIG)
    pytester.makeconftest("""
        import os, pathlib, time
        import pytest

        @pytest.hookimpl(tryfirst=True)  # before the plugin's own (it registered first)
        def pytest_sessionfinish(session):
            if "PYTEST_XDIST_WORKER" not in os.environ:
                pathlib.Path("controller_finishing").touch()
                time.sleep(300)
    """)
    pytester.makepyfile("""
        import json, os
        import pytest

        @pytest.mark.services("svc")
        def test_once(services):
            handle = services["svc"]
            with open("ready.tmp", "w") as fh:
                json.dump({"pid": handle.pid, "port": handle.port}, fh)
            os.rename("ready.tmp", "ready.json")
    """)
    with open(pytester.path / "out.txt", "wb") as out:
        proc = subprocess.Popen([PY, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "2"], cwd=pytester.path,
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        assert wait_for(lambda: (pytester.path / "controller_finishing").exists() or proc.poll() is not None, 120)
        assert proc.poll() is None, (pytester.path / "out.txt").read_text()
        ready = json_load(pytester.path / "ready.json")
        roots = scratch_roots(ready["pid"])
    finally:
        proc.kill()
        proc.wait()
    gone_without_a_later_run([ready["pid"]], roots, [ready["port"]], pytester.path / "state", proc.pid)


# --------------------------------------------------------------------------- item 18: cgroups


@pytest.mark.exclusive  # failed once beside the other xdist worker (cause not found; see the 2026-12-02 note)
def test_a_daemon_that_clears_its_environment_is_stopped_with_its_cgroup(tmp_path: Path) -> None:
    """A daemon that leaves its group, its parent and its marker (`(setsid env -i ... &)`) is stopped with the service's cgroup."""
    if not os.access("/sys/fs/cgroup/pids", os.W_OK):
        pytest.skip("no writable cgroup v1 pids hierarchy here")
    tag = f"{secrets.randbelow(900) + 100}.{secrets.randbelow(900) + 100}"  # a sleep nobody else runs
    config = load_config(write(tmp_path, f"""
        [services.svc]
        command = ["/bin/sh", "-c", "(setsid env -i sleep {tag} &); exec {{PY}} {{TCP}} $0", "${{port}}"]
    """), environ={})

    def daemon() -> list[psutil.Process]:
        found = []
        for proc in psutil.process_iter(["cmdline"]):
            if proc.info["cmdline"] == ["sleep", tag]:
                found.append(proc)
        return found

    async def go() -> None:
        async with UnifiedLauncher(config) as launcher:
            await launcher.start()
            assert await asyncio.to_thread(wait_for, lambda: bool(daemon()))

    try:
        asyncio.run(go())
        assert wait_for(lambda: not daemon(), deadline=10), f"the daemon outlived its service: {daemon()}"
    finally:
        for proc in daemon():
            proc.kill()


def pids_cgroup(pid: int) -> str:
    """The pids hierarchy's line of ``/proc/PID/cgroup``: which cgroup the process is in."""
    return next(line for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines() if ":pids:" in line)


def test_every_service_is_in_its_own_named_cgroup(tmp_path: Path, no_orphans: None) -> None:
    """Twenty command services started at once each run inside the cgroup named after their pid
    and start token. The cgroup is renamed only once the wrapper shell has joined it: renamed
    first, the shell's join fails (its path is gone) and the service and its daemons run outside.
    (A race: this test seldom loses it on the old code; it keeps the invariant checked.)"""
    if not os.access("/sys/fs/cgroup/pids", os.W_OK):
        pytest.skip("no writable cgroup v1 pids hierarchy here")
    config = load_config(write(tmp_path, "".join(
        f'[services.s{i}]\ncommand = ["sleep", "60"]\nhealth = {{ command = ["true"] }}\n' for i in range(20))),
        environ={})

    async def go() -> list[str]:
        async with UnifiedLauncher(config) as launcher:
            handles = await launcher.start()
            outside = []
            for name, handle in handles.items():
                assert handle.pid is not None
                pids_line = await asyncio.to_thread(pids_cgroup, handle.pid)
                if f"/unified-launcher-{handle.pid}-" not in pids_line:
                    outside.append(f"{name}: {pids_line}")
            return outside

    assert asyncio.run(go()) == []


def test_stale_empty_cgroups_are_removed_busy_ones_kept(tmp_path: Path) -> None:
    """The first cgroup a process makes sweeps away the empty cgroups of services that are gone, never a busy one."""
    root = Path("/sys/fs/cgroup/pids")
    if not os.access(root, os.W_OK):
        pytest.skip("no writable cgroup v1 pids hierarchy here")
    stale = root / "unified-launcher-999999-1"
    busy = root / "unified-launcher-999998-1"
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        stale.mkdir()
        busy.mkdir()
        (busy / "cgroup.procs").write_text(str(sleeper.pid))
        code = "from pytest_unified_launcher._process import Cgroup; Cgroup.create().remove()"
        subprocess.run([PY, "-c", code], check=True)
        assert not stale.exists()
        assert busy.exists() and sleeper.poll() is None
    finally:
        sleeper.kill()
        sleeper.wait()
        for path in (stale, busy):
            with contextlib.suppress(OSError):
                path.rmdir()


#: A launcher killed with a spawn in flight: its sentinel armed, a process spawned into the
#: cgroup made for it (argv[2] "cgroup"), or carrying its marker (argv[2] "marker"), never recorded.
IN_FLIGHT = """
import asyncio, os, sys, time
from pathlib import Path
from pytest_unified_launcher._process import OWNER_VAR, Cgroup, spawn
from pytest_unified_launcher._sentinel import Sentinel

state = Path(sys.argv[1])
(state / "run").mkdir(parents=True)
sentinel = Sentinel(state, "victim-launcher")
sentinel.arm()
while sentinel.pid is None:
    time.sleep(0.01)
cgroup = Cgroup.create() if sys.argv[2] == "cgroup" else None
env = {**os.environ, **({OWNER_VAR: "victim-launcher"} if sys.argv[2] == "marker" else {})}

async def go():
    return await spawn(["sleep", "300"], env=env, cwd=Path("/"), log_file=asyncio.subprocess.DEVNULL, cgroup=cgroup)

proc = asyncio.run(go())
print(proc.pid, flush=True)
time.sleep(300)
"""


@pytest.mark.parametrize("how", ["cgroup", "marker"])
def test_a_spawn_in_flight_when_the_launcher_is_killed_is_reaped(tmp_path: Path, how: str) -> None:
    """kill -9 between a spawn and its record (no run file yet): the sentinel, armed before the
    spawn, kills what was spawned (found by the cgroup made for it, or by the launcher's marker)."""
    if how == "cgroup" and not os.access("/sys/fs/cgroup/pids", os.W_OK):
        pytest.skip("no writable cgroup v1 pids hierarchy here")
    with subprocess.Popen([PY, "-c", IN_FLIGHT, str(tmp_path / "state"), how], stdout=subprocess.PIPE,
                          text=True) as launcher:
        try:
            assert launcher.stdout is not None
            line = launcher.stdout.readline()
            assert line.strip(), "the launcher did not spawn"
            child = int(line)
            if how == "cgroup":  # in the cgroup made for it, which is named after the launcher

                def joined() -> bool:
                    return f"pids:/unified-launcher-new-{launcher.pid}-" in Path(f"/proc/{child}/cgroup").read_text()

                assert wait_for(joined, 10)
        finally:
            launcher.kill()
    assert wait_for(lambda: process_token(child) == "?", 30), f"pid {child} ({how}) outlived its killed launcher"


def test_sigkill_of_an_xdist_controller_before_any_service_leaves_no_folder(pytester: pytest.Pytester,
                                                                             tmp_path: Path) -> None:
    """kill -9 of a shared xdist controller while its workers still collect (nothing recorded by
    any worker yet): its scratch and -xdist folders go too, with no later run."""
    pytester.makefile(".toml", launcher=SENTINEL_CONFIG)
    pytester.makeconftest("""
        import json, os, pathlib, time
        if os.environ.get("PYTEST_XDIST_WORKER"):
            # As a worker does when it first takes the shared lock, then stuck before any spawn.
            folder = pathlib.Path(json.loads(os.environ["UNIFIED_LAUNCHER_SHARED"])["folder"])
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            time.sleep(300)
    """)
    pytester.makepyfile("def test_x():\n    pass\n")
    tmpdir = tmp_path / "tmpdir"
    tmpdir.mkdir()
    with open(pytester.path / "out.txt", "wb") as out:
        proc = subprocess.Popen([PY, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "2"], cwd=pytester.path,
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env={**os.environ, "TMPDIR": str(tmpdir)})
    try:
        assert wait_for(lambda: bool(list(tmpdir.glob("ul-*-xdist"))) or proc.poll() is not None, 60)
        assert proc.poll() is None, (pytester.path / "out.txt").read_text()
        workers = [c for c in psutil.Process(proc.pid).children() if c.name() != "ul-sentinel"]
    finally:
        proc.kill()
        proc.wait()
    for worker in workers:  # what a killed controller's workers do is xdist's: gone with it or not, not ours
        with contextlib.suppress(psutil.Error):
            worker.kill()
    assert wait_for(lambda: not list(tmpdir.glob("ul-*")), 30), list(tmpdir.iterdir())
    assert not list((pytester.path / "state" / "run").glob("*.json"))


def test_a_signal_reaches_a_pid_only_while_it_is_the_same_process() -> None:
    """A stop signals a recorded pid (a container's process) only while its start time is the
    recorded one, through a pidfd opened before the check: another user's process that got the
    pid is left alone."""
    from pytest_unified_launcher._process import signal_if_same, start_time

    victim = subprocess.Popen(["sleep", "60"], user=ATTACKER)
    try:
        token = start_time(victim.pid)
        assert token is not None
        assert not signal_if_same(victim.pid, str(int(token) - 1), signal.SIGKILL)  # an earlier process's
        assert not signal_if_same(victim.pid, None, signal.SIGKILL)
        time.sleep(0.05)
        assert victim.poll() is None  # unharmed
        assert signal_if_same(victim.pid, token, signal.SIGKILL)  # the same process: signalled
        assert victim.wait(5) == -signal.SIGKILL
        assert not signal_if_same(victim.pid, token, signal.SIGKILL)  # gone: nothing to signal
    finally:
        victim.kill()
        victim.wait()


@pytest.mark.parametrize("plant", ["folder", "link"])
def test_a_planted_shared_xdist_folder_is_refused(plant: str) -> None:
    """The shared xdist folder is named after the session's scratch root, which another user
    sees in the temp dir: made first by them (a folder of theirs, or a link to one), it is
    refused with the fix, and nothing is written into it."""
    from pytest_unified_launcher._state import StateDirError
    from pytest_unified_launcher.xdist import SharedEnvironment

    base = Path(tempfile.gettempdir()) / f"ul-{secrets.token_hex(4)}"
    folder = Path(f"{base}-xdist")
    theirs = Path(f"{base}-theirs")
    as_attacker("mkdir", "-m", "777", str(theirs))
    if plant == "folder":
        as_attacker("mkdir", "-m", "777", str(folder))
    else:
        as_attacker("ln", "-s", str(theirs), str(folder))
    try:
        with pytest.raises(StateDirError) as caught:
            with SharedEnvironment(folder).lock():
                pass
        message = str(caught.value)
        assert str(folder) in message and "fix" in message.lower()
        assert os.listdir(theirs) == [] and (plant == "link" or os.listdir(folder) == [])
    finally:
        subprocess.run(["rm", "-rf", str(folder), str(theirs)], check=True)


def test_a_planted_shared_folder_cannot_make_an_attached_controller_stop_a_process(tmp_path: Path) -> None:
    """`pytest -n 2 --launcher-attach`: the controller records `up`'s services in the shared
    folder (named after `up`'s scratch root, which other users see in the temp dir) and at the
    end stops what the record names. Made first by another user, who keeps swapping in a record
    naming a process of root's, it is refused with the fix: the process lives (it was killed
    before: the controller wrote into the planted folder, then read and stopped what it said)."""
    write(tmp_path, """
        [launcher]
        state_dir = "state"
        [services.plain]
        command = ["{PY}", "{TCP}", "${port}"]
        health = { tcp = true, interval = 0 }
        """)
    (tmp_path / "test_x.py").write_text("import pytest\n@pytest.mark.parametrize('i', range(4))\n"
                                        "def test_x(i): pass\n")
    cli = [PY, "-m", "pytest_unified_launcher"]
    assert subprocess.run([*cli, "up", "--detach", "plain"], cwd=tmp_path, capture_output=True,
                          timeout=120).returncode == 0
    victim = subprocess.Popen(["sleep", "600"], start_new_session=True)
    attacker_dir = Path(tempfile.mkdtemp(dir="/tmp"))
    folder = Path(f"{json.loads((tmp_path / 'state' / 'up.json').read_text())['tmp_root']}-xdist")
    swapper = None
    try:
        attacker_dir.chmod(0o755)
        evil = {"plain": {"state": "running", "pid": victim.pid, "token": process_token(victim.pid)}}
        (attacker_dir / "evil.json").write_text(json.dumps(evil))
        as_attacker("mkdir", "-m", "777", str(folder))
        swapper = subprocess.Popen(["sh", "-c", f"while :; do cp {attacker_dir}/evil.json {folder}/.e && "
                                                f"mv -f {folder}/.e {folder}/services.json; sleep 0.005; done"],
                                   user=ATTACKER, stderr=subprocess.DEVNULL)
        result = subprocess.run([PY, "-m", "pytest", "-p", "no:cacheprovider", "--launcher-attach", "-n", "2",
                                 "test_x.py"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert victim.poll() is None, "root's process was stopped on a planted record"
        assert result.returncode == 4, result.stdout + result.stderr
        assert f"the shared folder of this xdist session {folder} is owned by uid 101" in result.stderr
        assert f"remove {folder}" in result.stderr and "Traceback" not in result.stderr
    finally:
        if swapper is not None:
            swapper.kill()
            swapper.wait()
        victim.kill()
        victim.wait()
        subprocess.run([*cli, "down"], cwd=tmp_path, capture_output=True, timeout=120)
        subprocess.run(["rm", "-rf", str(attacker_dir), str(folder)], check=True)
