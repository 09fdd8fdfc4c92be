"""The pre-imported spawner: forked app services are as isolated as plainly spawned ones."""

from __future__ import annotations

import asyncio
import json
import os

import textwrap
import urllib.request
from pathlib import Path

import psutil
import pytest

from pytest_unified_launcher import ServiceStartupError, UnifiedLauncher, load_config
from conftest import APPS



def project(tmp_path: Path, extra: str = "", spawner: str = "preimport") -> Path:
    (tmp_path / "web.py").write_text((APPS / "web.py").read_text())
    (tmp_path / "sub").mkdir()
    path = tmp_path / "launcher.toml"
    path.write_text(textwrap.dedent(f"""
        [launcher]
        mode = "multi_process"
        spawner = "{spawner}"
        state_dir = "state"
        [services.a]
        app = "web:app"
        env = {{ WHO = "a" }}
        [services.b]
        app = "web:app"
        env = {{ WHO = "b" }}
        cwd = "sub"
        depends_on = ["a"]
    """) + extra)
    return path


def get(url: str) -> dict[str, object]:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return dict(json.loads(resp.read()))


@pytest.mark.parametrize("spawner", ["preimport", "plain"])
async def test_forked_apps_are_isolated(tmp_path: Path, spawner: str, no_orphans: None) -> None:
    """Each forked app has its own session, environment, cwd and log; the helper goes with the launcher."""
    launcher = UnifiedLauncher(load_config(project(tmp_path, spawner=spawner), environ={}))
    try:
        handles = await launcher.start()
        a, b = handles["a"], handles["b"]
        assert get(f"{a.url}/env/WHO")["value"] == "a" and get(f"{b.url}/env/WHO")["value"] == "b"
        for h in (a, b):
            assert h.pid is not None and os.getsid(h.pid) == h.pid  # its own session and group
            assert h.log_path is not None and "serving web:app" in h.log_path.read_text()
        assert psutil.Process(b.pid).cwd() == str(tmp_path / "sub")
        parent = psutil.Process(a.pid).parent()
        helper = launcher._ctx.forkserver
        if spawner == "preimport":
            assert helper is not None and parent is not None and parent.pid == helper._proc.pid
            assert "_forkserver" in " ".join(parent.cmdline())
        else:
            assert helper is None and parent is not None and parent.pid == os.getpid()
    finally:
        await launcher.stop()
    if spawner == "preimport":
        assert not psutil.pid_exists(parent.pid) or parent.status() == psutil.STATUS_ZOMBIE


async def test_forked_app_failure_is_reported_at_once(tmp_path: Path, no_orphans: None) -> None:
    """An app that cannot be imported exits at once with its message, as with a plain spawn."""
    path = project(tmp_path, '[services.bad]\napp = "nosuch:app"\nstartup_timeout = 120\n')
    async with UnifiedLauncher(load_config(path, environ={})) as launcher:
        with pytest.raises(ServiceStartupError, match="exited with code 3") as info:
            await launcher.start(["bad"])
    assert "cannot import module 'nosuch'" in info.value.log_tail


async def test_restart_after_stop_reuses_a_new_helper(tmp_path: Path, no_orphans: None) -> None:
    """A full stop closes the helper; the next start gets a fresh one."""
    launcher = UnifiedLauncher(load_config(project(tmp_path), environ={}))
    try:
        for _ in range(2):
            handles = await launcher.start(["a"])
            assert get(f"{handles['a'].url}/health") == {"ok": True}
            await launcher._thread.call(launcher._stop(None))
    finally:
        await launcher.stop()



PROBE_APP = """
import sys

PRELOADED = "wsgiref.simple_server" in sys.modules  # at the app's import, in its own process

from fastapi import FastAPI

app = FastAPI()


@app.get("/preloaded")
def preloaded() -> dict[str, bool]:
    return {"preloaded": PRELOADED}
"""


@pytest.mark.parametrize("spawner", ["preimport", "plain"])
async def test_preload_imports_third_party_modules_in_the_helper(
    tmp_path: Path, spawner: str, caplog: pytest.LogCaptureFixture, no_orphans: None
) -> None:
    """[launcher] preload: the helper imports those modules while idle, so apps forked later have
    them (a missing one is a warning, not a failure); a plain spawn imports nothing early."""
    (tmp_path / "probe_app.py").write_text(PROBE_APP)
    path = project(tmp_path, '[services.probe]\napp = "probe_app:app"\n', spawner=spawner)
    path.write_text(path.read_text().replace(
        "[launcher]\n", '[launcher]\npreload = ["wsgiref.simple_server", "no_such_module_xyz"]\n', 1))
    async with UnifiedLauncher(load_config(path, environ={})) as launcher:
        await launcher.start(["a"])  # starts the helper, which preloads while nothing waits
        if spawner == "preimport":
            await asyncio.wait_for(launcher._ctx.forkserver.preloaded.wait(), 30)
        handle = (await launcher.start(["probe"]))["probe"]
        assert get(f"{handle.url}/preloaded") == {"preloaded": spawner == "preimport"}
    warned = [r.getMessage() for r in caplog.records if "preload" in r.getMessage()]
    if spawner == "preimport":
        assert len(warned) == 1 and "could not import no_such_module_xyz (ModuleNotFoundError" in warned[0]
    else:
        assert warned == []


async def test_a_request_larger_than_one_read_keeps_its_file_descriptors(tmp_path: Path, no_orphans: None) -> None:
    """An app whose environment makes its spawn request span several socket reads still starts
    (its log and ready-pipe descriptors arrive with the first byte)."""
    big = "x" * 40_000
    path = project(tmp_path, f'[services.big]\napp = "web:app"\nenv = {{ BIG1 = "{big}", BIG2 = "{big}" }}\n')
    async with UnifiedLauncher(load_config(path, environ={})) as launcher:
        handle = (await launcher.start(["big"]))["big"]
        assert launcher._ctx.forkserver is not None  # it went through the helper
        assert get(f"{handle.url}/env/BIG2")["value"] == big


async def test_a_forked_app_is_found_even_before_the_launcher_records_it(tmp_path: Path, no_orphans: None) -> None:
    """The spawner is on record (so the sentinel is armed) before it forks anything, and every
    child it forks carries the launcher's marker: a launcher killed between a fork and its record
    of the child still has that child reaped (the example's kill loop found one such leftover)."""
    from pytest_unified_launcher._process import marked_pids

    launcher = UnifiedLauncher(load_config(project(tmp_path), environ={}))
    try:
        handles = await launcher.start()
        record = json.loads(next((tmp_path / "state" / "run").glob("*.json")).read_text())
        spawner = launcher._ctx.forkserver
        assert record["processes"][str(spawner.pid)]["service"] == "(spawner)"
        assert {handles["a"].pid, handles["b"].pid} <= set(marked_pids(launcher.id))
    finally:
        await launcher.stop()
