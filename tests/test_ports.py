"""Machine-wide port claims, between real processes."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from conftest import PY

HOLD = """
import sys
from pytest_unified_launcher import _ports
print(*(_ports.reserve() for _ in range(3)), flush=True)
sys.stdin.read()  # hold the claims until the test closes our stdin
"""

SEE = """
import json
from pytest_unified_launcher import _ports
with _ports._locked() as claimed:
    print(json.dumps(sorted(claimed)))
"""


def test_claims_are_shared_whatever_tmpdir_each_process_has(tmp_path: Path) -> None:
    """A launcher with another TMPDIR (tox, CI runners) still sees the ports others claimed."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with subprocess.Popen([PY, "-c", HOLD], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                          env={**os.environ, "TMPDIR": str(tmp_path / "a")}) as holder:
        assert holder.stdin is not None and holder.stdout is not None
        held = {int(p) for p in holder.stdout.readline().split()}
        seen = subprocess.run([PY, "-c", SEE], capture_output=True, text=True, check=True,
                              env={**os.environ, "TMPDIR": str(tmp_path / "b")})
        holder.stdin.close()
    assert len(held) == 3 and held <= set(json.loads(seen.stdout))
    # Once the holder has exited, its claims are gone for everyone.
    after = subprocess.run([PY, "-c", SEE], capture_output=True, text=True, check=True)
    assert not held & set(json.loads(after.stdout))


MANY = """
import sys
from pytest_unified_launcher import _ports
sys.stdin.readline()  # start together
print(*(_ports.reserve() for _ in range(20)), flush=True)
sys.stdin.read()
"""


def test_launchers_reserving_at_the_same_moment_never_share_a_port() -> None:
    """Contending for the claims lock (polled, with a bounded wait) still gives each its own ports."""
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
