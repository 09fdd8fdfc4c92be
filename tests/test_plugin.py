"""pytester acceptance tests of the pytest plugin, in subprocesses with real services."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from conftest import APPS, PY, TCP, default_sigint, launcher_processes


CONFIG = f"""
[launcher]
state_dir = "state"
[launcher.test_env]
API_URL = "${{services.api.url}}"
[services.plain]
command = ["{PY}", "{TCP}", "${{port}}"]
[services.api]
app = "web:app"
depends_on = ["plain"]
health = {{ http = "/health" }}
env = {{ PLAIN_PORT = "${{services.plain.port}}" }}
[services.broken]
command = ["{PY}", "-c", "print('cannot connect to the database postgres://app:s3cret@db/x'); raise SystemExit(3)"]
port = "auto"
[services.needs_broken]
command = ["{PY}", "{TCP}", "${{port}}"]
depends_on = ["broken"]
"""


@pytest.fixture
def project(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makefile(".toml", launcher=CONFIG)
    (pytester.path / "web.py").write_text((APPS / "web.py").read_text())
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    return pytester


def test_marker_services_fixture_and_summary(project: pytest.Pytester, no_orphans: None) -> None:
    """Marked tests get their services and dependencies; the summary lists each service."""
    project.makeconftest("""
        import os
        # [launcher.test_env] is exported before any conftest.py is imported.
        IMPORT_TIME_API_URL = os.environ["API_URL"]
    """)
    project.makepyfile("""
        import json, os, urllib.request
        import pytest
        import conftest

        @pytest.mark.services("api")
        def test_api(services):
            assert sorted(services) == ["api", "plain"]
            assert conftest.IMPORT_TIME_API_URL == services["api"].url
            body = json.loads(urllib.request.urlopen(services["api"].url + "/env/PLAIN_PORT").read())
            assert body["value"] == str(services["plain"].port)
            with pytest.raises(TypeError):
                services["x"] = 1

        @pytest.mark.services("plain")
        class TestClass:
            def test_in_class(self, services, launcher):
                assert services["plain"].state == "running"
                assert launcher.service("api").state == "running"

        def test_needs_nothing(services):
            assert dict(services) == {}
    """)
    result = project.runpytest_subprocess("-p", "no:cacheprovider", "--launcher-report=report.json")
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(["*= unified launcher =*", "*plain*0*subprocess*", "*api*1*in_process*",
                                 "total startup * s within the budget of 25 s*", "mode: single_process (auto:*"])
    report = json.loads((project.path / "report.json").read_text())
    assert report["schema"] == 1 and set(report["runs"][0]["services"]) == {"api", "plain"}


def test_failed_service_errors_each_test_once(project: pytest.Pytester, no_orphans: None) -> None:
    """A failing service errors every test needing it with its cause and output; others pass,
    and a test that fails while its services run gets their log tails."""
    project.makepyfile("""
        import pytest

        @pytest.mark.services("broken")
        def test_one(): pass

        @pytest.mark.services("needs_broken")
        def test_two(): pass

        @pytest.mark.services("plain")
        def test_other(services): assert services["plain"].pid

        @pytest.mark.services("plain")
        def test_fails(services): assert False, "the test's own failure"
    """)
    result = project.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=1, errors=2)
    result.stdout.fnmatch_lines(["*unified-launcher log: plain (last 20 lines)*", "listening on *"])
    result.stdout.fnmatch_lines(["*service 'broken' failed to start: exited with code 3*",
                                 "*cannot connect to the database postgres://app:***@db/x*"])
    out = result.stdout.str()
    assert "s3cret" not in out  # masked in the message and everywhere else
    assert "Traceback" not in out and "During handling" not in out
    # Once per erroring test, not echoed again by a log section. pytest's own short summary is cut
    # off first: it repeats whole messages when CI is set (and at -vv), and is not ours to count.
    ours = out.split("short test summary info")[0]
    assert ours.count("cannot connect to the database") == 2
    result.stdout.fnmatch_lines(["broken * 0 *subprocess*FAILED",
                                 "needs_broken * 1 *subprocess*not started: broken failed",
                                 "total startup * s within the budget of 25 s, but FAILED to start: broken;*"])


def test_unknown_service_lists_known(project: pytest.Pytester) -> None:
    """An unknown name in the marker errors that test, listing the known services."""
    project.makepyfile("""
        import pytest

        @pytest.mark.services("apii")
        def test_x(): pass
    """)
    result = project.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*unknown service 'apii'; the config defines: api, broken, needs_broken, plain*"])


def test_marker_arguments_that_are_not_names_error_that_test(project: pytest.Pytester) -> None:
    """Names may be strings or a list of them; anything else errors the test with the fix (it was
    an INTERNALERROR that ended the whole run)."""
    project.makepyfile("""
        import pytest

        @pytest.mark.services(42)
        def test_int(): pass

        @pytest.mark.services(names=["plain"])
        def test_keyword(): pass

        @pytest.mark.services(["plain"], "plain")
        def test_list(services): assert list(services) == ["plain"]
    """)
    result = project.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, errors=2)
    result.stdout.fnmatch_lines([
        "*@pytest.mark.services: 42 is not a service name; name the services as strings: "
        '@pytest.mark.services("api", "db")*',
        "*@pytest.mark.services takes only fresh=True and health_errors=False as keywords (got names=...)*",
    ])
    assert "INTERNALERROR" not in result.stdout.str()


def test_config_error_is_a_usage_error(pytester: pytest.Pytester) -> None:
    """A config mistake ends the run with exit code 4 and the message, no traceback."""
    pytester.makefile(".toml", launcher="[services.a]\ncommand = ['x']\ndepends_on = ['b']\n[services.b]\ncommand = ['y']\ndepends_on = ['a']\n")
    pytester.makepyfile("def test_x(): pass\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*launcher config error in *launcher.toml*dependency cycle: a -> b -> a*"])
    assert "Traceback" not in result.stderr.str() + result.stdout.str()


def test_unknown_profile_is_a_usage_error(project: pytest.Pytester) -> None:
    """--launcher-profile with an unknown name lists what is known."""
    project.makepyfile("def test_x(): pass\n")
    result = project.runpytest_subprocess("-p", "no:cacheprovider", "--launcher-profile=nope")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*unknown profile 'nope'*"])


def test_marker_without_config(pytester: pytest.Pytester) -> None:
    """The marker with no config errors the test, saying where it looked."""
    pytester.makepyfile("""
        import pytest

        @pytest.mark.services("api")
        def test_x(): pass
    """)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--strict-markers")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*no launcher config found; looked in: *launcher.toml*"])


def test_no_config_imports_nothing_heavy(pytester: pytest.Pytester) -> None:
    """Without a config and marker, the plugin imports none of uvicorn, fastapi, aiohttp, pydantic."""
    pytester.makepyfile("""
        import sys
        def test_x():
            heavy = [m for m in ("uvicorn", "fastapi", "aiohttp", "pydantic", "statemachine") if m in sys.modules]
            assert heavy == []
    """)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:asyncio", "-p", "no:benchmark")
    result.assert_outcomes(passed=1)
    assert not (pytester.path / ".launcher").exists()


def test_config_but_no_marker_imports_no_server(project: pytest.Pytester) -> None:
    """With a config but no service used, none of uvicorn, fastapi, aiohttp is imported."""
    project.makepyfile("""
        import sys
        def test_x():
            heavy = [m for m in ("uvicorn", "fastapi", "starlette", "aiohttp", "statemachine") if m in sys.modules]
            assert heavy == []
    """)
    result = project.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:asyncio", "-p", "no:benchmark",
                                          "-p", "no:anyio")
    result.assert_outcomes(passed=1)


def test_budget_gate_fails_the_session(project: pytest.Pytester, no_orphans: None) -> None:
    """A startup over --launcher-budget makes the session exit 1 even if every test passed."""
    project.makepyfile("""
        import pytest

        @pytest.mark.services("api")
        def test_x(): pass
    """)
    result = project.runpytest_subprocess("-p", "no:cacheprovider", "--launcher-budget=0.000001")
    result.assert_outcomes(passed=1)
    assert result.ret == 1
    result.stdout.fnmatch_lines(["*EXCEEDS the budget of 1e-06 s*"])


def test_service_dying_mid_session_is_reported(project: pytest.Pytester, no_orphans: None) -> None:
    """A service that dies is reported on the next test that needs it, with no silent restart."""
    project.makepyfile("""
        import os, signal, time
        import pytest

        @pytest.mark.services("plain")
        def test_kill(services):
            os.kill(services["plain"].pid, signal.SIGKILL)
            time.sleep(0.3)

        @pytest.mark.services("plain")
        def test_next(): pass
    """)
    result = project.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, errors=2)  # test_kill's teardown (it died under it), test_next's setup
    result.stdout.fnmatch_lines(["*ERROR at teardown of test_kill*",
                                 "service 'plain', which this test uses, died at *s into the test): was killed by SIGKILL",
                                 "*ERROR at setup of test_next*",
                                 "*service 'plain' is no longer running: was killed by SIGKILL*"])


def test_failing_test_gets_service_logs(project: pytest.Pytester, no_orphans: None) -> None:
    """A failing test's report carries its services' log tails as a section."""
    project.makepyfile("""
        import pytest

        @pytest.mark.services("plain")
        def test_fails(): assert False
    """)
    result = project.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*unified-launcher log: plain (last 20 lines)*", "listening on *"])


def test_async_test_and_fault_injection(project: pytest.Pytester, no_orphans: None) -> None:
    """Async tests use the fixtures too; restart() gives the service a new process."""
    project.makepyfile("""
        import pytest

        @pytest.mark.asyncio
        @pytest.mark.services("plain")
        async def test_restart(services):
            old = services["plain"].pid
            services["plain"].restart()
            assert services["plain"].pid != old and services["plain"].state == "running"
            assert "listening on" in services["plain"].logs()
    """)
    result = project.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)


def _run_pytest(path: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([PY, "-m", "pytest", "-p", "no:cacheprovider", *args], cwd=path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            preexec_fn=default_sigint)


def _wait_for(path: Path, timeout: float = 30) -> None:
    end = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > end:
            raise AssertionError(f"{path} never appeared")
        time.sleep(0.05)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=lambda s: s.name)
def test_interrupt_during_tests_stops_everything(project: pytest.Pytester, sig: signal.Signals, no_orphans: None) -> None:
    """SIGINT (Ctrl-C), SIGTERM (a cancelled CI job) or SIGHUP while a test runs: the session ends
    and no service process survives."""
    project.makepyfile("""
        import pathlib, time
        import pytest

        @pytest.mark.services("api")
        def test_wait():
            pathlib.Path("started").touch()
            time.sleep(60)
    """)
    proc = _run_pytest(project.path, "--launcher-mode=multi_process")
    _wait_for(project.path / "started")
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == pytest.ExitCode.INTERRUPTED, out
    assert "KeyboardInterrupt" in out
    if sig != signal.SIGINT:
        assert f"{sig.name} received: stopping the services" in out


@pytest.mark.parametrize(("xdist_mode", "target"), [("shared", "controller"), ("per_worker", "process group")])
def test_sigterm_to_an_xdist_run_stops_every_service(
    project: pytest.Pytester, xdist_mode: str, target: str, no_orphans: None
) -> None:
    """SIGTERM to the controller, or to the whole process group (as a CI runner cancelling a job
    does), ends an xdist run with every worker's services stopped."""
    project.makepyfile("""
        import os, pathlib, time
        import pytest

        @pytest.mark.parametrize("i", range(2))
        @pytest.mark.services("api")
        def test_wait(i):
            pathlib.Path(f"started-{os.environ['PYTEST_XDIST_WORKER']}").touch()
            time.sleep(60)
    """)
    proc = _run_pytest(project.path, "-n", "2", f"--launcher-xdist={xdist_mode}")
    end = time.monotonic() + 60
    while len(list(project.path.glob("started-*"))) < 2 and time.monotonic() < end:
        time.sleep(0.05)
    assert len(list(project.path.glob("started-*"))) == 2
    if target == "controller":
        proc.send_signal(signal.SIGTERM)
    else:
        os.killpg(proc.pid, signal.SIGTERM)  # _run_pytest starts it in a session of its own
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == pytest.ExitCode.INTERRUPTED, out


