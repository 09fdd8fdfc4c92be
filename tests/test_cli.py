"""The CLI as a user runs it: real subprocesses, real services, real HTTP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import psutil
import pytest
from conftest import APPS, PY, TCP, default_sigint, launcher_processes


CONFIG = f"""
[launcher]
state_dir = "state"
[services.plain]
command = ["{PY}", "{TCP}", "${{port}}"]
[services.api]
app = "web:app"
depends_on = ["plain"]
health = {{ http = "/health" }}
env = {{ PLAIN_PORT = "${{services.plain.port}}", API_TOKEN = "s3cr3t-value" }}
watch = ["web.py"]
"""


def cli(cwd: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PY, "-m", "pytest_unified_launcher", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "launcher.toml").write_text(CONFIG)
    (tmp_path / "web.py").write_text((APPS / "web.py").read_text())
    return tmp_path


@pytest.fixture
def running(project: Path, no_orphans: None) -> Any:
    result = cli(project, "up", "--detach", "--mode", "multi_process")
    assert result.returncode == 0, result.stderr + result.stdout
    record = json.loads((project / "state" / "up.json").read_text())
    yield record
    cli(project, "down")


def http(url: str, token: str | None = None, method: str = "GET", body: Any = None) -> tuple[int, str]:
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    data = json.dumps(body).encode() if body is not None else (b"" if method == "POST" else None)
    req = urllib.request.Request(url, method=method, headers=headers, data=data)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_check_prints_levels(project: Path) -> None:
    """check validates and prints the start order with kind, port and probe."""
    result = cli(project, "check")
    assert result.returncode == 0, result.stderr
    assert "plain" in result.stdout and "http GET http://127.0.0.1:${port}/health" in result.stdout
    lines = [line.split() for line in result.stdout.splitlines()]
    assert any(parts[:2] == ["0", "plain"] for parts in lines) and any(parts[:2] == ["1", "api"] for parts in lines)


def test_check_shows_dependency_conditions_and_replicas(tmp_path: Path) -> None:
    """check's table says each dependency's condition when it is not the default, optional and
    skipped ones, restart = true, and lists each replica."""
    (tmp_path / "launcher.toml").write_text(f"""
[services.cache]
command = ["{PY}", "{TCP}", "${{port}}"]
[services.worker]
command = ["{PY}", "{TCP}", "${{port}}"]
replicas = 2
depends_on = [{{ service = "cache", condition = "service_started", restart = true }}, {{ service = "search", required = false }}]
""")
    result = cli(tmp_path, "check", "--no-import")
    assert result.returncode == 0, result.stderr
    for replica in ("worker-0", "worker-1"):
        row = next(line for line in result.stdout.splitlines() if f" {replica} " in line)
        assert row.split()[0] == "1" and row.endswith("cache (started, restart), search (optional, skipped: not defined)")


def test_check_says_where_a_tmpfs_service_keeps_its_tmp(project: Path) -> None:
    """check tells whether a tmpfs service's ${tmp} is in memory or had to stay on disk."""
    from pytest_unified_launcher.config import memory_root

    (project / "launcher.toml").write_text(CONFIG.replace("[services.plain]\n", "[services.plain]\ntmpfs = true\n"))
    result = cli(project, "check")
    assert result.returncode == 0, result.stderr
    if memory_root(Path("ul-x")) is not None:  # this machine's /dev/shm has room
        assert "tmpfs: plain's ${tmp} is in memory (under /dev/shm)" in result.stdout
    else:
        assert "tmpfs: plain's ${tmp} stays on disk" in result.stdout


def test_check_config_error_exit_2(project: Path) -> None:
    """A config mistake is exit code 2 and one message, no traceback."""
    (project / "launcher.toml").write_text(CONFIG.replace("depends_on", "depends_onn"))
    result = cli(project, "check")
    assert result.returncode == 2
    assert "unknown key 'depends_onn'" in result.stderr and "did you mean 'depends_on'" in result.stderr
    assert "Traceback" not in result.stderr


def _run_with_stdout_unread(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the CLI with a stdout whose reader has already gone, as in `unified-launcher ... | head`."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run([PY, "-m", "pytest_unified_launcher", *args], cwd=cwd, stdout=write_end,
                              stderr=subprocess.PIPE, text=True, timeout=120, stdin=subprocess.DEVNULL)
    finally:
        os.close(write_end)


def test_check_into_a_closed_pipe_is_not_a_traceback(project: Path) -> None:
    """`check | head`: the reader leaving is the shell's 141, not a BrokenPipeError trace."""
    result = _run_with_stdout_unread(project, "check")
    assert result.returncode == 141
    assert result.stderr == ""


