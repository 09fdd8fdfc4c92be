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

#: A launcher reserving ports against the claims folder argv[1] (the machine-wide one, moved
#: into the test's own folder so the test does not block other sessions on this machine).
RESERVE = """
import logging, os, sys
from pathlib import Path
logging.basicConfig(level=logging.WARNING, format="WARNING %(message)s")
from pytest_unified_launcher import _ports
from pytest_unified_launcher._process import process_token
_ports._CLAIMS = Path(sys.argv[1])
if len(sys.argv) > 2:  # say who we are, then wait until the test has planted its files
    print(os.getpid(), process_token(os.getpid()), flush=True)
    sys.stdin.readline()
ports = [_ports.reserve() for _ in range(3)]
print(*ports, flush=True)
_ports.release(ports[:1])
"""


def claims_folder(shared: Path) -> Path:
    """The claims folder as the first launcher on the machine makes it: root's, sticky, 1777."""
    folder = shared / "ports"
    folder.mkdir()
    folder.chmod(0o1777)
    return folder


def reserve_ports(folder: Path, *, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    result = run(PY, "-c", RESERVE, str(folder), timeout=timeout)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    return result


def test_links_planted_at_claims_file_names_are_never_followed(shared: Path, tmp_path: Path) -> None:
    """A link another user plants at a launcher's claims file names (its ``.tmp``, its ``.json``)
    never makes it write or chmod the link's target."""
    folder = claims_folder(shared)
    victim = tmp_path / "victim"
    victim.write_text("precious")
    victim.chmod(0o600)
    with subprocess.Popen([PY, "-c", RESERVE, str(folder), "wait"], stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        assert proc.stdin is not None and proc.stdout is not None
        pid, token = proc.stdout.readline().split()
        for suffix in (".tmp", ".json"):
            as_other("ln", "-s", str(victim), str(folder / f"{pid}-{token}{suffix}"))
        out, err = proc.communicate("go\n", timeout=60)
    assert proc.returncode == 0 and "Traceback" not in err, err
    assert len(out.split()) == 3
    assert victim.read_text() == "precious"
    assert stat.S_IMODE(victim.lstat().st_mode) == 0o600


def test_a_link_planted_at_the_lock_creates_nothing(shared: Path, tmp_path: Path) -> None:
    """A ``.lock`` link to a file that does not exist yet (``/etc/nologin``) is not created."""
    folder = claims_folder(shared)
    target = tmp_path / "nologin"
    as_other("ln", "-s", str(target), str(folder / ".lock"))
    reserve_ports(folder)
    assert not target.exists()


@pytest.mark.parametrize("how", ["a link to a folder of root", "a folder of another user"])
def test_an_untrusted_claims_folder_is_not_used(shared: Path, tmp_path: Path, how: str) -> None:
    """A claims folder that is a link, or another (non-root) user's, is not written into: the
    launcher falls back to a private folder of its own and says so."""
    folder = shared / "ports"
    victim_dir = tmp_path / "victim-dir"
    victim_dir.mkdir(mode=0o700)
    if how.startswith("a link"):
        as_other("ln", "-s", str(victim_dir), str(folder))
        watched = victim_dir
    else:
        as_other("mkdir", "-m", "1777", str(folder))
        watched = folder
    result = reserve_ports(folder)
    assert len(result.stdout.split()) == 3
    assert not [p for p in watched.iterdir() if p.lstat().st_uid == 0], list(watched.iterdir())
    assert "WARNING" in result.stderr and str(folder) in result.stderr
    private = shared / f"ports-{os.geteuid()}"
    assert stat.S_IMODE(private.lstat().st_mode) == 0o700 and private.lstat().st_uid == os.geteuid()


def test_a_lock_held_by_another_user_delays_launchers_a_bounded_time(shared: Path) -> None:
    """Another user holding the claims lock forever does not hang launchers: after a bounded
    wait they go on, with a warning naming the holder."""
    folder = claims_folder(shared)
    reserve_ports(folder)  # the lock file exists, as on any used machine
    with subprocess.Popen(["flock", str(folder / ".lock"), "sh", "-c", "echo held; exec sleep 120"],
                          user=OTHER_USER, stdout=subprocess.PIPE, text=True) as holder:
        try:
            assert holder.stdout is not None and holder.stdout.readline() == "held\n"
            result = reserve_ports(folder, timeout=40)
            assert len(result.stdout.split()) == 3
            assert str(folder / ".lock") in result.stderr and str(holder.pid) in result.stderr
        finally:
            holder.kill()


@pytest.mark.parametrize("content", ["null", "{garbage", '{"a": 1}', '["1", 2.5]', json.dumps(list(range(1, 65536)))])
def test_foreign_claims_files_of_any_content_are_skipped(shared: Path, content: str) -> None:
    """Another user's claims file holding garbage, or claiming every port, is skipped with a
    warning: no traceback, and ports are still reserved."""
    folder = claims_folder(shared)
    with subprocess.Popen(["sleep", "120"], user=OTHER_USER) as other:
        try:
            claims = folder / f"{other.pid}-{token_of(other.pid)}.json"
            claims.write_text(content)
            os.chown(claims, OTHER_UID, -1)
            result = reserve_ports(folder)
            assert len(result.stdout.split()) == 3
            assert "WARNING" in result.stderr and claims.name in result.stderr
            assert claims.read_text() == content  # a living process's file: not ours to delete
        finally:
            other.kill()


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