def test_ctrl_c_during_startup_stops_everything(project: pytest.Pytester, no_orphans: None) -> None:
    """SIGINT while services are still starting: what was spawned is stopped."""
    slow = f'[services.slow]\ncommand = ["{PY}", "{TCP}", "${{port}}", "--delay", "30"]\ndepends_on = ["plain"]\n'
    (project.path / "launcher.toml").write_text(CONFIG + slow)
    project.makepyfile("""
        import pytest

        @pytest.mark.services("slow")
        def test_x(): pass
    """)
    proc = _run_pytest(project.path)
    end = time.monotonic() + 30
    while time.monotonic() < end:
        if any(p.environ().get("UNIFIED_LAUNCHER_SERVICE") == "slow" for p in launcher_processes()):
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == pytest.ExitCode.INTERRUPTED, out


def test_sigkilled_session_is_reaped_by_the_next_run(project: pytest.Pytester, no_orphans: None) -> None:
    """A SIGKILLed session leaves services behind; the next run reaps exactly those, with their stop
    signal first (PostgreSQL killed outright leaves shared memory behind), and their ${tmp}, in
    memory too, and a daemon the service forked out of its group."""
    from pytest_unified_launcher.config import memory_root

    text = CONFIG.replace("[services.plain]\n", "[services.plain]\ntmpfs = true\n")
    text = text.replace('"${port}"]', '"${port}", "--daemon-child", "--term-file", "term.txt"]', 1)  # plain's
    assert "--daemon-child" in text.split("[services.api]")[0]
    (project.path / "launcher.toml").write_text(text)
    scratch = (memory_root(Path("ul-x")) or Path(tempfile.gettempdir()) / "ul-x").parent  # where ${tmp} goes here
    before = set(scratch.glob("ul-*"))
    bystander = subprocess.Popen([PY, "-c", "import time; time.sleep(60)"])
    project.makepyfile("""
        import pathlib, time
        import pytest

        @pytest.mark.services("plain")
        def test_wait(services):
            pathlib.Path("pid").write_text(str(services["plain"].pid))
            time.sleep(60)
    """)
    proc = _run_pytest(project.path)
    _wait_for(project.path / "pid")
    time.sleep(0.1)
    orphan = int((project.path / "pid").read_text())
    proc.kill()  # SIGKILL: no teardown runs
    proc.communicate()
    assert psutil.pid_exists(orphan), "the killed session's service should still run before the reap"
    # Its own roots, named in its run file: under xdist another worker's session may make a ul-*/plain meanwhile.
    roots = {Path(json.loads(r.read_text())["tmp_root"]).name for r in (project.path / "state" / "run").glob("*.json")}
    left = [d for d in set(scratch.glob("ul-*")) - before if d.name in roots and (d / "plain").is_dir()]
    assert len(left) == 1, "the killed session's ${tmp} should still be there before the reap"
    project.makepyfile("""
        import pytest

        @pytest.mark.services("plain")
        def test_again(services): pass
    """)
    (project.path / "launcher.toml").write_text(CONFIG)  # so only the reap can write term.txt
    result = project.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    assert not psutil.pid_exists(orphan) or psutil.Process(orphan).status() == psutil.STATUS_ZOMBIE
    assert not left[0].exists()
    assert (project.path / "term.txt").read_text() == "stopped by SIGTERM\n"
    assert bystander.poll() is None, "an unrelated process must not be touched"
    bystander.kill()
    bystander.wait()