def test_up_whose_reader_leaves_stops_everything(project: Path, no_orphans: None) -> None:
    """`up | head -1` once left every service running: the broken pipe aborted the shutdown."""
    proc = subprocess.Popen([PY, "-m", "pytest_unified_launcher", "up", "--mode", "multi_process"], cwd=project,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.readline().startswith(b"starting all services")
    proc.stdout.close()  # what head does after its line
    with proc.stderr:
        stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0
    assert "Traceback" not in stderr and "Exception ignored" not in stderr, stderr
    assert not (project / "state" / "up.json").exists()


def test_mode_alias_auto_detect_is_accepted(project: Path) -> None:
    """`auto_detect` is `auto`'s alias on the command line too, not only in the file."""
    result = cli(project, "check", "--mode", "auto_detect")
    assert result.returncode == 0, result.stderr
    assert "mode single_process: auto:" in result.stdout


def test_up_status_down_and_attach(project: Path, running: dict[str, Any], pytester: pytest.Pytester) -> None:
    """up --detach leaves services running; status shows them; pytest --launcher-attach uses them."""
    status = cli(project, "status")
    assert status.returncode == 0 and "plain" in status.stdout and "running" in status.stdout
    assert (project / "state" / "up.json").stat().st_mode & 0o777 == 0o600
    # up's logs have a folder of their own: a pytest run beside it would replace state/logs/plain.log.
    assert running["services"]["plain"]["log_path"] == str(project / "state" / "logs" / "up" / "plain.log")
    api_url = running["services"]["api"]["url"]
    (project / "test_attached.py").write_text(
        "import pytest, os\n"
        "@pytest.mark.services('api')\n"
        "def test_uses_running(services):\n"
        f"    assert services['api'].url == {api_url!r}\n"
        f"    assert services['plain'].pid == {running['services']['plain']['pid']}\n"
        # Every handle field is filled as if this session had started it (startup_seconds was None).
        f"    assert services['plain'].startup_seconds == {running['services']['plain']['startup_seconds']}\n"
    )
    result = subprocess.run([PY, "-m", "pytest", "-p", "no:cacheprovider", "--launcher-attach", "test_attached.py"],
                            cwd=project, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    # The attached session did not stop the environment.
    assert cli(project, "status").returncode == 0
    # port / url print one value for the shell, as `docker compose port` does.
    assert cli(project, "port", "plain").stdout == f"{running['services']['plain']['port']}\n"
    assert cli(project, "url", "api").stdout == f"{api_url}\n"
    missing = cli(project, "url", "nope")
    assert missing.returncode == 1 and missing.stdout == "" and "'nope' is not running" in missing.stderr
    assert "running: api, plain" in missing.stderr
    down = cli(project, "down")
    assert down.returncode == 0 and "stopped" in down.stdout
    assert not (project / "state" / "up.json").exists()
    again = cli(project, "status")
    assert again.returncode == 1 and "no environment is running" in again.stderr
    none = cli(project, "port", "plain")
    assert none.returncode == 1 and none.stdout == "" and "no environment is running" in none.stderr


@pytest.mark.parametrize("xdist", [[], ["-n", "2"]], ids=["plain", "xdist"])
def test_attached_restart_stop_and_start_are_asked_of_up(project: Path, running: dict[str, Any],
                                                         xdist: list[str]) -> None:
    """Under --launcher-attach, a test's restart()/stop()/start() of a service `up` runs goes
    through up's control API: `up` stays its only owner (before, both restarted it on one port),
    and an xdist controller leaves the process `up` restarted alone at the end."""
    old = running["services"]["plain"]["pid"]
    (project / "test_attached.py").write_text(
        "import pathlib, pytest\n"
        "@pytest.mark.services('api')\n"
        "def test_restart(services):\n"
        "    plain = services['plain']\n"
        "    plain.restart()\n"
        f"    assert plain.state == 'running' and plain.pid not in (None, {old})\n"
        "    plain.stop()\n"
        "    assert plain.state == 'stopped'\n"
        "    plain.start()\n"
        "    assert plain.state == 'running'\n"
        "    pathlib.Path('plain-pid').write_text(str(plain.pid))\n"
    )
    result = subprocess.run([PY, "-m", "pytest", "-p", "no:cacheprovider", "--launcher-attach", *xdist,
                             "test_attached.py"], cwd=project, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    record = json.loads((project / "state" / "up.json").read_text())
    assert record["services"]["plain"]["pid"] == int((project / "plain-pid").read_text())
    assert psutil.pid_exists(record["services"]["plain"]["pid"])
    port = record["services"]["plain"]["port"]
    listeners = {c.pid for c in psutil.net_connections("tcp") if c.laddr and c.laddr.port == port and c.status == "LISTEN"}
    assert listeners == {record["services"]["plain"]["pid"]}
    log = (project / "state" / "up.log").read_text()
    assert "(restart() in the attached pytest session" in log and "(stop() in the attached pytest session" in log
    assert cli(project, "status").returncode == 0


@pytest.mark.parametrize("xdist", [[], ["-n", "2"]], ids=["plain", "xdist"])
def test_attached_session_stops_only_what_it_started(project: Path, xdist: list[str], no_orphans: None) -> None:
    """Attached to an `up` that runs only `plain`, pytest starts `api` itself and stops it at the
    end; `up`'s own service and its temp dir stay (the xdist controller stopped them all and
    removed that dir; a plain session left `api` running)."""
    assert cli(project, "up", "--detach", "--mode", "multi_process", "plain").returncode == 0
    try:
        record = json.loads((project / "state" / "up.json").read_text())
        plain_pid = record["services"]["plain"]["pid"]
        (project / "test_attached.py").write_text(
            "import pathlib, pytest\n"
            "@pytest.mark.parametrize('i', range(4))\n"
            "@pytest.mark.services('api')\n"
            "def test_uses_both(services, i):\n"
            f"    assert services['plain'].pid == {plain_pid}\n"
            "    pathlib.Path(f'api-pid-{i}').write_text(str(services['api'].pid or 0))\n"
        )
        result = subprocess.run([PY, "-m", "pytest", "-p", "no:cacheprovider", "--launcher-attach",
                                 "--launcher-mode", "multi_process", *xdist, "test_attached.py"],
                                cwd=project, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stdout + result.stderr
        api_pids = {int(p.read_text()) for p in project.glob("api-pid-*")}
        assert api_pids and all(not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
                                for pid in api_pids), "the api the session started must be stopped"
        assert psutil.pid_exists(plain_pid), "`up`'s own service must keep running"
        assert Path(record["tmp_root"]).is_dir(), "`up`'s temp dir must stay"
        assert cli(project, "status").returncode == 0
    finally:
        assert cli(project, "down").returncode == 0


def test_attach_without_environment_is_clear(project: Path) -> None:
    """--launcher-attach with nothing running is a usage error that says how to start one."""
    (project / "test_x.py").write_text("def test_x(): pass\n")
    result = subprocess.run([PY, "-m", "pytest", "-p", "no:cacheprovider", "--launcher-attach"], cwd=project,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 4
    assert "no environment is running" in result.stderr and "unified-launcher up --detach" in result.stderr


def test_control_api_tokens_and_metrics(running: dict[str, Any]) -> None:
    """Missing, expired, forged and alg=none tokens get 401; the right one works; /metrics parses."""
    import jwt
    from prometheus_client.parser import text_string_to_metric_families

    base = running["control"]["url"]
    token = running["control"]["token"]
    secret = running["control"]["secret"]
    assert base.startswith("http://127.0.0.1:")
    assert http(f"{base}/services")[0] == 401
    expired = jwt.encode({"iss": "unified-launcher", "exp": int(time.time()) - 10}, secret, algorithm="HS256")
    forged = jwt.encode({"iss": "unified-launcher", "exp": int(time.time()) + 600}, "not-the-secret-but-long-enough-for-hs256!", algorithm="HS256")
    none_alg = jwt.encode({"iss": "unified-launcher", "exp": int(time.time()) + 600}, None, algorithm="none")
    for bad in (expired, forged, none_alg, "garbage"):
        assert http(f"{base}/services", bad)[0] == 401
    code, body = http(f"{base}/services", token)
    assert code == 200 and {s["name"] for s in json.loads(body)["services"]} == {"plain", "api"}
    assert http(f"{base}/services/nope", token)[0] == 404
    assert http(f"{base}/services/plain/restart", token, "POST", {"reasonn": 1})[0] == 422
    old_pid = json.loads(http(f"{base}/services/plain", token)[1])["pid"]
    old_api = json.loads(http(f"{base}/services/api", token)[1])["pid"]
    code, body = http(f"{base}/services/plain/restart", token, "POST", {"reason": "test"})
    assert code == 200 and json.loads(body)["pid"] != old_pid
    # `up` restarts the dependents of a restarted service (what restart = true asks for, and more).
    assert json.loads(http(f"{base}/services/api", token)[1])["pid"] not in (None, old_api)
    code, text = http(f"{base}/metrics", token)
    assert code == 200
    names = {f.name for f in text_string_to_metric_families(text)}
    assert {"launcher_service_up", "launcher_service_startup_seconds", "launcher_service_restarts"} <= names


def _wait(predicate: Any, timeout: float = 30) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError("condition not reached in time")
        time.sleep(0.05)


def test_killed_service_is_restarted_with_backoff(project: Path, running: dict[str, Any]) -> None:
    """auto_restart brings a killed service back with a new pid."""
    old = running["services"]["plain"]["pid"]
    os.kill(old, signal.SIGKILL)

    def new_pid() -> bool:
        record = json.loads((project / "state" / "up.json").read_text())
        return record["services"].get("plain", {}).get("pid") not in (None, old)

    _wait(new_pid)
    log = (project / "state" / "up.log").read_text()
    assert "was killed by SIGKILL" in log and "auto_restart: restarting plain in 1 s" in log


def test_dev_mode_restarts_changed_service_only(project: Path, no_orphans: None) -> None:
    """--dev: a change under a service's watch paths restarts that service (and dependents) only."""
    result = cli(project, "up", "--detach", "--dev")
    assert result.returncode == 0, result.stderr
    try:
        record = json.loads((project / "state" / "up.json").read_text())
        api_pid, plain_pid = record["services"]["api"]["pid"], record["services"]["plain"]["pid"]
        time.sleep(0.5)
        with open(project / "web.py", "a") as fh:
            fh.write("\n# changed\n")

        def restarted() -> bool:
            rec = json.loads((project / "state" / "up.json").read_text())
            return rec["services"].get("api", {}).get("pid") not in (None, api_pid)

        _wait(restarted)
        rec = json.loads((project / "state" / "up.json").read_text())
        assert rec["services"]["plain"]["pid"] == plain_pid
    finally:
        assert cli(project, "down").returncode == 0


def test_dev_mode_reloads_once_per_change_and_shows_the_new_output(project: Path, no_orphans: None) -> None:
    """A restarted app reading its own sources is not a change (that reloaded it forever), and the
    restarted service's output is printed even when it is as long as the old log."""
    out = project / "up.out"
    with open(out, "w") as fh:
        proc = subprocess.Popen([PY, "-m", "pytest_unified_launcher", "up", "--dev"], cwd=project, stdout=fh,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, preexec_fn=default_sigint)
    try:
        _wait(lambda: "dev mode: watching" in out.read_text() and "api   | serving" in out.read_text())
        assert "(multi_process: auto: up --dev reloads apps in fresh processes)" in out.read_text()
        with open(project / "web.py", "a") as fh:
            fh.write("\n# changed\n")
        _wait(lambda: out.read_text().count("api   | serving") == 2)
        time.sleep(2)  # long enough for several reloads if the restart itself triggered one
        text = out.read_text()
        assert text.count("restarting api (files changed)") == 1, text
        assert text.index("api   | stopped web:app") < text.rindex("api   | serving"), text  # old, then new
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0


def test_up_detach_failure_leaves_nothing(project: Path, no_orphans: None) -> None:
    """up --detach with a failing service exits 1 with its message and leaves nothing running."""
    (project / "launcher.toml").write_text(CONFIG + '[services.bad]\ncommand = ["false"]\ndepends_on = ["plain"]\n')
    result = cli(project, "up", "--detach")
    assert result.returncode == 1
    assert result.stderr.startswith("error: service 'bad' failed to start: exited with code 1")
    assert not (project / "state" / "up.json").exists()


def test_bench_exit_codes_json_and_svg(project: Path, no_orphans: None) -> None:
    """bench prints percentiles, writes JSON and SVG, exits 1 over budget, and exits 1 with the
    service's message (nothing left running) when a start fails."""
    ok = cli(project, "bench", "plain", "--runs", "3", "--json", "b.json", "--svg", "w.svg")
    assert ok.returncode == 0, ok.stderr
    assert "TOTAL startup" in ok.stdout and "run 3/3" in ok.stdout
    report = json.loads((project / "b.json").read_text())
    assert len(report["runs"]) == 3 and report["budget_ok"] is True
    # peak memory per service (SPEC 10), over the runs
    assert report["resources"]["plain"]["rss_peak_bytes"] > 1_000_000
    plain_row = next(line for line in ok.stdout.splitlines() if line.startswith("plain "))
    assert "peak MiB" in ok.stdout and float(plain_row.split()[-1]) > 1
    assert (project / "w.svg").read_text().startswith("<svg")
    (project / "launcher.toml").write_text(CONFIG.replace('state_dir = "state"', 'state_dir = "state"\nstartup_budget = 0.000001'))
    over = cli(project, "bench", "plain", "--runs", "2")
    assert over.returncode == 1 and "EXCEEDED" in over.stdout
    (project / "launcher.toml").write_text(CONFIG + '[services.bad]\ncommand = ["false"]\ndepends_on = ["plain"]\n')
    failed = cli(project, "bench", "bad", "--runs", "3")
    assert failed.returncode == 1 and "run 1/3: FAILED after" in failed.stdout and "run 2/3" not in failed.stdout
    assert failed.stderr.startswith("error: service 'bad' failed to start: exited with code 1")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["bench", "nope", "--runs", "2"], "error: unknown service 'nope'; the config defines: api, plain"),
        (["up", "nope"], "error: unknown service 'nope'; the config defines: api, plain"),
        (["up", "--detach", "nope"], "error: unknown service 'nope'; the config defines: api, plain"),
        (["bench", "--runs", "0"], "argument --runs: '0' is not a whole number of at least 1; e.g. --runs 10"),
        (["bench", "--runs", "2", "--json", "a-file/b.json"], "argument --json: cannot write a-file/b.json (a-file is a file, not a folder)"),
        (["bench", "--runs", "2", "--svg", "a-file/w.svg"], "argument --svg: cannot write a-file/w.svg (a-file is a file, not a folder)"),
    ],
)
def test_bad_arguments_fail_before_anything_starts(project: Path, args: list[str], message: str) -> None:
    """A wrong service name or output path is exit 2 before the first start (not a traceback, or a
    lost benchmark after all its runs)."""
    (project / "a-file").write_text("")
    result = cli(project, *args)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert "starting" not in result.stdout and "run 1/" not in result.stdout
    assert not (project / "state" / "up.json").exists()


def test_init_writes_a_config_that_checks(tmp_path: Path) -> None:
    """init writes a starter config that check accepts, and refuses to overwrite it."""
    result = cli(tmp_path, "init", "--with", "redis,fastapi,external")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "tests" / "test_services.py").exists()
    assert cli(tmp_path, "check").returncode == 0
    again = cli(tmp_path, "init")
    assert again.returncode == 2 and "already exists" in again.stderr
    unknown = cli(tmp_path / "tests", "init", "--with", "redis,mongo")
    assert unknown.returncode == 2
    assert unknown.stderr == "error: --with: unknown template 'mongo'; choose from: postgres, redis, fastapi, external\n"


def test_init_project_tests_pass(tmp_path: Path, no_orphans: None) -> None:
    """The starter's own tests pass as written, the app's through its URL."""
    tmp_path.chmod(0o755)  # as a project folder is: its bin/pg-init runs as the service user `postgres`
    assert cli(tmp_path, "init", "--with", "postgres,redis,fastapi").returncode == 0
    (tmp_path / "pytest.ini").write_text("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    result = subprocess.run([PY, "-m", "pytest", "-p", "no:cacheprovider", "-q"], cwd=tmp_path, capture_output=True,
                            text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 passed" in result.stdout
    assert "api           1  in_process" in result.stdout


def test_up_without_the_cli_extra_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the cli extra, up names the missing packages by their pip names and the command."""
    import importlib.util

    from pytest_unified_launcher.cli import _missing_cli_extra

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in ("jwt", "watchdog") else real(name, *a))
    assert _missing_cli_extra(dev=False) == ("error: `unified-launcher up` needs PyJWT, which is not installed; "
                                             "pip install 'pytest-unified-launcher[cli]'")
    assert "needs PyJWT, watchdog, which are not installed" in (_missing_cli_extra(dev=True) or "")


def test_no_command_lists_the_commands() -> None:
    """`unified-launcher` alone prints every command with what it does, and exits 2."""
    result = cli(Path.cwd())
    assert result.returncode == 2
    for command in ("check", "up", "status", "down", "bench", "init"):
        assert f"    {command} " in result.stderr


def test_help_has_examples() -> None:
    """Every subcommand's --help explains itself with an example."""
    for command in ("check", "up", "status", "down", "bench", "init"):
        result = cli(Path.cwd(), command, "--help")
        assert result.returncode == 0 and "example" in result.stdout


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGHUP], ids=lambda s: s.name)
def test_ctrl_c_stops_foreground_up(project: Path, sig: signal.Signals, no_orphans: None) -> None:
    """Ctrl-C (or closing its terminal) to a foreground `up` stops every service and removes the state file."""
    proc = subprocess.Popen([PY, "-m", "pytest_unified_launcher", "up", "--mode", "multi_process"], cwd=project,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, preexec_fn=default_sigint)
    _wait(lambda: (project / "state" / "up.json").exists())
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert "plain |" in out and "stopped" in out  # prefixed service logs, then the stop
    assert not (project / "state" / "up.json").exists()


