"""SPEC 7 for the launcher's own files: port claims, run records, up.json, the state dir.

Each test acts as a second local user (uid 101 ``postgres``) or plants files as that user
would, then checks that nothing was harmed: contents, owners, modes, processes alive.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import PY, TCP

OTHER_USER = "postgres"
OTHER_UID = 101
#: An interpreter the second user can run (the suite's own may live under root's home).
OTHER_PY = "/usr/bin/python3"


def token_of(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]


def as_other(*argv: str) -> None:
    subprocess.run(list(argv), user=OTHER_USER, check=True, timeout=30)


def alive(proc: subprocess.Popen[bytes]) -> bool:
    return proc.poll() is None


@pytest.fixture
def shared() -> Iterator[Path]:
    """A sticky world-writable folder, as /tmp is: where another user can plant files."""
    if os.geteuid() != 0:
        pytest.skip("needs root, to act as a second user")
    path = Path(tempfile.mkdtemp(prefix="ulsec-", dir="/tmp"))
    path.chmod(0o1777)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def victims() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes nobody asked the launcher to stop: a root daemon (a stand-in for pid 1) and
    another user's process, each a session leader with a world-readable start time."""
    procs = [subprocess.Popen(["sleep", "120"], start_new_session=True),
             subprocess.Popen(["sleep", "120"], start_new_session=True, user=OTHER_USER)]
    yield procs
    for proc in procs:
        proc.kill()
        proc.wait()