@pytest.mark.parametrize("xdist_mode", ["shared", "per_worker"])
def test_xdist(project: pytest.Pytester, xdist_mode: str, no_orphans: None) -> None:
    """shared: one environment for all workers; per_worker: one each, on their own ports."""
    project.makepyfile("""
        import os
        import pytest

        @pytest.mark.parametrize("i", range(6))
        @pytest.mark.services("api")
        def test_x(services, i):
            with open(f"seen-{os.environ['PYTEST_XDIST_WORKER']}-{i}", "w") as fh:
                fh.write(f"{services['plain'].pid} {services['api'].url} {os.environ['API_URL']}")
            assert os.environ["API_URL"] == services["api"].url
    """)
    result = project.runpytest_subprocess("-p", "no:cacheprovider", "-n", "2", f"--launcher-xdist={xdist_mode}")
    result.assert_outcomes(passed=6)
    seen = [p.read_text().split() for p in project.path.glob("seen-*")]
    workers = {p.name.split("-")[1] for p in project.path.glob("seen-*")}
    pids = {s[0] for s in seen}
    urls = {s[1] for s in seen}
    if xdist_mode == "shared":
        assert len(pids) == 1 and len(urls) == 1
        result.stdout.fnmatch_lines(["*mode: multi_process (auto: xdist workers share the services)*"])
    elif len(workers) == 2:
        assert len(pids) == 2 and len(urls) == 2
        # Each worker's services log to a folder of its own (they overwrote one another's).
        ports = {(project.path / "state" / "logs" / w / "plain.log").read_text().split()[-1] for w in workers}
        assert len(ports) == 2
    result.stdout.fnmatch_lines(["*= unified launcher =*",
                                 "total startup * s within the budget of 25 s; teardown * s"])  # per_worker lacked it


