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
