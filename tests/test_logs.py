"""Log volume is bounded: a service's log is rotated at a cap, and `up` follows it with bounded memory."""

from __future__ import annotations

import asyncio
import io
import os
import textwrap
from pathlib import Path

from conftest import PY
from pytest_unified_launcher import UnifiedLauncher, load_config
from pytest_unified_launcher._logs import cap_log

CAP = 256 * 1024

#: About 10 MB/s: 100 lines of 1 KiB, then a 10 ms pause (fast enough to pass the cap many times a second).
FLOOD = """\
import sys, time
chunk = (b"x" * 1023 + b"\\n") * 100
while True:
    sys.stdout.buffer.write(chunk)
    sys.stdout.buffer.flush()
    time.sleep(0.01)
"""


def test_cap_log_keeps_the_last_part_and_truncates(tmp_path: Path) -> None:
    """Over the cap, the log's last part moves to <name>.log.1 and the log starts again empty;
    a writer with O_APPEND goes on writing at the new end."""
    path = tmp_path / "svc.log"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    for i in range(400):
        os.write(fd, f"line {i:04d} ".encode() + b"x" * 1000 + b"\n")
    assert cap_log(path, CAP)
    rotated = (tmp_path / "svc.log.1").read_bytes()
    assert len(rotated) <= CAP and rotated.endswith(b"x\n") and b"line 0399" in rotated
    assert rotated.startswith(b"line ")  # cut at a line start
    assert path.stat().st_size == 0
    os.write(fd, b"after\n")
    os.close(fd)
    assert path.read_bytes() == b"after\n"
    assert not cap_log(path, CAP)  # under the cap: untouched


def test_cap_log_never_follows_a_link(tmp_path: Path) -> None:
    """A link planted at <name>.log.1 is replaced, its target never written."""
    target = tmp_path / "precious"
    target.write_text("keep me")
    path = tmp_path / "svc.log"
    path.write_bytes(b"y" * (CAP + 10))
    (tmp_path / "svc.log.1").symlink_to(target)
    assert cap_log(path, CAP)
    assert target.read_text() == "keep me"
    assert not (tmp_path / "svc.log.1").is_symlink()


async def test_a_flooding_service_log_stays_bounded(tmp_path: Path, no_orphans: None) -> None:
    """A service flooding its output (~10 MB/s) keeps its log bounded near the cap while it runs
    (a log grew without bound: 1.6 GB in 16 s)."""
    (tmp_path / "flood.py").write_text(FLOOD)
    path = tmp_path / "launcher.toml"
    path.write_text(textwrap.dedent(f"""
        [launcher]
        state_dir = "state"
        [services.flood]
        command = ["{PY}", "flood.py"]
    """))
    async with UnifiedLauncher(load_config(path, environ={}), log_max_bytes=CAP) as launcher:
        handle = (await launcher.start())["flood"]
        log = handle.log_path
        assert log is not None
        rotated = log.with_name(log.name + ".1")
        sizes = []
        for _ in range(100):
            await asyncio.sleep(0.05)
            sizes.append(log.stat().st_size)
        assert rotated.exists() and launcher.log_rotations >= 3
        # Checked every 0.1 s: what it writes in between (~1 MB) is the bound's slack.
        assert max(sizes) < 64 * CAP, sizes
        assert rotated.stat().st_size <= CAP



def test_up_follows_a_flood_with_bounded_memory(tmp_path: Path, no_orphans: None) -> None:
    """`up` whose output falls behind a flooding service (its reader paused) keeps its memory
    bounded and says what it skipped (it read the whole backlog at once: 39 -> 439 MB)."""
    import subprocess
    import time

    import psutil

    (tmp_path / "flood.py").write_text(FLOOD)
    (tmp_path / "launcher.toml").write_text(textwrap.dedent(f"""
        [launcher]
        state_dir = "state"
        [services.flood]
        command = ["{PY}", "flood.py"]
    """))
    proc = subprocess.Popen([PY, "-m", "pytest_unified_launcher", "up"], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    out = proc.stdout
    assert isinstance(out, io.BufferedReader)
    try:
        first = out.readline()  # "starting ...": up runs
        assert first, "up printed nothing"
        up = psutil.Process(proc.pid)
        time.sleep(3)  # nobody reads: the pipe fills, up's display falls ~30 MB behind the log
        baseline = up.memory_info().rss
        peak, shown = baseline, b""
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            shown += out.read1(1 << 20)
            peak = max(peak, up.memory_info().rss)
        assert b"bytes of output skipped" in shown
        assert peak - baseline < 20 * 1024 * 1024, (baseline, peak)
    finally:
        proc.send_signal(2)
        try:
            while out.read1(1 << 20):
                pass
            proc.wait(timeout=30)
        finally:
            proc.kill()
            proc.wait()
            out.close()
