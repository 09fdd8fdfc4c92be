"""One environment shared by xdist workers: services the launcher does not run itself."""

from __future__ import annotations

import subprocess

import pytest

from conftest import PY, TCP


def test_an_external_service_serves_every_shared_worker(pytester: pytest.Pytester, no_orphans: None) -> None:
    """A url service has no process to record: the second test to need it (any worker) saw the
    record's missing pid as a death, "exited during the session", and errored."""
    server = subprocess.Popen([PY, TCP, "0"], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline().split()[-1])  # "listening on PORT"
        pytester.makefile(".toml", launcher=f"""
            [launcher]
            state_dir = "state"
            [services.payments]
            url = "http://127.0.0.1:{port}"
            health = {{ tcp = true }}
        """)
        pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
        pytester.makepyfile("""
            import pytest

            @pytest.mark.parametrize("n", range(6))
            @pytest.mark.services("payments")
            def test_pays(services, n):
                assert services["payments"].state == "running"
        """)
        result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-n", "2", "--launcher-xdist=shared")
        result.assert_outcomes(passed=6)
    finally:
        server.terminate()
        server.wait(10)
        if server.stdout is not None:
            server.stdout.close()
