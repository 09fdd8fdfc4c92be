"""Isolated data in a shared environment (SPEC 9): ``${worker}``, worker tasks, reset hooks,
``fresh=True``. Config rules are table-driven and pure; the rest runs real processes."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest

from pytest_unified_launcher import ConfigError, ServiceResetError, UnifiedLauncher, load_config
from pytest_unified_launcher.config import parse
from pytest_unified_launcher.config.models import ResetHook
from conftest import PY, TCP


def resolve(services: dict[str, Any], *, worker: str | None = None, test_env: dict[str, str] | None = None) -> Any:
    data: dict[str, Any] = {"services": services}
    if test_env:
        data["launcher"] = {"test_env": test_env}
    return parse(data, allocate_port=lambda name, host: 7001, worker=worker, environ={})


# --------------------------------------------------------------------------- config (pure)


@pytest.mark.parametrize(("worker", "name", "index"), [(None, "main", "0"), ("gw0", "gw0", "0"), ("gw12", "gw12", "12")])
def test_worker_placeholders_in_test_env_reset_and_worker_tasks(worker: str | None, name: str, index: str) -> None:
    config = resolve({
        "db": {"command": "sleep 60", "port": "auto",
               "reset": ["psql", "-p", "${port}", "-d", "app_${worker}", "-c", "TRUNCATE items"]},
        "create": {"command": ["createdb", "-T", "app_template", "app_${worker}", "-n", "${worker_index}"],
                   "task": True, "scope": "worker", "depends_on": ["db"]},
    }, worker=worker, test_env={"DATABASE": "app_${worker}", "REDIS_DB": "${worker_index}"})
    assert config.services["db"].reset == ResetHook(argv=("psql", "-p", "7001", "-d", f"app_{name}", "-c", "TRUNCATE items"))
    assert config.services["create"].command == ("createdb", "-T", "app_template", f"app_{name}", "-n", index)
    assert config.test_env == {"DATABASE": f"app_{name}", "REDIS_DB": index}
    assert config.worker == name and str(config.worker_index) == index
    assert config.worker_tasks == ("create",)
    # A worker task's log is its own under xdist (workers share logs/); else the plain name.
    assert config.services["create"].log_name == ("create.log" if worker is None else f"create.{name}.log")


@pytest.mark.parametrize(("reset", "expected"), [
    ("example_app.resets:truncate", ResetHook(function="example_app.resets:truncate")),
    ("redis-cli -p ${port} -n ${worker_index} FLUSHDB", ResetHook(argv=("redis-cli", "-p", "7001", "-n", "0", "FLUSHDB"))),
    (["/bin/sh", "-c", "echo a:b"], ResetHook(argv=("/bin/sh", "-c", "echo a:b"))),
])
def test_reset_is_a_function_or_a_command(reset: Any, expected: ResetHook) -> None:
    assert resolve({"db": {"command": "sleep 60", "port": "auto", "reset": reset}}).services["db"].reset == expected


@pytest.mark.parametrize(("services", "expected"), [
    ({"db": {"command": "postgres -d app_${worker}"}},
     "service 'db', key 'command': placeholder '${worker}' is known only in [launcher.test_env], in reset and in "
     'scope = "worker" tasks'),
    ({"db": {"command": "sleep 60", "env": {"N": "${worker_index}"}}},
     "service 'db', key 'env.N': placeholder '${worker_index}' is known only"),
    ({"db": {"command": "sleep 60", "scope": "worker"}},
     'service \'db\', key \'scope\': scope = "worker" is for tasks: a service that keeps running is one process '
     'for every xdist worker\n  fix: add task = true'),
    ({"mk": {"command": "true", "task": True, "scope": "worker"}, "api": {"command": "sleep 60", "depends_on": ["mk"]}},
     "service 'api', key 'depends_on': depends on 'mk', a scope = \"worker\" task: a service every xdist worker shares"),
    ({"db": {"command": "sleep 60", "reset": []}}, "service 'db', key 'reset': the reset command is empty"),
    ({"db": {"command": "sleep 60", "scope": "each"}}, "service 'db', key 'scope'"),
])
def test_isolation_mistakes_name_the_place_and_the_fix(services: dict[str, Any], expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        resolve(services)
    assert expected in str(info.value)


def test_a_worker_task_may_need_another_worker_task() -> None:
    config = resolve({
        "db": {"command": "sleep 60"},
        "create": {"command": "true", "task": True, "scope": "worker", "depends_on": ["db"]},
        "seed": {"command": "true", "task": True, "scope": "worker", "depends_on": ["create"]},
    })
    assert config.worker_tasks == ("create", "seed")


# --------------------------------------------------------------------------- the engine: reset


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "launcher.toml"
    path.write_text(textwrap.dedent(text).replace("{PY}", PY).replace("{TCP}", TCP))
    return path


def test_reset_runs_the_command_with_the_services_values_and_is_timed(tmp_path: Path, no_orphans: None) -> None:
    path = write(tmp_path, f"""
        [services.db]
        command = ["{{PY}}", "{{TCP}}", "${{port}}"]
        reset = ["{{PY}}", "-c", "import os, sys; open(sys.argv[1], 'a').write(os.environ['WHO'] + ' ${{port}} ${{worker}}\\\\n')", "{tmp_path / 'resets'}"]
        env = {{ WHO = "db" }}
    """)
    launcher = UnifiedLauncher(load_config(path, environ={}))
    try:
        port = launcher.start_blocking(["db"])["db"].port
        launcher.reset_blocking(["db"])
        launcher.reset_blocking(["db"])
        assert (tmp_path / "resets").read_text() == f"db {port} main\n" * 2
        resets = launcher.report()["resets"]
        assert list(resets) == ["db"] and resets["db"]["count"] == 2 and len(resets["db"]["seconds"]) == 2
        assert 0 < resets["db"]["p50"] <= resets["db"]["p95"]
    finally:
        launcher.stop_blocking()


def test_a_failing_reset_says_which_hook_and_shows_its_output(tmp_path: Path, no_orphans: None) -> None:
    path = write(tmp_path, """
        [services.db]
        command = ["{PY}", "{TCP}", "${port}"]
        reset = ["{PY}", "-c", "print('relation \\"items\\" does not exist'); raise SystemExit(3)"]
        [services.other]
        command = ["{PY}", "{TCP}", "${port}"]
    """)
    launcher = UnifiedLauncher(load_config(path, environ={}))
    try:
        with pytest.raises(ServiceResetError) as info:
            launcher.reset_blocking(["db"])  # not started yet
        assert "service 'db' could not be reset: it is not running (state: stopped); reset works on a running service: start it first" in str(info.value)
        launcher.start_blocking()
        with pytest.raises(ServiceResetError) as info:
            launcher.reset_blocking(["db"])
        message = str(info.value)
        assert message.startswith("service 'db' could not be reset: reset `") and "exited with code 3" in message
        assert 'relation "items" does not exist' in message
        with pytest.raises(ServiceResetError, match=r"service 'other' could not be reset: it has no reset hook: add "
                                                     r"reset = \[\"program\", \"arg\", ...\] or reset = \"module:function\" "
                                                     r"to \[services.other\]"):
            launcher.reset_blocking(["other"])
        assert launcher.services["db"].state == "running"  # a failed reset stops nothing
    finally:
        launcher.stop_blocking()


def test_a_function_hook_gets_the_handle_and_the_worker(tmp_path: Path, no_orphans: None) -> None:
    (tmp_path / "hooks.py").write_text(textwrap.dedent("""
        CALLS = []
        def clean(handle, worker):
            CALLS.append((handle.name, handle.port, handle.state, worker))
        def broken(handle, worker):
            _connect_to_the_template()
        def _connect_to_the_template():
            raise RuntimeError("the template database is missing")
        def one_arg(handle):
            pass
        NOT_A_FUNCTION = 3
    """))
    path = write(tmp_path, """
        [services.db]
        command = ["{PY}", "{TCP}", "${port}"]
        reset = "hooks:clean"
        [services.bad]
        command = ["{PY}", "{TCP}", "${port}"]
        reset = "hooks:broken"
        [services.wrong]
        command = ["{PY}", "{TCP}", "${port}"]
        reset = "hooks:NOT_A_FUNCTION"
        [services.missing]
        command = ["{PY}", "{TCP}", "${port}"]
        reset = "no_such_hooks_module:clean"
        [services.one_arg]
        command = ["{PY}", "{TCP}", "${port}"]
        reset = "hooks:one_arg"
        [services.plain]
        command = ["{PY}", "{TCP}", "${port}"]
    """)
    launcher = UnifiedLauncher(load_config(path, environ={}, worker="gw3"))
    try:
        handles = launcher.start_blocking()
        launcher.reset_blocking(["db"])
        import hooks  # type: ignore[import-not-found]  # the config's folder is on sys.path, as for apps

        assert hooks.CALLS == [("db", handles["db"].port, "running", "gw3")]
        expected = {
            "bad": "service 'bad' could not be reset: reset hooks:broken raised RuntimeError: the template database is missing",
            "wrong": "service 'wrong' could not be reset: reset hooks:NOT_A_FUNCTION: NOT_A_FUNCTION is not a "
                     "function (its type is int)",
            "one_arg": "service 'one_arg' could not be reset: reset hooks:one_arg must take two arguments, "
                       "(handle, worker): too many positional arguments",
            "missing": "service 'missing' could not be reset: cannot import the reset hook's module 'no_such_hooks_module'",
        }
        for name, text in expected.items():
            with pytest.raises(ServiceResetError) as info:
                launcher.reset_blocking([name])
            assert text in str(info.value)
        # The hook's own frames, down to where it raised; not the thread pool's or the launcher's.
        with pytest.raises(ServiceResetError) as info:
            launcher.reset_blocking(["bad"])
        assert "in _connect_to_the_template" in info.value.log_tail and "in broken" in info.value.log_tail
        assert "concurrent/futures" not in info.value.log_tail and "_reset.py" not in info.value.log_tail
        # Nothing is half done: db is not reset when a later name cannot be.
        with pytest.raises(ServiceResetError, match="could not be reset: it has no reset hook"):
            launcher.reset_blocking(["db", "plain"])
        assert hooks.CALLS == [("db", handles["db"].port, "running", "gw3")]
    finally:
        launcher.stop_blocking()
        import sys

        sys.modules.pop("hooks", None)


# --------------------------------------------------------------------------- pytest: fresh=True, workers


PROJECT = """
[launcher]
state_dir = "state"
[launcher.test_env]
MY_DATABASE = "app_${{worker}}"
MY_REDIS_DB = "${{worker_index}}"
[services.db]
command = ["{py}", "{tcp}", "${{port}}"]
reset = ["{py}", "-c", "import sys; open(sys.argv[1] + '/reset-${{worker}}', 'a').write('x')", "{out}"]
[services.create]
command = ["{py}", "-c", "import sys; open(sys.argv[1] + '/created-${{worker}}-${{worker_index}}', 'a').write('x')", "{out}"]
task = true
scope = "worker"
depends_on = ["db"]
[services.api]
command = ["{py}", "{tcp}", "${{port}}"]
depends_on = ["db"]
[services.plain]
command = ["{py}", "{tcp}", "${{port}}"]
"""


@pytest.fixture
def project(pytester: pytest.Pytester) -> pytest.Pytester:
    out = pytester.path / "out"
    out.mkdir()
    pytester.makefile(".toml", launcher=PROJECT.format(py=PY, tcp=TCP, out=out))
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    return pytester


def test_fresh_resets_before_each_marked_test_and_the_summary_counts_it(project: pytest.Pytester,
                                                                          no_orphans: None) -> None:
    project.makepyfile("""
        import os, pathlib, pytest

        OUT = pathlib.Path("out")

        @pytest.mark.services("api", fresh=True)    # api has no hook; its dependency db does
        def test_one(services):
            assert (OUT / "reset-main").read_text() == "x"

        @pytest.mark.services("db", fresh=True)
        def test_two(services):
            assert (OUT / "reset-main").read_text() == "xx"

        @pytest.mark.services("db")                 # not fresh: no reset
        def test_three(services):
            assert (OUT / "reset-main").read_text() == "xx"

        @pytest.mark.services("create")             # a worker task without xdist: once, as "main"
        def test_worker_task(services):
            assert services["create"].state == "completed"
            assert (OUT / "created-main-0").read_text() == "x"
            assert os.environ["MY_DATABASE"] == "app_main" and os.environ["MY_REDIS_DB"] == "0"

        def test_facade(launcher):
            launcher.start("db")
            launcher.reset("db")
            assert (OUT / "reset-main").read_text() == "xxx"
    """)
    result = project.runpytest_subprocess("-p", "no:cacheprovider", "--launcher-report", "report.json")
    result.assert_outcomes(passed=5)
    result.stdout.re_match_lines([r"resets: db 3x \(p50 \d+\.\d{3} s, p95 \d+\.\d{3} s\)"])
    report = json.loads((project.path / "report.json").read_text())
    assert report["resets"]["db"]["count"] == 3


def test_fresh_mistakes_error_the_test_with_the_fix(project: pytest.Pytester, no_orphans: None) -> None:
    project.makepyfile("""
        import pytest

        @pytest.mark.services("plain", fresh=True)
        def test_no_hook(services):
            pass

        @pytest.mark.services("db", clean=True)
        def test_unknown_keyword(services):
            pass

        @pytest.mark.services("db", fresh="yes")
        def test_not_a_bool(services):
            pass

        @pytest.mark.services(fresh=True)
        def test_no_names(services):
            pass
    """)
    result = project.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(errors=4)
    out = result.stdout.str()
    for expected in (
        '@pytest.mark.services(..., fresh=True): none of plain has a reset hook, so nothing can be made fresh; '
        'add reset = ["program", "arg", ...] or reset = "module:function" to [services.plain]',
        "@pytest.mark.services takes only fresh=True and health_errors=False as keywords (got clean=...)",
        "@pytest.mark.services: fresh='yes'; write fresh=True or fresh=False",
        '@pytest.mark.services(fresh=True) names no service, so nothing would be made fresh; '
        'name them: @pytest.mark.services("db", fresh=True)',
    ):
        assert expected in out
    assert "During handling" not in out
    result.stdout.no_fnmatch_line("*Traceback*")


def test_shared_workers_run_their_own_worker_tasks_and_resets(project: pytest.Pytester, no_orphans: None) -> None:
    """-n 2 shared: db starts once for both workers; each worker creates its own data (its
    worker task, once) and resets only its own; ${worker} in test_env tells them apart."""
    project.makepyfile(**{f"test_w{i}": f"""
        import os, pathlib, time, pytest

        @pytest.mark.parametrize("n", range(3))
        @pytest.mark.services("create", "db", fresh=True)
        def test_data(services, n):
            worker = os.environ["PYTEST_XDIST_WORKER"]
            assert os.environ["MY_DATABASE"] == f"app_{{worker}}"
            assert os.environ["MY_REDIS_DB"] == worker.removeprefix("gw")
            pathlib.Path("out", f"pid-{{worker}}-{i}-{{n}}").write_text(str(services["db"].pid))
            time.sleep(0.2)  # so that both workers take tests
    """ for i in range(2)})
    result = project.runpytest_subprocess("-p", "no:cacheprovider", "-n", "2", "--launcher-xdist=shared",
                                          "--launcher-report", "report.json")
    result.assert_outcomes(passed=6)
    out = project.path / "out"
    workers = sorted({p.name.split("-")[1] for p in out.glob("pid-*")})
    assert workers == ["gw0", "gw1"], "both workers must have taken tests"
    assert len({p.read_text() for p in out.glob("pid-*")}) == 1, "db must be one process for both workers"
    for worker in workers:
        ran = len(list(out.glob(f"pid-{worker}-*")))
        assert (out / f"created-{worker}-{worker[2:]}").read_text() == "x"   # once per worker
        assert (out / f"reset-{worker}").read_text() == "x" * ran            # each of its tests, its own
    report = json.loads((project.path / "report.json").read_text())
    assert report["resets"]["db"]["count"] == 6
    logs = sorted(p.name for p in (project.path / "state" / "logs").glob("create*.log"))
    assert logs == ["create.gw0.log", "create.gw1.log"]


def test_redis_recipe_keeps_shared_workers_apart(pytester: pytest.Pytester, redis_server: str,
                                                 no_orphans: None) -> None:
    """The README's Redis recipe on a real redis-server under -n 2 shared: one server, each
    worker in its own database (${worker_index}), emptied by FLUSHDB before each fresh test."""
    pytester.makefile(".toml", launcher=f"""
        [launcher]
        state_dir = "state"
        [launcher.test_env]
        REDIS_URL = "redis://127.0.0.1:${{services.cache.port}}/${{worker_index}}"
        [services.cache]
        command = "{redis_server} --port ${{port}} --bind 127.0.0.1 --save '' --appendonly no"
        reset = "redis-cli -p ${{port}} -n ${{worker_index}} FLUSHDB"
    """)
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    pytester.makepyfile(**{f"test_r{i}": """
        import os, time, pytest, redis

        @pytest.mark.parametrize("n", range(4))
        @pytest.mark.services("cache", fresh=True)
        def test_counts(services, n):
            client = redis.Redis.from_url(os.environ["REDIS_URL"])
            assert client.dbsize() == 0
            client.mset({f"k{n}.{i}": i for i in range(n + 1)})
            time.sleep(0.05)  # the other worker writes meanwhile, into its own database
            assert client.dbsize() == n + 1
            client.close()
    """ for i in range(2)})
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-n", "2", "--launcher-xdist=shared")
    result.assert_outcomes(passed=8)
    result.stdout.re_match_lines([r"resets: cache 8x \(p50 .*"])


def test_init_recipes_give_each_worker_fresh_postgres_and_redis_data(tmp_path: Path, no_orphans: None) -> None:
    """`init --with postgres,redis` writes the recipes (a worker task making test_${worker}, reset
    hooks, worker URLs in test_env); on real servers under -n 2 each worker's tests see only
    their own rows and keys, each test from empty."""
    import subprocess

    from conftest import PY as python

    tmp_path.chmod(0o755)  # as a project folder is: its bin/pg-init runs as the service user `postgres`
    init = subprocess.run([python, "-m", "pytest_unified_launcher", "init", "--with", "postgres,redis"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert init.returncode == 0, init.stderr
    (tmp_path / "pytest.ini").write_text("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    for i in range(2):
        (tmp_path / "tests" / f"test_data{i}.py").write_text(textwrap.dedent("""
            import os, time, psycopg, pytest, redis

            @pytest.mark.parametrize("n", range(3))
            @pytest.mark.services("worker_db", "cache", fresh=True)
            def test_fresh(services, n):
                with psycopg.connect(os.environ["DATABASE_URL"], autocommit=True) as conn:
                    conn.execute("CREATE TABLE t (n int)")   # fails if the table is left from before
                    conn.execute("INSERT INTO t VALUES (%s)", (n,))
                    time.sleep(0.05)
                    assert conn.execute("SELECT n FROM t").fetchall() == [(n,)]
                client = redis.Redis.from_url(os.environ["REDIS_URL"])
                assert client.dbsize() == 0
                client.set("n", n)
                client.close()
        """))
    result = subprocess.run([python, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-n", "2"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "8 passed" in result.stdout  # the 6 above and the starter's own 2
    assert "resets: cache 6x" in result.stdout and "database 6x" in result.stdout


@pytest.mark.parametrize("xdist", [[], ["-n", "2"]], ids=["plain", "xdist"])
def test_attached_sessions_run_their_own_worker_tasks(tmp_path: Path, xdist: list[str], no_orphans: None) -> None:
    """Under --launcher-attach a worker task is not adopted from `up` (which ran it once, as
    main): each attached session, and each xdist worker of one, runs its own."""
    import subprocess

    out = tmp_path / "out"
    out.mkdir()
    (tmp_path / "launcher.toml").write_text(textwrap.dedent(f"""
        [launcher]
        state_dir = "state"
        [services.db]
        command = ["{PY}", "{TCP}", "${{port}}"]
        [services.create]
        command = ["{PY}", "-c", "open('{out}/created-${{worker}}', 'a').write('x')"]
        task = true
        scope = "worker"
        depends_on = ["db"]
    """))
    (tmp_path / "pytest.ini").write_text("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    (tmp_path / "test_w.py").write_text(textwrap.dedent("""
        import os, pathlib, pytest

        @pytest.mark.parametrize("n", range(4))
        @pytest.mark.services("create")
        def test_made(services, n):
            worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
            assert pathlib.Path("out", f"created-{worker}").exists()
    """))
    up = subprocess.run([PY, "-m", "pytest_unified_launcher", "up", "--detach"], cwd=tmp_path, capture_output=True,
                        text=True, timeout=120, stdin=subprocess.DEVNULL)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert (out / "created-main").read_text() == "x"   # up ran it once
        result = subprocess.run([PY, "-m", "pytest", "-p", "no:cacheprovider", "-q", "--launcher-attach", *xdist],
                                cwd=tmp_path, capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL)
        assert result.returncode == 0, result.stdout + result.stderr
        made = sorted(p.name for p in out.iterdir())
        if xdist:
            assert made == ["created-gw0", "created-gw1", "created-main"]
        else:
            assert (out / "created-main").read_text() == "xx"  # the session ran its own too
    finally:
        down = subprocess.run([PY, "-m", "pytest_unified_launcher", "down"], cwd=tmp_path, capture_output=True,
                              text=True, timeout=120)
        assert down.returncode == 0, down.stderr


def test_check_validates_resets_and_shows_their_rule(tmp_path: Path) -> None:
    """`unified-launcher check` fails on a reset program that is not installed and a reset function
    that cannot be imported or called as function(handle, worker), each named with its fix; a
    reset's automatic port shows as ${port} (it differs at every start)."""
    import subprocess

    (tmp_path / "hooks.py").write_text("def one_arg(handle):\n    pass\ndef good(handle, worker):\n    pass\n")
    (tmp_path / "launcher.toml").write_text(textwrap.dedent(f"""
        [services.a]
        command = ["{PY}", "{TCP}", "${{port}}"]
        reset = "redis-clii -p ${{port}} FLUSHDB"
        [services.b]
        command = ["{PY}", "{TCP}", "${{port}}"]
        reset = "hooks:one_arg"
        [services.c]
        command = ["{PY}", "{TCP}", "${{port}}"]
        reset = "nohooks:clean"
    """))
    result = subprocess.run([PY, "-m", "pytest_unified_launcher", "check"], cwd=tmp_path, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "service 'a', key 'reset': program 'redis-clii' not found on PATH" in result.stderr
    assert "service 'b', key 'reset': reset hooks:one_arg must take two arguments, (handle, worker)" in result.stderr
    assert "service 'c', key 'reset': cannot import the reset hook's module 'nohooks'" in result.stderr
    assert "Traceback" not in result.stderr
    (tmp_path / "launcher.toml").write_text(textwrap.dedent(f"""
        [services.a]
        command = ["{PY}", "{TCP}", "${{port}}"]
        reset = ["{PY}", "-c", "print(${{port}})"]
        [services.b]
        command = ["{PY}", "{TCP}", "${{port}}"]
        reset = "hooks:good"
    """))
    result = subprocess.run([PY, "-m", "pytest_unified_launcher", "check"], cwd=tmp_path, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert f"reset: a: {PY} -c 'print(${{port}})'" in result.stdout
    assert "reset: b: hooks:good" in result.stdout


def test_a_reset_function_that_hangs_fails_at_the_timeout_and_does_not_hold_the_session(
        pytester: pytest.Pytester, no_orphans: None) -> None:
    """A reset function waiting forever (a TRUNCATE behind another connection's lock) fails the
    test at the service's startup_timeout, and the session still ends: the hook's thread was
    asyncio's pool thread, which the interpreter joins at exit, so the run hung even after Ctrl-C."""
    pytester.makefile(".toml", launcher=f"""
        [launcher]
        state_dir = "state"
        [services.db]
        command = ["{PY}", "{TCP}", "${{port}}"]
        reset = "hooks:hang"
        startup_timeout = 1
    """)
    pytester.makepyfile(hooks="import time\ndef hang(handle, worker):\n    time.sleep(3600)\n")
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    pytester.makepyfile(test_h="""
        import pytest

        @pytest.mark.services("db", fresh=True)
        def test_fresh(services):
            pass
    """)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=60)
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*service 'db' could not be reset: reset hooks:hang did not finish within 1.0 s*"])