def test_startup_benchmark_fixture_and_budget(project: pytest.Pytester, no_orphans: None) -> None:
    """startup_benchmark runs cold starts through pytest-benchmark and fails over budget."""
    project.makepyfile("""
        def test_bench(startup_benchmark):
            report = startup_benchmark(["api"], rounds=3)
            assert len(report["runs"]) == 3
            assert all(set(r["services"]) == {"api", "plain"} for r in report["runs"])
    """)
    result = project.runpytest_subprocess("-p", "no:cacheprovider", "--benchmark-json=bench.json")
    result.assert_outcomes(passed=1)
    data = json.loads((project.path / "bench.json").read_text())
    assert data["benchmarks"][0]["stats"]["rounds"] == 3
    assert data["benchmarks"][0]["extra_info"]["launcher_p95"] > 0
    over = project.runpytest_subprocess("-p", "no:cacheprovider", "--launcher-budget=0.000001")
    over.assert_outcomes(failed=1)
    over.stdout.fnmatch_lines(["*startup P95 * over 3 cold starts exceeds the budget of 1e-06 s*"])


def test_startup_benchmark_mistakes_fail_in_one_line(project: pytest.Pytester, no_orphans: None) -> None:
    """A wrong name or rounds, or a service that fails, fails the test with the cause, not a trace
    through the launcher's internals."""
    project.makepyfile("""
        def test_rounds(startup_benchmark): startup_benchmark(["plain"], rounds=0)
        def test_unknown(startup_benchmark): startup_benchmark(["nope"], rounds=2)
        def test_broken(startup_benchmark): startup_benchmark(["broken"], rounds=2)
    """)
    result = project.runpytest_subprocess("-p", "no:cacheprovider", "-W", "ignore::pytest_benchmark.logger.PytestBenchmarkWarning")
    result.assert_outcomes(failed=3)
    result.stdout.fnmatch_lines_random([
        "startup_benchmark: rounds=0; give a whole number of at least 1, e.g. rounds=10",
        "startup_benchmark: unknown service 'nope'; the config defines: api, broken, needs_broken, plain",
        "startup_benchmark: service 'broken' failed to start: exited with code 3",
    ])
    assert "orchestrator.py" not in result.stdout.str()


def test_startup_benchmark_without_pytest_benchmark_says_what_to_install(project: pytest.Pytester) -> None:
    """Without pytest-benchmark the fixture fails with the package to install, not a lookup error."""
    project.makepyfile("def test_bench(startup_benchmark): startup_benchmark(['plain'], rounds=2)\n")
    result = project.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:benchmark")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*startup_benchmark runs through pytest-benchmark, which is not installed or is "
                                 "disabled (-p no:benchmark): pip install pytest-benchmark*"])


def test_startup_benchmark_compare_fail_gates_a_regression(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, no_orphans: None
) -> None:
    """A saved baseline and --benchmark-compare-fail fail a run whose startup got several times slower."""
    pytester.makefile(".toml", launcher=f"""
        [launcher]
        state_dir = "state"
        [services.svc]
        setup = [["{PY}", "-c", "import time; time.sleep(${{env.SETUP_DELAY:-0}})"]]
        command = ["{PY}", "{TCP}", "${{port}}"]
    """)
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    pytester.makepyfile("""
        def test_bench(startup_benchmark):
            startup_benchmark("svc", rounds=2)
    """)
    args = ("-p", "no:cacheprovider")
    monkeypatch.setenv("SETUP_DELAY", "0")
    pytester.runpytest_subprocess(*args, "--benchmark-save=fast").assert_outcomes(passed=1)

    # Each start now sleeps 2 s more than the fast baseline's (~0.4 s, up to ~0.6 s on a loaded
    # machine): over twice its mean is a regression, with room for the baseline's own noise.
    # The same (slow) run is saved as the next baseline.
    monkeypatch.setenv("SETUP_DELAY", "2")
    regressed = pytester.runpytest_subprocess(*args, "--benchmark-save=slow", "--benchmark-compare=0001",
                                              "--benchmark-compare-fail=mean:100%")
    assert regressed.ret != 0
    regressed.stderr.fnmatch_lines(["Performance has regressed:",
                                    "*test_bench (0001_fast) - Field 'mean' has failed PercentageRegressionCheck*"])
    saved = sorted(p.name for p in pytester.path.glob(".benchmarks/*/*.json"))
    assert [name.split("_", 1)[1] for name in saved] == ["fast.json", "slow.json"]
    # The fast set-up measured against the slow baseline is an improvement: the gate lets it pass.
    monkeypatch.setenv("SETUP_DELAY", "0")
    improved = pytester.runpytest_subprocess(*args, "--benchmark-compare=0002", "--benchmark-compare-fail=mean:100%")
    assert improved.ret == 0, improved.stdout.str()


def test_waterfall_option_writes_svg(project: pytest.Pytester, no_orphans: None) -> None:
    """--launcher-waterfall writes the session's startup waterfall as SVG."""
    project.makepyfile("""
        import pytest

        @pytest.mark.services("api")
        def test_x(): pass
    """)
    result = project.runpytest_subprocess("-p", "no:cacheprovider", "--launcher-waterfall=w.svg")
    result.assert_outcomes(passed=1)
    import xml.etree.ElementTree as ET

    root = ET.fromstring((project.path / "w.svg").read_text())
    bars = [g for g in root.iter("{http://www.w3.org/2000/svg}g") if g.get("class") == "bar"]
    assert sorted(str(g.get("data-service")) for g in bars) == ["api", "plain"]