def test_down_after_supervisor_was_killed(project: Path, no_orphans: None) -> None:
    """If the `up` supervisor is SIGKILLed, its sentinel stops its services and removes up.json
    (it stayed, naming dead pids); `down` is then idempotent: exit 0, "nothing running"."""
    assert cli(project, "up", "--detach", "--mode", "multi_process").returncode == 0
    record = json.loads((project / "state" / "up.json").read_text())
    os.kill(record["owner_pid"], signal.SIGKILL)
    pids = [entry["pid"] for entry in record["services"].values() if entry.get("pid")]
    _wait(lambda: not (project / "state" / "up.json").exists() and not any(map(psutil_exists, pids)))
    status = cli(project, "status")
    assert status.returncode == 1 and "no environment is running" in status.stderr
    for _ in range(2):
        down = cli(project, "down")
        assert down.returncode == 0 and down.stdout.strip() == "nothing running", down.stdout + down.stderr


def test_down_of_a_stale_record_says_nothing_was_running(project: Path, running: dict[str, Any]) -> None:
    """A record whose supervisor and services are gone (and left no sentinel) is removed by `down`,
    which says so instead of "stopped 2 services"."""
    state = project / "state"
    (state / "up.json").rename(state / "up.json.keep")
    assert cli(project, "down").stdout.strip() == "nothing running"
    record = json.loads((state / "up.json.keep").read_text())
    cli_env = {**record, "owner_pid": 1, "owner_token": "1"}  # a supervisor that is not ours: never signalled
    for entry in cli_env["services"].values():
        entry["pid"], entry["token"] = 999999, "1"
    fd = os.open(state / "up.json", os.O_WRONLY | os.O_CREAT, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(cli_env, fh)
    down = cli(project, "down")
    assert down.returncode == 0 and "nothing was running any more" in down.stdout, down.stdout + down.stderr
    assert not (state / "up.json").exists()
    (state / "up.json.keep").rename(state / "up.json")  # for the fixture's own down


def psutil_exists(pid: int) -> bool:
    import psutil

    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


def test_attach_to_unhealthy_environment_is_clear(project: Path, running: dict[str, Any]) -> None:
    """--launcher-attach refuses an environment whose service no longer answers its probe."""
    os.kill(running["services"]["api"]["pid"], signal.SIGSTOP)  # alive, but answers nothing
    try:
        (project / "test_x.py").write_text("import pytest\n@pytest.mark.services('api')\ndef test_x(): pass\n")
        result = subprocess.run([PY, "-m", "pytest", "-p", "no:cacheprovider", "--launcher-attach"], cwd=project,
                                capture_output=True, text=True, timeout=120)
        assert result.returncode != 0
        assert "service 'api' of the running environment is unhealthy (timed out)" in result.stdout + result.stderr
    finally:
        os.kill(running["services"]["api"]["pid"], signal.SIGCONT)


STUCK = f"""
[launcher]
state_dir = "state"
[services.plain]
command = ["{PY}", "{TCP}", "${{port}}"]
[services.stuck]            # never becomes healthy: it sleeps before it listens
command = ["{PY}", "{TCP}", "${{port}}", "--delay", "600"]
health = {{ tcp = true }}
startup_timeout = 60
depends_on = ["plain"]
"""


def _cmdline(proc: psutil.Process) -> list[str]:
    try:
        return list(proc.cmdline())
    except psutil.Error:  # gone since it was listed
        return []


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=lambda s: s.name)
def test_signal_while_a_service_starts_stops_up(tmp_path: Path, sig: signal.Signals, no_orphans: None) -> None:
    """Ctrl-C or SIGTERM to `up` while a service's health check cannot pass cancels the start,
    stops what started and exits (it waited out the whole startup_timeout first)."""
    (tmp_path / "launcher.toml").write_text(STUCK)
    out = tmp_path / "up.out"
    with open(out, "w") as fh:
        proc = subprocess.Popen([PY, "-m", "pytest_unified_launcher", "up"], cwd=tmp_path, stdout=fh,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, preexec_fn=default_sigint)
    try:
        _wait(lambda: "stuck: starting" in out.read_text())
        # This suite's (this xdist worker's) launchers only: the other parameter may run on another worker.
        stuck = [p for p in launcher_processes() if {"600", TCP} <= set(_cmdline(p))]
        assert len(stuck) == 1
        proc.send_signal(sig)
        code = proc.wait(timeout=50)  # well under the service's 60 s startup_timeout
    finally:
        if proc.poll() is None:  # old code: it stops by itself once the startup_timeout has passed
            proc.wait(timeout=120)
    text = out.read_text()
    assert code == 130 if sig == signal.SIGINT else code == 143, text
    assert "Traceback" not in text, text
    assert not psutil_exists(stuck[0].pid)
    assert not (tmp_path / "state" / "up.json").exists()