def run(*argv: str, cwd: Path | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


# --------------------------------------------------------------------------- port claims (items 1, 7)

#: A launcher reserving three ports, printing them, then holding them until its stdin closes.
RESERVE = """
import sys
from pytest_unified_launcher import _ports
print(*(_ports.reserve() for _ in range(3)), flush=True)
sys.stdin.read()
"""

#: Another user binding the claim names of ports argv[1:] (squatting them), until killed.
SQUAT = """
import socket, sys
held = []
for port in sys.argv[1:]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind("\\0unified-launcher-port-" + port)
    except OSError:
        if len(sys.argv) == 2:
            raise  # told to take one name: say that it is taken
        sock.close()  # claimed already (by the suite's own launchers): just as taken
        continue
    held.append(sock)
print("squatting", flush=True)
sys.stdin.read()
"""


def test_port_claims_write_no_file_another_user_could_redirect() -> None:
    """Claims live in the kernel (abstract socket names), not in a shared folder of /tmp where
    another user can plant links at the names a root launcher writes: reserving writes nothing."""
    legacy = Path("/tmp/unified-launcher-ports")  # where claims files were written, mode 1777

    def snapshot() -> dict[str, object]:
        top = {p.name for p in Path("/tmp").iterdir() if p.name.startswith("unified-launcher")}
        inside = {p.name: p.lstat().st_mtime_ns for p in legacy.iterdir()} if legacy.is_dir() else {}
        return {"top": top, "inside": inside}

    before = snapshot()
    with subprocess.Popen([PY, "-c", RESERVE], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as proc:
        assert proc.stdout is not None and len(proc.stdout.readline().split()) == 3
        during = snapshot()
        proc.communicate("")
    assert during == before


@pytest.mark.exclusive  # squats the machine's candidate ports: nobody else may reserve meanwhile
def test_another_users_claims_are_respected_and_cannot_be_taken_over(shared: Path) -> None:
    """Ports another user's process claims are never handed out; our claims cannot be taken by
    another user (binding the name fails) nor outlive us."""
    from pytest_unified_launcher import _ports

    candidates = _ports.candidate_range()
    squatted = [str(p) for p in candidates if p % 2 == 0]  # half of every candidate port
    with subprocess.Popen([OTHER_PY, "-c", SQUAT, *squatted], user=OTHER_USER, stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, text=True) as squatter:
        assert squatter.stdout is not None and squatter.stdout.readline() == "squatting\n"
        with subprocess.Popen([PY, "-c", RESERVE], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as ours:
            assert ours.stdout is not None
            mine = [int(p) for p in ours.stdout.readline().split()]
            assert len(mine) == 3 and all(p % 2 == 1 for p in mine)
            for port in mine:
                taken = subprocess.run([OTHER_PY, "-c", SQUAT, str(port)], user=OTHER_USER, input="",
                                       capture_output=True, text=True, timeout=60)
                assert taken.returncode != 0 and "Address already in use" in taken.stderr
            squatter.kill()
            ours.communicate("")
    assert not [p for p in mine if _ports.claimed(p)]


@pytest.mark.exclusive  # squats the machine's candidate ports: nobody else may reserve meanwhile
def test_every_port_squatted_is_a_clear_error_not_a_hang(shared: Path, tmp_path: Path) -> None:
    """Another user squatting every candidate port makes loading a config that needs one a
    usage error naming the service and the fix, at once (no traceback, no endless search)."""
    from pytest_unified_launcher import _ports

    config = tmp_path / "launcher.toml"
    config.write_text(f'[services.api]\ncommand = ["{PY}", "{TCP}", "${{port}}"]\n')
    everything = [str(p) for p in _ports.candidate_range()]
    with subprocess.Popen(["prlimit", f"--nofile={len(everything) + 100}", OTHER_PY, "-c", SQUAT, *everything],
                          user=OTHER_USER, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as squatter:
        try:
            assert squatter.stdout is not None and squatter.stdout.readline() == "squatting\n"
            result = run(str(Path(PY).parent / "unified-launcher"), "--config", str(config), "check", "--no-import",
                         cwd=tmp_path)
        finally:
            squatter.kill()
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    output = result.stdout + result.stderr
    assert "no free port to reserve" in output and "api" in output and "port = N" in output


@pytest.mark.exclusive  # squats the machine's candidate ports: nobody else may reserve meanwhile
def test_a_taken_port_with_nowhere_to_move_is_a_startup_error_not_a_trace(shared: Path, tmp_path: Path) -> None:
    """Another user binds a service's reserved port and squats every other claim: the move to a
    fresh port finds none, and the start fails naming both, as a ServiceStartupError."""
    import asyncio
    import socket

    from pytest_unified_launcher import ServiceStartupError, UnifiedLauncher, _ports, load_config

    config = tmp_path / "launcher.toml"
    config.write_text(f'[services.api]\ncommand = ["{PY}", "{TCP}", "${{port}}"]\n')
    loaded = load_config(config, environ={})
    port = loaded.services["api"].port
    everything = [str(p) for p in _ports.candidate_range()]
    with socket.socket() as taken, \
         subprocess.Popen(["prlimit", f"--nofile={len(everything) + 100}", OTHER_PY, "-c", SQUAT, *everything],
                          user=OTHER_USER, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as squatter:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        try:
            assert squatter.stdout is not None and squatter.stdout.readline() == "squatting\n"

            async def start() -> ServiceStartupError:
                async with UnifiedLauncher(loaded) as launcher:
                    with pytest.raises(ServiceStartupError) as info:
                        await launcher.start()
                return info.value

            error = asyncio.run(start())
        finally:
            squatter.kill()
    assert f"port {port} already in use" in str(error) and "no free port to move it to" in str(error)


# --------------------------------------------------------------------------- run files, up.json (items 3, 8)

REAP = """
import logging, sys
from pathlib import Path
logging.basicConfig(level=logging.WARNING, format="WARNING %(message)s")
from pytest_unified_launcher._state import reap
print(reap(Path(sys.argv[1])))
"""


def plant_run_file(state: Path, victims: list[subprocess.Popen[bytes]], name: str = "999999-abc") -> Path:
    """A run record of a dead launcher naming processes it never started (with their true start
    times, which anyone can read in /proc/<pid>/stat)."""
    run_dir = state / "run"
    run_dir.mkdir(exist_ok=True)
    record = {"owner": {"pid": 999999, "token": "1"}, "tmp_root": None, "processes": {
        str(p.pid): {"service": "db", "token": token_of(p.pid), "signal": 9, "timeout": 0.1} for p in victims}}
    path = run_dir / f"{name}.json"
    path.write_text(json.dumps(record))
    return path


def state_dir_of_the_launcher(path: Path) -> Path:
    """A state dir as the launcher makes it (so only the planted part differs)."""
    from pytest_unified_launcher._state import ensure_state_dir

    ensure_state_dir(path)
    return path


@pytest.mark.parametrize("how", ["dir writable by others", "dir of another user", "file of another user",
                                 "file is a link", "no marker"])
def test_a_planted_run_file_gets_no_process_signalled(
    shared: Path, tmp_path: Path, victims: list[subprocess.Popen[bytes]], how: str
) -> None:
    """The reaper signals only processes it provably started: a run file in a state dir another
    user can write, a file that is not ours or is a link, or a process without our marker, is
    never acted on."""
    state = state_dir_of_the_launcher(shared / "state")
    if how == "dir writable by others":
        state.chmod(0o777)
        (state / "run").mkdir(mode=0o777)
        (state / "run").chmod(0o777)
    elif how == "dir of another user":
        os.chown(state, OTHER_UID, -1)
    path = plant_run_file(state, victims)
    if how == "file of another user":
        os.chown(path, OTHER_UID, -1)
    elif how == "file is a link":
        real = tmp_path / "elsewhere.json"
        path.rename(real)
        path.symlink_to(real)
    result = run(PY, "-c", REAP, str(state))
    assert "Traceback" not in result.stderr, result.stderr
    time.sleep(0.3)
    assert all(alive(p) for p in victims)
    if how.startswith("dir"):
        assert str(state) in result.stderr
        assert ("chmod go-w" if how == "dir writable by others" else "chown") in result.stderr
    else:
        assert "WARNING" in result.stderr and path.name in result.stderr


def up_project(tmp_path: Path, state: Path) -> Path:
    project = tmp_path / "project"
    project.mkdir()
    (project / "launcher.toml").write_text(
        f'[launcher]\nstate_dir = "{state}"\n[services.plain]\ncommand = ["{PY}", "{TCP}", "${{port}}"]\n')
    return project


def test_down_never_signals_the_owner_or_services_of_a_planted_up_json(
    shared: Path, tmp_path: Path, victims: list[subprocess.Popen[bytes]]
) -> None:
    """``down`` from a state dir another user can write is refused with the fix; nothing it
    names is signalled."""
    state = shared / "state"
    state.mkdir(mode=0o777)
    state.chmod(0o777)
    root_victim = victims[0]
    record = {"config": "launcher.toml", "profile": None, "mode": "multi_process", "launcher_id": "1-abc",
              "owner_pid": root_victim.pid, "owner_token": token_of(root_victim.pid), "tmp_root": "/tmp/ul-x",
              "ports": {}, "control": None, "services": {"plain": {
                  "state": "running", "pid": victims[1].pid, "token": token_of(victims[1].pid)}}}
    (state / "up.json").write_text(json.dumps(record))
    os.chown(state / "up.json", OTHER_UID, -1)
    project = up_project(tmp_path, state)
    result = run(PY, "-m", "pytest_unified_launcher", "down", cwd=project)
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr
    assert str(state) in result.stderr and "chmod go-w" in result.stderr
    time.sleep(0.3)
    assert all(alive(p) for p in victims)


MALFORMED = [
    [1, 2],
    {"owner": 5, "processes": {}},
    {"owner": {"pid": "x", "token": "1"}, "processes": {}},
    {"owner": {"pid": 999999, "token": "1"}, "processes": [1, 2]},
    {"owner": {"pid": 999999, "token": "1"}, "processes": {"abc": {"token": "1"}}},
    {"owner": {"pid": 999999, "token": "1"}, "processes": {"123": "text"}},
    {"owner": {"pid": 999999, "token": "1"}, "processes": {"123": {"token": "1", "signal": "x"}}},
    {"owner": {"pid": 999999, "token": "1"}, "processes": {}, "tmp_root": 5},
]


@pytest.mark.parametrize("record", MALFORMED, ids=range(len(MALFORMED)))
def test_a_run_file_of_the_wrong_shape_is_skipped_and_removed(tmp_path: Path, record: object) -> None:
    """A run file of the wrong shape gives one warning and is removed, never a traceback."""
    state = state_dir_of_the_launcher(tmp_path / "state")
    (state / "run").mkdir(mode=0o700)
    path = state / "run" / "999999-abc.json"
    path.write_text(json.dumps(record))
    result = run(PY, "-c", REAP, str(state))
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    assert "WARNING" in result.stderr and str(path) in result.stderr
    assert not path.exists()


UP_MALFORMED = [
    [1],
    {"services": []},
    {"services": {"plain": 5}},
    {"services": {"plain": {"state": "running", "pid": "x", "token": "1"}}},
    {"services": {}, "owner_pid": "x"},
    {"services": {}, "config": 5, "mode": None},
]


@pytest.mark.parametrize("record", UP_MALFORMED, ids=range(len(UP_MALFORMED)))
@pytest.mark.parametrize("command", ["status", "down"])
def test_an_up_json_of_the_wrong_shape_is_one_line_and_removed(tmp_path: Path, record: object, command: str) -> None:
    """``status``/``down`` over an up.json of the wrong shape say so in one line and remove it."""
    state = state_dir_of_the_launcher(tmp_path / "state")
    (state / "up.json").write_text(json.dumps(record))
    result = run(PY, "-m", "pytest_unified_launcher", command, cwd=up_project(tmp_path, state))
    assert result.returncode in (1, 2) and "Traceback" not in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "up.json" in result.stderr
    assert not (state / "up.json").exists()


def test_a_huge_up_json_is_refused_without_reading_it_all(tmp_path: Path) -> None:
    """An up.json too large to be a record is refused in one line, not parsed into memory."""
    state = state_dir_of_the_launcher(tmp_path / "state")
    with open(state / "up.json", "w") as fh:
        fh.write('{"services": {}, "pad": "' + "x" * (64 << 20) + '"}')
    result = run(PY, "-m", "pytest_unified_launcher", "status", cwd=up_project(tmp_path, state))
    assert result.returncode in (1, 2) and "Traceback" not in result.stderr, result.stderr
    assert "too large" in result.stderr


# --------------------------------------------------------------------------- the state dir (items 5, 16)

STOP_START = """
import sys
from pytest_unified_launcher import UnifiedLauncher, load_config, ConfigError
launcher = UnifiedLauncher(load_config(sys.argv[1]))
try:
    launcher.start_blocking()
except ConfigError as exc:
    print(exc, file=sys.stderr)
    raise SystemExit(2)
finally:
    launcher.stop_blocking()
"""


def test_a_state_dir_holding_other_files_is_refused_and_left_untouched(tmp_path: Path) -> None:
    """``state_dir = "."`` (a folder of the project's own files) is refused with the fix; the
    project's ``run/*.json`` and ``logs/*.log`` stay as they were."""
    (tmp_path / "launcher.toml").write_text(
        f'[launcher]\nstate_dir = "."\n[services.plain]\ncommand = ["{PY}", "{TCP}", "${{port}}"]\n')
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "fixtures.json").write_text("my data, not a launcher record")
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "plain.log").write_text("my own log")
    result = run(PY, "-c", STOP_START, str(tmp_path / "launcher.toml"), cwd=tmp_path)
    assert (tmp_path / "run" / "fixtures.json").read_text() == "my data, not a launcher record"
    assert (tmp_path / "logs" / "plain.log").read_text() == "my own log"
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "state_dir" in result.stderr and "launcher.toml" in result.stderr


def modes_under(path: Path) -> dict[str, int]:
    found = {".": stat.S_IMODE(path.lstat().st_mode)}
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            full = Path(dirpath) / name
            found[str(full.relative_to(path))] = stat.S_IMODE(full.lstat().st_mode)
    return found


def assert_private(path: Path) -> None:
    modes = modes_under(path)
    wrong = {name: oct(mode) for name, mode in modes.items()
             if mode != (0o700 if (path / name).is_dir() else 0o600)}
    assert len(modes) > 2 and not wrong, wrong


def test_the_state_dir_is_private_after_a_pytest_run(pytester: pytest.Pytester) -> None:
    """After a plain pytest run, the state dir and its logs are 0700 folders and 0600 files."""
    pytester.makefile(".toml", launcher=f'[launcher]\nstate_dir = ".launcher"\n'
                      f'[services.plain]\ncommand = ["{PY}", "{TCP}", "${{port}}"]\n')
    pytester.makepyfile("""
        import pytest
        @pytest.mark.services("plain")
        def test_x(services): assert services["plain"].pid
    """)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    assert_private(pytester.path / ".launcher")


def test_the_state_dir_is_private_after_up_detach_and_down(tmp_path: Path) -> None:
    """After ``up --detach`` and ``down``, the state dir, ``logs/`` and up.log are private."""
    state = tmp_path / "project" / ".launcher"
    project = up_project(tmp_path, state)
    result = run(PY, "-m", "pytest_unified_launcher", "up", "--detach", cwd=project, timeout=120)
    assert result.returncode == 0, result.stderr
    try:
        assert_private(state)
    finally:
        result = run(PY, "-m", "pytest_unified_launcher", "down", cwd=project)
    assert result.returncode == 0, result.stderr
    assert_private(state)