def test_launcher_services_option_and_keep(project: pytest.Pytester, no_orphans: None) -> None:
    """--launcher-services starts a set at session start; --launcher-keep leaves it up for `down`."""
    project.makepyfile("""
        def test_x(launcher):
            assert launcher.service("plain").state == "running"
    """)
    result = project.runpytest_subprocess("-p", "no:cacheprovider", "--launcher-services=plain", "--launcher-keep")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*services left running (--launcher-keep); stop them with: unified-launcher down*"])
    record = json.loads((project.path / "state" / "up.json").read_text())
    pid = record["services"]["plain"]["pid"]
    assert psutil.pid_exists(pid)
    down = subprocess.run([PY, "-m", "pytest_unified_launcher", "down"], cwd=project.path, capture_output=True,
                          text=True, timeout=60)
    assert down.returncode == 0, down.stderr
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_keep_under_xdist_shared_leaves_the_one_environment(project: pytest.Pytester, no_orphans: None) -> None:
    """-n 2 --launcher-keep leaves the shared environment up for `down` and --launcher-attach (it
    was torn down); with per_worker, whose environments are several, it is a usage error."""
    project.makepyfile("""
        import pytest

        @pytest.mark.services("api")
        def test_x(services): assert services["api"].url
    """)
    result = project.runpytest_subprocess("-p", "no:cacheprovider", "-n", "2", "--launcher-keep")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*services left running (--launcher-keep); stop them with: unified-launcher down*"])
    record = json.loads((project.path / "state" / "up.json").read_text())
    pids = [record["services"][name]["pid"] for name in ("api", "plain")]
    assert all(psutil.pid_exists(pid) for pid in pids)
    attached = project.runpytest_subprocess("-p", "no:cacheprovider", "--launcher-attach")
    attached.assert_outcomes(passed=1)
    status = subprocess.run([PY, "-m", "pytest_unified_launcher", "status"], cwd=project.path, capture_output=True,
                            text=True, timeout=60)
    assert status.returncode == 0 and "no supervisor (left running by pytest --launcher-keep" in status.stdout
    down = subprocess.run([PY, "-m", "pytest_unified_launcher", "down"], cwd=project.path, capture_output=True,
                          text=True, timeout=60)
    assert down.returncode == 0, down.stderr
    per_worker = project.runpytest_subprocess("-p", "no:cacheprovider", "-n", "2", "--launcher-keep",
                                              "--launcher-xdist=per_worker")
    assert per_worker.ret == pytest.ExitCode.USAGE_ERROR
    per_worker.stderr.fnmatch_lines(["ERROR: --launcher-keep with --launcher-xdist=per_worker: *use --launcher-xdist=shared*"])


def test_state_dir_is_private(project: pytest.Pytester, no_orphans: None) -> None:
    """The state folder is 0700 and its state files 0600."""
    project.makepyfile("""
        import os, stat
        import pytest

        @pytest.mark.services("plain")
        def test_x():
            assert stat.S_IMODE(os.stat("state").st_mode) == 0o700
            run = [f for f in os.listdir("state/run") if f.endswith(".json")]
            assert run and stat.S_IMODE(os.stat(f"state/run/{run[0]}").st_mode) == 0o600
    """)
    project.runpytest_subprocess("-p", "no:cacheprovider").assert_outcomes(passed=1)


@pytest.mark.parametrize("options", [["--dist", "loadfile"], ["--dist", "loadfile", "-n", "0"]],
                         ids=["dist-without-n", "n0"])
def test_a_dist_option_without_workers_is_a_single_session(project: pytest.Pytester, options: list[str],
                                                            no_orphans: None) -> None:
    """`addopts = --dist loadfile` (the example's) without -n: xdist runs the tests here, so this
    is the single session: it printed no summary and wrote no report (it waited for workers)."""
    project.makepyfile("""
        import pytest

        @pytest.mark.services("plain")
        def test_x(services): assert services["plain"].pid
    """)
    result = project.runpytest_subprocess("-p", "no:cacheprovider", *options, "--launcher-report=report.json")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*unified launcher*", "plain *ok*"])
    assert json.loads((project.path / "report.json").read_text())["runs"]


def test_xdist_dist_each_per_worker(project: pytest.Pytester, no_orphans: None) -> None:
    """--dist=each with per_worker: every worker runs every test against its own environment."""
    project.makepyfile("""
        import pytest

        @pytest.mark.services("plain")
        def test_x(services): assert services["plain"].pid
    """)
    result = project.runpytest_subprocess("-p", "no:cacheprovider", "-n", "2", "--dist=each",
                                          "--launcher-xdist=per_worker")
    result.assert_outcomes(passed=2)


def test_xdist_worker_sigkill_is_reaped_by_controller(project: pytest.Pytester, no_orphans: None) -> None:
    """A worker SIGKILLed after starting shared services: the controller still stops everything."""
    project.makepyfile("""
        import os, signal
        import pytest

        @pytest.mark.services("api")
        def test_dies(services):
            os.kill(os.getpid(), signal.SIGKILL)

        @pytest.mark.parametrize("i", range(3))
        def test_other(i): pass
    """)
    result = project.runpytest_subprocess("-p", "no:cacheprovider", "-n", "2")
    assert result.ret == 1
    result.stdout.fnmatch_lines(["*crashed*"])


def test_fixed_port_with_per_worker_is_a_usage_error(pytester: pytest.Pytester) -> None:
    """A fixed port cannot serve several per_worker environments: exit 4 with the fix."""
    pytester.makefile(".toml", launcher=f'[services.a]\ncommand = ["{PY}", "{TCP}", "${{port}}"]\nport = 7001\n')
    pytester.makepyfile("def test_x(): pass\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-n", "2", "--launcher-xdist=per_worker")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*service 'a', key 'port': fixed port 7001 cannot be used with xdist = per_worker*",
                                 "*fix: use port = \"auto\"*"])