def test_status_shows_failed_services_and_exits_1_when_degraded(project: Path, running: dict[str, Any]) -> None:
    """A service that failed under `up` is listed as failed by `status`, which then exits 1 like
    the control API's `degraded` (it listed only the healthy ones and exited 0)."""
    base, token = running["control"]["url"], running["control"]["token"]
    assert cli(project, "status").returncode == 0
    # A restart that cannot come up: the app now fails at import.
    web = project / "web.py"
    web.write_text(web.read_text() + "\nraise SystemExit('broken on purpose')\n")
    code, _ = http(f"{base}/services/api/restart", token, "POST", {"reason": "test"})
    services = json.loads(http(f"{base}/services", token)[1])
    assert services["status"] == "degraded", services
    status = cli(project, "status")
    assert status.returncode == 1, status.stdout + status.stderr
    rows = {line.split()[0]: line.split()[1] for line in status.stdout.splitlines()[1:] if line.split()}
    assert rows.get("api") == "failed" and rows.get("plain") == "running", status.stdout
    assert "degraded" in status.stdout


def test_check_reports_a_missing_program(project: Path) -> None:
    """check names a command or setup program that does not exist (it passed, and every start
    failed), as a config error (exit 2) with the fix."""
    (project / "launcher.toml").write_text(
        CONFIG + '[services.gone]\ncommand = ["no-such-program-ul", "--flag"]\n'
        '[services.local]\nsetup = [["bin/missing-init"]]\ncommand = ["true"]\ntask = true\n')
    result = cli(project, "check")
    assert result.returncode == 2, result.stdout + result.stderr
    assert "service 'gone', key 'command': program 'no-such-program-ul' not found on PATH" in result.stderr
    assert f"service 'local', key 'setup': program 'bin/missing-init' does not exist in {project}" in result.stderr
    assert "Traceback" not in result.stderr


