"""Machine-wide port claims, between real processes."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from conftest import PY

from pytest_unified_launcher import _ports

HOLD = """
import sys
from pytest_unified_launcher import _ports
print(*(_ports.reserve() for _ in range(3)), flush=True)
sys.stdin.read()  # hold the claims until the test closes our stdin
"""

SEE = """
import json, sys
from pytest_unified_launcher import _ports
print(json.dumps([p for p in map(int, sys.argv[1:]) if _ports.claimed(p)]))
"""


def test_claims_are_shared_whatever_tmpdir_each_process_has(tmp_path: Path) -> None:
    """A launcher with another TMPDIR (tox, CI runners) still sees the ports others claimed."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with subprocess.Popen([PY, "-c", HOLD], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                          env={**os.environ, "TMPDIR": str(tmp_path / "a")}) as holder:
        assert holder.stdin is not None and holder.stdout is not None
        held = {int(p) for p in holder.stdout.readline().split()}
        seen = subprocess.run([PY, "-c", SEE, *map(str, held)], capture_output=True, text=True, check=True,
                              env={**os.environ, "TMPDIR": str(tmp_path / "b")})
        holder.stdin.close()
    assert len(held) == 3 and held <= set(json.loads(seen.stdout))
    # Once the holder has exited, its claims are gone for everyone.
    after = subprocess.run([PY, "-c", SEE, *map(str, held)], capture_output=True, text=True, check=True)
    assert not held & set(json.loads(after.stdout))


MANY = """
import sys
from pytest_unified_launcher import _ports
sys.stdin.readline()  # start together
print(*(_ports.reserve() for _ in range(20)), flush=True)
sys.stdin.read()
"""


def test_launchers_reserving_at_the_same_moment_never_share_a_port() -> None:
    """Launchers claiming ports at the same moment each get their own (a claim is one atomic bind)."""
    procs = [subprocess.Popen([PY, "-c", MANY], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
             for _ in range(4)]
    try:
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        ports = [int(p) for proc in procs if proc.stdout is not None for p in proc.stdout.readline().split()]
    finally:
        for proc in procs:
            assert proc.stdin is not None and proc.stdout is not None
            proc.stdin.close()
            proc.wait(timeout=60)
            proc.stdout.close()
    assert len(ports) == 80 and len(set(ports)) == 80


def test_a_claim_goes_with_its_holder_even_after_kill_9() -> None:
    """A launcher killed outright (no atexit, no sentinel yet: between config load and its first
    spawn, or after its release) leaves no claim behind: the kernel drops it with the process."""
    with subprocess.Popen([PY, "-c", HOLD], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as holder:
        assert holder.stdout is not None
        held = [int(p) for p in holder.stdout.readline().split()]
        assert all(_ports.claimed(p) for p in held)
        holder.kill()
        holder.wait()
    assert not [p for p in held if _ports.claimed(p)]
    assert not Path("/tmp/unified-launcher-ports").exists() or not any(
        n.startswith(f"{holder.pid}-") for n in os.listdir("/tmp/unified-launcher-ports"))


def test_reserving_lifts_a_used_up_open_files_limit_and_else_says_so(tmp_path: Path) -> None:
    """Each claim holds a file descriptor: with the soft limit used up it is lifted a step towards
    the hard one; where even that is used up, loading the config is an error that names the fix."""
    config = tmp_path / "launcher.toml"
    config.write_text("".join(f'[services.s{i}]\ncommand = ["sleep", "${{port}}"]\n' for i in range(100)))
    script = """
import resource, sys
from pytest_unified_launcher import load_config
from pytest_unified_launcher.errors import ConfigError
resource.setrlimit(resource.RLIMIT_NOFILE, (64, int(sys.argv[1])))
try:
    config = load_config(sys.argv[2], environ={})
except ConfigError as exc:
    print(exc)
else:
    print(len({s.port for s in config.services.values()}), resource.getrlimit(resource.RLIMIT_NOFILE)[0])
"""
    lifted = subprocess.run([PY, "-c", script, "4096", str(config)], capture_output=True, text=True, timeout=60)
    assert lifted.returncode == 0 and lifted.stdout.split()[0] == "100", lifted.stdout + lifted.stderr
    assert 64 < int(lifted.stdout.split()[1]) < 4096  # a step up, not all the way to the hard limit
    capped = subprocess.run([PY, "-c", script, "64", str(config)], capture_output=True, text=True, timeout=60)
    assert capped.returncode == 0 and "Traceback" not in capped.stderr, capped.stderr
    assert "no free port to reserve on 127.0.0.1: Too many open files" in capped.stdout
    assert "ulimit -n" in capped.stdout


@pytest.mark.parametrize(("ephemeral", "expected"), [
    ((32768, 60999), range(20000, 32768)),   # Linux's default: below it
    ((10000, 60999), range(1024, 10000)),    # a lower range: from the first unprivileged port
    ((2000, 60999), range(61000, 65536)),    # too little room below: above it
    ((1024, 65535), range(1024, 65536)),     # it covers everything: claims and binds decide
])
def test_candidate_ports_stay_outside_the_ephemeral_range(ephemeral: tuple[int, int], expected: range) -> None:
    assert _ports.candidates_outside(*ephemeral) == expected