@pytest.mark.parametrize("option", ["--launcher-report", "--launcher-waterfall"])
def test_unwritable_output_path_is_a_usage_error_before_the_run(project: pytest.Pytester, option: str) -> None:
    """A report path that cannot be written fails at once, not as a traceback after every test ran."""
    (project.path / "a-file").write_text("")
    project.makepyfile("def test_x(): pass\n")
    result = project.runpytest_subprocess("-p", "no:cacheprovider", f"{option}=a-file/out")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: {option}: cannot write a-file/out (a-file is a file, not a folder)"])


@pytest.mark.parametrize("args", [["--collect-only"], ["--setup-plan"], ["--setup-plan", "--launcher-services=plain"],
                                  ["--collect-only", "--launcher-services=plain"]])
def test_runs_that_run_nothing_start_nothing(project: pytest.Pytester, args: list[str]) -> None:
    """--collect-only and --setup-plan show what would run; they start no service."""
    project.makepyfile("""
        import pytest

        @pytest.mark.services("api")
        def test_x(services): pass
    """)
    result = project.runpytest_subprocess("-p", "no:cacheprovider", *args)
    assert result.ret == pytest.ExitCode.OK
    assert "unified launcher" not in result.stdout.str()
    assert not list((project.path / "state").glob("**/*.log"))


def test_skipped_tests_start_nothing(project: pytest.Pytester) -> None:
    """A test skipped by its marks (skip, skipif, xfail(run=False)) starts no service."""
    project.makepyfile("""
        import pytest

        @pytest.mark.skip(reason="not today")
        @pytest.mark.services("api")
        def test_skip(services): pass

        @pytest.mark.skipif(True, reason="never")
        @pytest.mark.services("api")
        def test_skipif(services): pass

        @pytest.mark.xfail(run=False)
        @pytest.mark.services("api")
        def test_not_run(services): pass
    """)
    result = project.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(skipped=2, xfailed=1)
    assert "unified launcher" not in result.stdout.str()
    assert not list((project.path / "state").glob("**/*.log"))


def test_mode_alias_auto_detect_is_accepted_as_an_option(project: pytest.Pytester) -> None:
    """`--launcher-mode=auto_detect` is `auto`, as in the file and LAUNCHER_MODE."""
    project.makepyfile("""
        import pytest

        @pytest.mark.services("plain")
        def test_x(services): assert services["plain"].port
    """)
    result = project.runpytest_subprocess("-p", "no:cacheprovider", "--launcher-mode=auto_detect")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["mode: single_process (auto: *"])


@pytest.mark.parametrize(
    ("args", "ini", "message"),
    [
        (["--launcher-budget=fast"], "", "--launcher-budget: 'fast' is not a number of seconds above 0; e.g. 25"),
        (["--launcher-budget=-1"], "", "--launcher-budget: '-1' is not a number of seconds above 0; e.g. 25"),
        (["--launcher-mode=fast"], "", "--launcher-mode: 'fast' is not one of single_process, multi_process, auto, auto_detect"),
        (["--launcher-xdist=all"], "", "--launcher-xdist: 'all' is not one of shared, per_worker"),
        ([], "launcher_mode = fast\n", "ini key launcher_mode in *tox.ini: 'fast' is not one of single_process*"),
    ],
)
def test_bad_option_values_are_usage_errors_that_name_the_option(
    project: pytest.Pytester, args: list[str], ini: str, message: str
) -> None:
    """A wrong option or ini value is a usage error naming the option (not the config file)."""
    project.makefile(".ini", tox="[pytest]\nasyncio_default_fixture_loop_scope = function\n" + ini)
    project.makepyfile("def test_x(): pass\n")
    result = project.runpytest_subprocess("-p", "no:cacheprovider", *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: {message}"])
    assert "launcher.toml" not in result.stderr.str()


@pytest.mark.parametrize("with_config", [False, True])
def test_runs_without_pytest_xdist(project: pytest.Pytester, with_config: bool, no_orphans: None) -> None:
    """Installed without pytest-xdist (here: blocked with -p no:xdist), the plugin never breaks
    pytest: xdist's hooks are optional, a plain project and a launcher project both run."""
    if not with_config:
        (project.path / "launcher.toml").unlink()
        project.makepyfile("def test_plain(): pass\n")
    else:
        project.makepyfile("""
            import pytest

            @pytest.mark.services("api")
            def test_api(services):
                assert services["api"].url.startswith("http://")
        """)
    result = project.runpytest_subprocess("-p", "no:xdist", "-p", "no:cacheprovider")
    assert "INTERNALERROR" not in result.stdout.str() + result.stderr.str()
    result.assert_outcomes(passed=1)


def test_example_ini_needs_only_the_example_extra(pytester: pytest.Pytester) -> None:
    """example_project/pytest.ini works without pytest-asyncio (not in the `example` extra; blocked
    here): it set an asyncio ini key, which with filterwarnings=error was an INTERNALERROR."""
    ini = Path(__file__).parent.parent / "example_project" / "pytest.ini"
    (pytester.path / "pytest.ini").write_text(ini.read_text().replace("testpaths = tests\n", ""))
    pytester.makepyfile("def test_x(): pass\n")
    result = pytester.runpytest_subprocess("-p", "no:asyncio", "-p", "no:cacheprovider")
    assert "INTERNALERROR" not in result.stdout.str() + result.stderr.str()
    result.assert_outcomes(passed=1)


def test_startup_benchmark_leaves_the_session_alone(project: pytest.Pytester, no_orphans: None) -> None:
    """startup_benchmark's rounds touch neither the session's environment variables (an in-process
    app's env, [launcher.test_env]) nor its services' logs."""
    project.makepyfile("""
        import os
        import pytest

        @pytest.mark.services("api")
        def test_1_session(services):
            pytest.seen = (os.environ["PLAIN_PORT"], os.environ["API_URL"], os.stat(services["plain"].log_path).st_ino)

        def test_2_bench(startup_benchmark):
            startup_benchmark(["api"], rounds=2)

        @pytest.mark.services("api")
        def test_3_after(services):
            assert os.environ["PLAIN_PORT"] == str(services["plain"].port) == pytest.seen[0]
            assert os.environ["API_URL"] == services["api"].url == pytest.seen[1]
            assert os.stat(services["plain"].log_path).st_ino == pytest.seen[2]
    """)
    result = project.runpytest_subprocess("-p", "no:cacheprovider", "--launcher-mode=single_process")
    result.assert_outcomes(passed=3)


def test_launcher_fixture_status_is_a_method(project: pytest.Pytester, no_orphans: None) -> None:
    """launcher.status() (as the README lists it, beside start() and report()) gives the status;
    it was a property, so calling it raised TypeError."""
    project.makepyfile("""
        def test_status(launcher):
            assert launcher.status() == "idle"
            launcher.start("plain")
            assert launcher.status() == launcher.get_status() == "running"
    """)
    result = project.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)