def test_check_reports_a_busy_fixed_port(project: Path) -> None:
    """check says a fixed port is already taken (every start would fail on it), naming the holder."""
    import socket

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        (project / "launcher.toml").write_text(CONFIG.replace('"${port}"]\n', f'"${{port}}"]\nport = {port}\n', 1))
        result = cli(project, "check")
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"service 'plain': its port {port} on 127.0.0.1 is in use by pid {os.getpid()}" in result.stderr
    assert 'port = "auto"' in result.stderr and "Traceback" not in result.stderr


def test_check_reports_a_wrong_app_unless_no_import(project: Path) -> None:
    """check imports each app and names a missing attribute with the closest name; --no-import
    skips importing apps (whose import may need a running database)."""
    (project / "launcher.toml").write_text(CONFIG.replace('app = "web:app"', 'app = "web:ap"'))
    result = cli(project, "check")
    assert result.returncode == 2, result.stdout + result.stderr
    assert "service 'api'" in result.stderr and "did you mean 'app'?" in result.stderr
    skipped = cli(project, "check", "--no-import")
    assert skipped.returncode == 0, skipped.stderr
    assert "apps not imported (--no-import)" in skipped.stdout


@pytest.fixture
def full_disk(tmp_path: Path) -> Any:
    """A 1 MiB tmpfs at ``tmp_path/state`` (the state dir) and a way to fill it up."""
    if os.geteuid() != 0:
        pytest.skip("mounts a tmpfs: needs root")
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", str(state)]).returncode:
        pytest.skip("cannot mount a tmpfs here")

    def fill() -> None:
        fd = os.open(state / "filler", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            while True:
                os.write(fd, b"x" * 4096)
        except OSError:
            pass
        finally:
            os.close(fd)

    try:
        yield fill
    finally:
        subprocess.run(["umount", "-l", str(state)], check=True)


def test_full_disk_while_up_restarts_keeps_supervising(project: Path, full_disk: Any, no_orphans: None) -> None:
    """When up.json cannot be written (disk full), up says so in one line and goes on restarting
    services that die; no temp file is left (supervision died silently at the first restart)."""
    # A service that prints nothing: its own log is on the full disk too, and a write there would
    # end it (exit 1), which is right but not what this test is about.
    (project / "launcher.toml").write_text(CONFIG.split("[services.plain]")[0] + textwrap.dedent(f"""
        [services.plain]
        command = ["{PY}", "-c", "import socket, sys, time; s = socket.socket(); s.bind(('127.0.0.1', int(sys.argv[1]))); s.listen(); time.sleep(3600)", "${{port}}"]
    """))
    out = project / "up.out"
    with open(out, "w") as fh:
        proc = subprocess.Popen([PY, "-m", "pytest_unified_launcher", "up"], cwd=project, stdout=fh,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, preexec_fn=default_sigint)
    try:
        _wait(lambda: (project / "state" / "up.json").exists())
        control = json.loads((project / "state" / "up.json").read_text())["control"]
        full_disk()

        def pid() -> Any:
            return json.loads(http(f"{control['url']}/services/plain", control["token"])[1])

        for _ in range(2):  # the second death shows that supervision goes on after the failed write
            old = pid()["pid"]
            os.kill(old, signal.SIGKILL)
            _wait(lambda old=old: pid()["pid"] not in (None, old) and pid()["state"] == "running", timeout=60)
        assert not list((project / "state").glob("up.json*.tmp"))
        status = cli(project, "status")  # up.json is stale: status asks up itself
        assert status.returncode == 0 and "dead" not in status.stdout, status.stdout + status.stderr
        text = out.read_text()
        assert "cannot update" in text and "No space left on device" in text, text
        assert "Traceback" not in text, text
    finally:
        (project / "state" / "filler").unlink(missing_ok=True)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)


