"""SPEC 10 under pytest: a service that turns unhealthy or dies while a test uses it is that
test's error; the summary and the report show health and resources; xdist restarts are no deaths."""

from __future__ import annotations

import json
import textwrap

import pytest

from conftest import APPS, PY

CONFIG = f"""
[launcher]
state_dir = "state"
[services.web]
command = ["{PY}", "{APPS / 'flaky_http.py'}", "${{port}}"]
health = {{ http = "/health", interval = 0.05, failure_threshold = 2, timeout = 0.3 }}
"""


@pytest.fixture
def project(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makefile(".toml", launcher=CONFIG)
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    pytester.makeconftest("""
        import time, urllib.request

        def steer(url, mode):
            urllib.request.urlopen(f"{url}/mode/{mode}", timeout=5).read()

        def wait_for(predicate):
            end = time.monotonic() + 30
            while not predicate() and time.monotonic() < end:
                time.sleep(0.01)
    """)
    return pytester


def test_a_service_turning_unhealthy_mid_test_is_its_error(project: pytest.Pytester, no_orphans: None) -> None:
    """The test during which its service turned unhealthy errors at teardown (what, when, the last
    probe, the log tail); the next test that needs it errors at setup while it stays unhealthy;
    once it recovers, tests pass again. The summary lists the transitions and peak memory."""
    project.makepyfile(textwrap.dedent("""
        import pytest
        from conftest import steer, wait_for

        @pytest.mark.services("web")
        def test_breaks(services):
            steer(services["web"].url, "503")
            wait_for(lambda: services["web"].state == "unhealthy")

        @pytest.mark.services("web")
        def test_while_unhealthy():
            pass

        def test_heal(launcher):
            web = launcher.service("web")
            steer(web.url, "ok")
            wait_for(lambda: web.state == "running")

        @pytest.mark.services("web")
        def test_after_recovery(services):
            assert services["web"].state == "running"
    """))
    result = project.runpytest_subprocess("-p", "no:cacheprovider", "--launcher-report=report.json")
    result.assert_outcomes(passed=3, errors=2)
    result.stdout.fnmatch_lines([
        "*ERROR at teardown of test_breaks*",
        "service 'web', which this test uses, turned unhealthy at *:*:*.* (* s into the test): "
        "2 probes failed in a row (http GET http://127.0.0.1:*/health); last: GET * answered HTTP 503",
        "last probe: GET * answered HTTP 503",
        "--- last lines of its log ---",
        "*GET /health HTTP/1.1*503*",
        "*ERROR at setup of test_while_unhealthy*",
        "*service 'web' is unhealthy: its health check (http GET http://127.0.0.1:*/health) failed * times in a row "
        "(last probe: GET * answered HTTP 503)*",
    ])
    result.stdout.fnmatch_lines(["service*peak MiB*result", "web *subprocess*ok",
                                 "health: web: unhealthy *:*:* (2 probes failed in a row*), recovered *:*:*"])
    report = json.loads((project.path / "report.json").read_text())
    kinds = [t["kind"] for t in report["health"]["web"]["transitions"]]
    assert kinds == ["ready", "unhealthy", "recovered", "stopped"]
    assert report["resources"]["web"]["rss_peak_bytes"] > 0


def test_a_death_mid_test_is_its_error_unless_the_test_expects_it(project: pytest.Pytester,
                                                                  no_orphans: None) -> None:
    """A service killed under a test errors that test's teardown; health_errors=False is a
    fault-injection test's way of saying it breaks its services on purpose."""
    project.makepyfile(textwrap.dedent("""
        import os, signal
        import pytest
        from conftest import wait_for

        @pytest.mark.services("web", health_errors=False)
        def test_kills_on_purpose(services):
            os.kill(services["web"].pid, signal.SIGKILL)
            wait_for(lambda: services["web"].state == "died")
            services["web"].restart()

        @pytest.mark.services("web")
        def test_kills_by_accident(services):
            os.kill(services["web"].pid, signal.SIGKILL)
            wait_for(lambda: services["web"].state == "died")
    """))
    result = project.runpytest_subprocess("-p", "no:cacheprovider", "-v")
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(["*test_kills_on_purpose PASSED*", "*test_kills_by_accident PASSED*",
                                 "*test_kills_by_accident ERROR*",
                                 "service 'web', which this test uses, died at *: was killed by SIGKILL",
                                 "*health_errors=False*"])
    result.stdout.fnmatch_lines(["health: web: died *:*:* (was killed by SIGKILL), restarted *, died *"])


def test_a_wrong_health_errors_value_names_the_fix(project: pytest.Pytester) -> None:
    """health_errors takes a bool, like fresh."""
    project.makepyfile("""
        import pytest

        @pytest.mark.services("web", health_errors="no")
        def test_x(): pass
    """)
    result = project.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*health_errors='no'; write health_errors=True or health_errors=False*"])


def test_a_restart_by_another_xdist_worker_is_no_death(project: pytest.Pytester, no_orphans: None) -> None:
    """Under xdist `shared`, one worker restarting a service while another worker's test uses it
    is 'restarted' there, not 'died': that test passes, and both see the new instance."""
    project.makepyfile(test_a=textwrap.dedent("""
        import os, time
        import pytest
        from conftest import wait_for

        @pytest.mark.services("web")
        def test_restarts(services):
            wait_for(lambda: os.path.exists("b_running"))
            old = services["web"].pid
            services["web"].restart()
            assert services["web"].pid != old
            open("a_done", "w").close()
    """), test_b=textwrap.dedent("""
        import os, time
        import pytest
        from conftest import wait_for

        @pytest.mark.services("web")
        def test_uses_it_meanwhile(services):
            open("b_running", "w").close()
            wait_for(lambda: os.path.exists("a_done"))
            time.sleep(0.3)  # the exit seen, the new instance adopted
    """))
    result = project.runpytest_subprocess("-p", "no:cacheprovider", "-n", "2", "--dist", "loadfile",
                                          "--launcher-report=report.json")
    result.assert_outcomes(passed=2)
    report = json.loads((project.path / "report.json").read_text())
    kinds = [t["kind"] for t in report["health"]["web"]["transitions"]]
    assert "died" not in kinds and "restarted" in kinds