@pytest.mark.parametrize("xdist", [[], ["-n", "2"]])
def test_summary_names_a_service_that_died_mid_session(project: pytest.Pytester, xdist: list[str],
                                                       no_orphans: None) -> None:
    """A service killed during the session is DIED in the summary (it showed 'ok'), also when the
    xdist controller stops the shared environment."""
    project.makepyfile("""
        import os, signal, time
        import pytest

        @pytest.mark.services("plain", health_errors=False)
        def test_kill(services):
            os.kill(services["plain"].pid, signal.SIGKILL)
            time.sleep(0.2)
    """)
    result = project.runpytest_subprocess("-p", "no:cacheprovider", *xdist)
    result.assert_outcomes(passed=1)
    # Under xdist the worker's health monitor saw the exit (its pidfd), with the signal.
    result.stdout.fnmatch_lines(["plain *DIED (was killed by SIGKILL)", "*DIED while running: plain*"])


def test_handles_of_services_another_worker_started_are_complete(project: pytest.Pytester, no_orphans: None) -> None:
    """Under xdist `shared`, the worker that adopted a service another worker started sees every
    ServiceHandle field as that worker does (startup_seconds was None)."""
    project.makepyfile("""
        import pytest

        @pytest.mark.services("api")
        def test_fields(services):
            for name in ("api", "plain"):
                handle = services[name]
                assert handle.startup_seconds is not None and handle.startup_seconds > 0, name
                assert handle.pid is not None and handle.runner == "subprocess", name
                assert handle.level == (1 if name == "api" else 0) and handle.port and handle.url, name
                assert handle.state == "running" and handle.log_path is not None, name
    """)
    # --dist each: the test runs on both workers, so one starts the services and the other adopts them.
    result = project.runpytest_subprocess("-p", "no:cacheprovider", "-n", "2", "--dist", "each")
    result.assert_outcomes(passed=2)


def test_shared_stop_then_start_adopts_what_another_worker_started(project: pytest.Pytester,
                                                                    no_orphans: None) -> None:
    """Under xdist `shared`, worker A stops a service, worker B then needs it (and starts it), then
    A's start() adopts B's instance instead of failing on its port ("already in use by pid P")."""
    project.makepyfile("""
        import os, time
        from pathlib import Path

        def wait_for(path):
            deadline = time.monotonic() + 60
            while not path.exists():
                assert time.monotonic() < deadline, f"never saw {path}"
                time.sleep(0.02)

        def test_race(launcher, pytestconfig):
            here = pytestconfig.rootpath
            if os.environ["PYTEST_XDIST_WORKER"] == "gw0":
                handle = launcher.start("plain")["plain"]
                handle.stop()
                (here / "stopped").touch()
                wait_for(here / "b_started")
                handle.start()
                assert handle.pid == int((here / "b_pid").read_text()) and handle.alive
                (here / "a_done").touch()
            else:
                wait_for(here / "stopped")
                handle = launcher.start("plain")["plain"]
                (here / "b_pid").write_text(str(handle.pid))
                (here / "b_started").touch()
                wait_for(here / "a_done")
                assert handle.alive
    """)
    result = project.runpytest_subprocess("-p", "no:cacheprovider", "-n", "2", "--dist", "each")
    result.assert_outcomes(passed=2)


@pytest.mark.parametrize(("args", "ini", "sections"), [
    ([], "", ["plain (died; last 20 lines)", "api (last 20 lines)"]),
    (["-v"], "", ["plain (died; last 20 lines)", "api (last 20 lines)"]),
    ([], "launcher_log_lines = 5\n", ["plain (died; last 5 lines)", "api (last 5 lines)"]),
    ([], "launcher_log_lines = 0\n", []),
])
def test_failing_test_shows_the_broken_service_first(project: pytest.Pytester, args: list[str], ini: str,
                                                      sections: list[str], no_orphans: None) -> None:
    """A failing test shows the tail of a service that died first, then the services it marked;
    their dependencies' tails only with -v (a dependency that is fine is noise: initdb's chatter);
    launcher_log_lines sets how many lines (0: none)."""
    project.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n" + ini)
    project.makepyfile("""
        import os, signal, time
        import pytest

        @pytest.mark.services("api", health_errors=False)
        def test_fails(services):
            os.kill(services["plain"].pid, signal.SIGKILL)
            time.sleep(0.2)
            assert False, "the test's own failure"
    """)
    # multi_process: the app's output is a log file (in-process apps' records are best effort).
    result = project.runpytest_subprocess("-p", "no:cacheprovider", "--launcher-mode=multi_process", *args)
    result.assert_outcomes(failed=1)
    shown = [line.split("unified-launcher log: ")[1].rstrip(" -") for line in result.stdout.lines
             if "unified-launcher log: " in line]
    assert shown == sections