def test_up_detach_that_cannot_record_says_why(project: Path, no_orphans: None) -> None:
    """`up --detach` whose up.json cannot be written exits 1 naming the file and the reason (it
    said "see up.log"), and leaves nothing running."""
    (project / "launcher.toml").write_text(CONFIG.split("[services.api]")[0])
    assert cli(project, "check").returncode == 0
    (project / "state").mkdir(exist_ok=True)
    (project / "state" / "up.json").mkdir()  # where the record goes: os.replace onto it fails
    result = cli(project, "up", "--detach")
    assert result.returncode == 1
    assert result.stderr.startswith(f"error: cannot update {project / 'state' / 'up.json'} (Is a directory); "
                                    "make it writable, or set another state_dir"), result.stderr


def test_up_restarts_an_unhealthy_service_and_shows_health_and_resources(tmp_path: Path, no_orphans: None) -> None:
    """`up` restarts a service that turned unhealthy (auto_restart) with the dependents that need
    it; `status` and /metrics show its health, probe latency and resources (SPEC 10)."""
    from prometheus_client.parser import text_string_to_metric_families

    (tmp_path / "launcher.toml").write_text(f"""
[launcher]
state_dir = "state"
[services.web]
command = ["{PY}", "{APPS / 'flaky_http.py'}", "${{port}}"]
health = {{ http = "/health", interval = 0.1, failure_threshold = 2, timeout = 0.3 }}
[services.front]
command = ["{PY}", "{TCP}", "${{port}}"]
depends_on = ["web"]
""")
    result = cli(tmp_path, "up", "--detach")
    assert result.returncode == 0, result.stderr + result.stdout
    try:
        record = json.loads((tmp_path / "state" / "up.json").read_text())
        web, front = record["services"]["web"], record["services"]["front"]
        _wait(lambda: "  ok  " in cli(tmp_path, "status").stdout)  # a monitor probe passed
        status = cli(tmp_path, "status")
        assert status.returncode == 0, status.stdout
        lines = status.stdout.splitlines()
        header, row = lines[1], next(line for line in lines if line.startswith("web "))
        assert header.split()[-6:] == ["probe", "probe", "ms", "MiB", "cpu", "s"]
        cells = row.split()
        assert cells[-4] == "ok" and float(cells[-3]) > 0 and float(cells[-2]) > 1 and float(cells[-1]) >= 0
        control = record["control"]
        code, text = http(f"{control['url']}/metrics", control["token"])
        assert code == 200
        samples = {(s.name, s.labels.get("service")): s.value
                   for family in text_string_to_metric_families(text) for s in family.samples}
        assert samples[("unified_launcher_service_rss_bytes", "web")] > 1_000_000
        assert samples[("unified_launcher_service_healthy", "web")] == 1
        assert samples[("unified_launcher_service_probes", "web")] >= 1
        assert ("launcher_health_probe_seconds_count", "web") in samples

        urllib.request.urlopen(f"{web['url']}/mode/503", timeout=5).read()

        def replaced() -> bool:
            now = json.loads((tmp_path / "state" / "up.json").read_text())["services"]
            return now.get("web", {}).get("pid") not in (None, web["pid"]) and \
                now.get("front", {}).get("pid") not in (None, front["pid"])

        _wait(replaced)
        log = (tmp_path / "state" / "up.log").read_text()
        assert "service web is unhealthy (2 failed probes; last: GET" in log
        assert "auto_restart: restarting web in 1 s" in log and "restarting front, web (it was unhealthy" in log
    finally:
        cli(tmp_path, "down")


@pytest.mark.parametrize(("state", "health", "last", "shown"), [
    ("running", {"probes": 0, "monitored": True}, None, "soon"),  # its first probe is interval s after ready
    ("running", {"probes": 0, "monitored": False}, None, "-"),    # a log or notify probe: never asked again
    ("running", {"probes": 3, "monitored": True}, "ok", "ok"),
    ("unhealthy", {"probes": 3, "monitored": True}, "HTTP 503", "failing"),
    ("stopped", {"probes": 0, "monitored": True}, None, "-"),
])
def test_status_probe_cell(state: str, health: dict[str, Any], last: str | None, shown: str) -> None:
    from pytest_unified_launcher.cli import _probe_cell

    assert _probe_cell(state, health, last) == shown