def test_verbose_failing_test_shows_every_service_it_needs(project: pytest.Pytester, no_orphans: None) -> None:
    """With -v, a failing test shows the tails of its services' dependencies too, after its own."""
    project.makepyfile("""
        import pytest

        @pytest.mark.services("api")
        def test_fails(services):
            assert False
    """)
    quiet = project.runpytest_subprocess("-p", "no:cacheprovider", "--launcher-mode=multi_process")
    verbose = project.runpytest_subprocess("-p", "no:cacheprovider", "--launcher-mode=multi_process", "-v")
    assert "unified-launcher log: plain" not in quiet.stdout.str()
    verbose.stdout.fnmatch_lines(["*unified-launcher log: api (last 20 lines)*",
                                  "*unified-launcher log: plain (last 20 lines)*"])


def test_two_sessions_of_one_project_keep_their_logs_apart(project: pytest.Pytester, no_orphans: None) -> None:
    """A plain session and an xdist session of one project run at once: each service's logs() is
    its own environment's (the second session replaced logs/plain.log, so a failure could show
    "listening on" another port)."""
    project.makepyfile(test_a="""
        import os, time
        import pytest

        def wait_for(path):
            deadline = time.monotonic() + 60
            while not path.exists():
                assert time.monotonic() < deadline, f"never saw {path}"
                time.sleep(0.02)

        @pytest.mark.services("plain")
        def test_logs(services, pytestconfig):
            here = pytestconfig.rootpath
            if os.environ.get("ROLE") == "first":
                (here / "first_up").touch()
                wait_for(here / "second_done")
            else:
                wait_for(here / "first_up")
            time.sleep(0.1)
            assert f"listening on {services['plain'].port}" in services["plain"].logs()
            if os.environ.get("ROLE") != "first":
                (here / "second_done").touch()
    """)
    base = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q"]
    first = subprocess.Popen(base, cwd=project.path, env={**os.environ, "ROLE": "first"},
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    second = subprocess.run([*base, "-n", "2"], cwd=project.path, env={**os.environ, "ROLE": "second"},
                            capture_output=True, text=True, timeout=120)
    out, _ = first.communicate(timeout=120)
    assert second.returncode == 0, second.stdout + second.stderr
    assert first.returncode == 0, out


def test_explicit_single_process_conflict_is_a_usage_error(pytester: pytest.Pytester) -> None:
    """--launcher-mode=single_process with two apps that set one variable differently is a usage
    error before any test (exit 4), as every config mistake is (it errored each test instead)."""
    pytester.makefile(".toml", launcher="""
        [services.a]
        app = "web:app"
        env = { GREETING = "hi" }
        [services.b]
        app = "web:app"
        env = { GREETING = "hello" }
    """)
    (pytester.path / "web.py").write_text((APPS / "web.py").read_text())
    pytester.makepyfile("""
        import pytest

        @pytest.mark.services("a", "b")
        def test_x(services): pass
    """)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--launcher-mode=single_process")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*in single_process mode, services 'a' and 'b' set GREETING to different values*"])


def test_replicas_are_a_handle_group_in_services(pytester: pytest.Pytester, no_orphans: None) -> None:
    """replicas = 3: the marker names the service once; services["worker"] holds its three
    instances, each its own process and port, and each instance is a service of its own too."""
    pytester.makefile(".toml", launcher=f"""
        [launcher]
        state_dir = "state"
        [services.worker]
        command = ["{PY}", "{TCP}", "${{port}}"]
        replicas = 3
        env = {{ REPLICA = "${{replica}}" }}
    """)
    pytester.makepyfile("""
        import psutil
        import pytest

        @pytest.mark.services("worker")
        def test_group(services):
            group = services["worker"]
            assert len(group) == 3 and [h.name for h in group] == ["worker-0", "worker-1", "worker-2"]
            assert len({h.port for h in group}) == 3 and len({h.pid for h in group}) == 3
            assert [psutil.Process(h.pid).environ()["REPLICA"] for h in group] == ["0", "1", "2"]
            assert group[1] is services["worker-1"] and group.urls == [h.url for h in group]
            group[2].restart()
            assert group[2].state == "running" and group[0].state == "running"

        @pytest.mark.services("worker-1")
        def test_one_instance(services):
            assert list(services) == ["worker-1"]
    """)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*worker-0 *", "*worker-2 *"])


def test_env_and_env_files_reach_services_and_tests(pytester: pytest.Pytester, no_orphans: None) -> None:
    """[env] written once reaches every service and the test process (before conftest.py is
    imported, like [launcher.test_env]); a service's env_file values reach it, its env wins."""
    pytester.makefile(".toml", launcher=f"""
        [env]
        CACHE_URL = "${{services.cache.url}}"
        [services.cache]
        command = ["{PY}", "{TCP}", "${{port}}"]
        [services.worker]
        command = ["{PY}", "{TCP}", "${{port}}"]
        depends_on = [{{ service = "cache", condition = "started" }}]
        env_file = "worker.env"
        env = {{ LEVEL = "from-env" }}
    """)
    (pytester.path / "worker.env").write_text("LEVEL=from-file\nFLAVOUR='from file'\n")
    pytester.makeconftest("""
        import os
        AT_IMPORT = os.environ.get("CACHE_URL")
    """)
    pytester.makepyfile("""
        import os
        import psutil
        import pytest
        from conftest import AT_IMPORT

        @pytest.mark.services("worker")
        def test_env(services):
            url = services["cache"].url
            assert AT_IMPORT == os.environ["CACHE_URL"] == url
            env = psutil.Process(services["worker"].pid).environ()
            assert (env["CACHE_URL"], env["LEVEL"], env["FLAVOUR"]) == (url, "from-env", "from file")
    """)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
