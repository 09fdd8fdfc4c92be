"""The pytest11 entry point: options, the ``services`` marker, fixtures, summary, teardown.

Everything heavy is imported only once a config file exists: a project without one pays for a
few ``stat`` calls. State lives in ``config.stash``; the core knows nothing of pytest.
"""

from __future__ import annotations

import json
import os
import types
from collections.abc import Generator, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from . import _plugin_roles as _roles
from ._plugin_health import TestWatch, health_errors_wanted
from .errors import ConfigError, LauncherError, UnknownServiceError

if TYPE_CHECKING:
    from .config import LauncherConfig
    from ._handles import ServiceHandle
    from .orchestrator import LauncherStatus, UnifiedLauncher
    from .xdist import SharedEnvironment

_OPTIONS = [
    ("config", "PATH", "config file (default: launcher.toml in the rootdir, then pyproject.toml)"),
    ("profile", "NAME", "config profile to merge over the base, e.g. ci"),
    ("mode", "MODE", "single_process | multi_process | auto"),
    ("services", "A,B", "services to start at session start"),
    ("xdist", "MODE", "shared (one environment for all workers) | per_worker"),
    ("report", "PATH", "write the JSON startup report here"),
    ("budget", "SECONDS", "fail the session when the environment's startup exceeds this"),
    ("waterfall", "PATH", "write the startup waterfall SVG here"),
]


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("unified-launcher", "service environments (pytest-unified-launcher)")
    for name, metavar, text in _OPTIONS:
        group.addoption(f"--launcher-{name}", dest=f"launcher_{name}", metavar=metavar, default=None, help=text)
        parser.addini(f"launcher_{name}", text, default=None)
    group.addoption("--launcher-keep", dest="launcher_keep", action="store_true", default=None,
                    help="leave the services running after the session; prints how to stop them")
    parser.addini("launcher_keep", "leave the services running after the session", type="bool", default=False)
    group.addoption("--launcher-attach", dest="launcher_attach", action="store_true", default=None,
                    help="use the environment `unified-launcher up` is running")
    parser.addini("launcher_attach", "use the environment `unified-launcher up` runs", type="bool", default=False)
    parser.addini("launcher_log_lines", "log lines per service shown under a failing test (0: none)",
                  type="string", default="20")


def _opt(config: pytest.Config, name: str, namespace: Any = None) -> Any:
    value = getattr(namespace or config.option, f"launcher_{name}", None)
    if value is None:
        value = config.getini(f"launcher_{name}")
    return value if value not in ("", []) else None


class _Session:
    """The plugin's per-session state, kept in ``config.stash``."""

    def __init__(self, config_path: Path | None, looked: list[str]) -> None:
        self.config_path = config_path
        self.looked = looked
        self.lconfig: LauncherConfig | None = None
        self.launcher: UnifiedLauncher | None = None
        self.role = "single"  # or "controller" / "worker"
        self.shared: SharedEnvironment | None = None
        self.shared_payload: dict[str, Any] | None = None
        self.keep = False
        self.attach = False
        self.worker_reports: list[dict[str, Any]] = []
        self.keep_message: str | None = None
        self.teardown_report: dict[str, Any] | None = None
        self.previous_handlers: dict[int, Any] = {}
        #: Attached under xdist: ``service -> pid`` of `up`'s own processes (never ours to stop).
        self.up_pids: dict[str, int | None] = {}
        #: A shared xdist controller's own run record (no processes, its scratch roots) and its
        #: sentinel: killed before any worker recorded a service, its folders are still reaped.
        self.controller_record: Any = None
        self.controller_sentinel: Any = None
        #: The xdist controller's log folder for its workers, and the lock that claims it.
        self.log_dir: Path | None = None
        self.log_lock: int | None = None

    @property
    def active(self) -> bool:
        return self.lconfig is not None


_KEY = pytest.StashKey[_Session]()


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(early_config: pytest.Config, parser: pytest.Parser, args: list[str]) -> None:
    """Load the config and export ``[launcher.test_env]`` before any conftest.py is imported."""
    ns = early_config.known_args_namespace
    from ._discovery import find_config

    shared_env = os.environ.get("UNIFIED_LAUNCHER_SHARED")
    in_worker = "PYTEST_XDIST_WORKER" in os.environ
    payload = json.loads(shared_env) if (shared_env and in_worker) else None
    try:
        path, looked = find_config(
            explicit=payload["config"] if payload else _opt(early_config, "config", ns),
            ini=None if payload else early_config.getini("launcher_config") or None,
            rootdir=early_config.rootpath,
            invocation_dir=early_config.invocation_params.dir,
        )
    except ConfigError as exc:
        raise pytest.UsageError(str(exc)) from None
    session = _Session(path, looked)
    early_config.stash[_KEY] = session
    if path is None:
        return
    from .config import load_config

    session.keep = bool(_opt(early_config, "keep", ns))
    session.attach = bool(_opt(early_config, "attach", ns))
    if session.attach and payload is None:
        payload = _attach_payload(path, ns)
    ini = {key: early_config.getini(f"launcher_{key}") or None for key in ("profile", "mode", "xdist", "budget")}
    _check_options(ns, ini, early_config.inipath)
    if not in_worker:
        _check_output_paths(early_config, ns)
    budget = float(ns.launcher_budget) if ns.launcher_budget else None
    try:
        lconfig = load_config(
            path,
            profile=ns.launcher_profile,
            mode=ns.launcher_mode,
            xdist=ns.launcher_xdist,
            budget=budget,
            ini=ini,
            pinned_ports=payload["ports"] if payload else None,
            tmp_root=payload["tmp_root"] if payload else None,
            worker=os.environ.get("PYTEST_XDIST_WORKER") if in_worker else None,
        )
    except ConfigError as exc:
        raise pytest.UsageError(str(exc)) from None
    session.lconfig = lconfig
    _roles.assign_role(session, lconfig, in_worker=in_worker, payload=payload, namespace=ns)
    os.environ.update(lconfig.test_env)


def _check_options(ns: Any, ini: Mapping[str, Any], inipath: Path | None) -> None:
    """Name a wrong option or ini value as such (the config file is not where it came from)."""
    from .config import MODE_CHOICES, XDIST_CHOICES

    choices = {"mode": MODE_CHOICES, "xdist": XDIST_CHOICES}
    for key in ("mode", "xdist", "budget"):
        for value, where in ((getattr(ns, f"launcher_{key}", None), f"--launcher-{key}"),
                             (ini.get(key), f"ini key launcher_{key} in {inipath}")):
            if value is None:
                continue
            if key == "budget":
                try:
                    ok = float(value) > 0
                except ValueError:
                    ok = False
                if not ok:
                    raise pytest.UsageError(f"{where}: {value!r} is not a number of seconds above 0; e.g. 25")
            elif value not in choices[key]:
                raise pytest.UsageError(f"{where}: {value!r} is not one of {', '.join(choices[key])}")


def _check_output_paths(early_config: pytest.Config, ns: Any) -> None:
    """A report or waterfall path that cannot be written fails now, not after the whole run."""
    from ._output import check_writable

    for key in ("report", "waterfall"):
        path = _opt(early_config, key, ns)
        problem = check_writable(path) if path else None
        if problem:
            raise pytest.UsageError(f"--launcher-{key}: cannot write {path} ({problem})")


def _attach_payload(path: Path, ns: Any) -> dict[str, Any]:
    """The running environment's ports and temp dir, so placeholders name its addresses."""
    from ._up import read_up_record
    from .config import state_dir_of

    try:
        record = read_up_record(state_dir_of(path, profile=ns.launcher_profile))
    except LauncherError as exc:
        raise pytest.UsageError(f"--launcher-attach: {exc}") from None
    return {"config": str(path), "ports": record.get("ports", {}), "tmp_root": record.get("tmp_root")}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "services(*names): start these launcher services (and their dependencies) before the test",
    )
    state = config.stash.get(_KEY, None)
    if state is not None and state.active and config.pluginmanager.has_plugin("django"):
        # Registered after pytest-django, so that its django_db_setup (the launcher's database) wins.
        config.pluginmanager.import_plugin("pytest_unified_launcher._django")


def _session(config: pytest.Config) -> _Session:
    session = config.stash.get(_KEY, None)
    if session is None:  # plugin registered late (e.g. -p from a conftest)
        session = _Session(None, [])
        config.stash[_KEY] = session
    return session


def _launcher(config: pytest.Config) -> UnifiedLauncher:
    session = _session(config)
    if session.lconfig is None:
        raise LauncherError(
            "no launcher config found; looked in: " + "; ".join(session.looked)
            + ". Create a launcher.toml (`unified-launcher init`) or pass --launcher-config PATH"
        )
    if session.launcher is None:
        from .config import KEEP, SHARED_WORKERS
        from .orchestrator import UnifiedLauncher

        worker = os.environ.get("PYTEST_XDIST_WORKER")
        log_dir = None  # a plain session claims logs/ itself
        if session.role == "worker" and worker:
            claimed = Path(os.environ.get(_roles.LOGS_VAR) or session.lconfig.state_dir / "logs")
            # per_worker: every worker runs the same services; gw0/, gw1/ keep them apart.
            log_dir = claimed if session.shared is not None else claimed / worker
        session.launcher = UnifiedLauncher(
            session.lconfig,
            subprocess_apps_because=SHARED_WORKERS if session.shared is not None else KEEP if session.keep else None,
            owner_pid=session.shared_payload["controller_pid"] if session.shared_payload else None,
            log_dir=log_dir,
        )
        if session.shared is not None and session.role == "worker":
            shared, launcher = session.shared, session.launcher
            launcher.on_change = lambda names: shared.update(launcher, names)
            launcher.refresh = lambda names: shared.adopt_recorded(launcher, names)
            launcher.recheck = lambda name: shared.recheck(launcher, name)
            launcher.guard = shared.lock
        if session.attach:
            _attach(session)
    return session.launcher


def _interrupt_on_termination(session: _Session) -> None:
    """Make SIGTERM and SIGHUP (a CI job cancelled, a terminal closed) end the session like
    Ctrl-C, so its teardown stops the services: they run in sessions of their own, so nothing
    else would. Only where nobody has installed a handler already, and only on the main thread."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"{signal.Signals(signum).name} received: stopping the services")

    for sig in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(sig) is signal.SIG_DFL:
            session.previous_handlers[sig] = signal.signal(sig, interrupt)


def pytest_unconfigure(config: pytest.Config) -> None:
    state = config.stash.get(_KEY, None)
    if state is not None and state.previous_handlers:
        import signal

        for sig, handler in state.previous_handlers.items():
            signal.signal(sig, handler)
        state.previous_handlers.clear()


def _attach(session: _Session) -> None:
    from ._up import attach_launcher

    assert session.launcher is not None and session.lconfig is not None
    attach_launcher(session.launcher, session.lconfig.state_dir)


def _marked_services(item: pytest.Item) -> tuple[list[str], list[str]]:
    """The names in the item's ``services`` markers (test, class, module), each once, and those
    of its markers with ``fresh=True`` (their data is reset before the test).

    Names are strings, or lists of strings; anything else is a LauncherError that shows the fix.
    """
    names: list[str] = []
    fresh: list[str] = []
    for marker in item.iter_markers("services"):
        unknown = sorted(set(marker.kwargs) - {"fresh", "health_errors"})
        if unknown:
            raise LauncherError(f"@pytest.mark.services takes only fresh=True and health_errors=False as keywords "
                                f"(got {', '.join(unknown)}=...); "
                                'name the services as strings: @pytest.mark.services("api", "db", fresh=True)')
        for key in ("fresh", "health_errors"):
            if not isinstance(marker.kwargs.get(key, False), bool):
                raise LauncherError(f"@pytest.mark.services: {key}={marker.kwargs[key]!r}; write {key}=True or {key}=False")
        if marker.kwargs.get("fresh") and not marker.args:
            raise LauncherError('@pytest.mark.services(fresh=True) names no service, so nothing would be made fresh; '
                                'name them: @pytest.mark.services("db", fresh=True)')
        for arg in marker.args:
            group = [arg] if isinstance(arg, str) else arg if isinstance(arg, (list, tuple)) else [arg]
            for name in group:
                if not isinstance(name, str):
                    raise LauncherError(f"@pytest.mark.services: {name!r} is not a service name; "
                                        'name the services as strings: @pytest.mark.services("api", "db")')
                if name not in names:
                    names.append(name)
                if marker.kwargs.get("fresh") and name not in fresh:
                    fresh.append(name)
    return names, fresh


def _reset_fresh(config: pytest.Config, names: list[str]) -> None:
    """``fresh=True``: reset ``names`` and their dependencies that have a reset hook,
    dependencies first; none having one is a mistake to name."""
    launcher = _launcher(config)
    wanted = launcher.closure(names)
    hooked = sorted((n for n in wanted if launcher.config.services[n].reset is not None),
                    key=lambda n: (launcher.services[n].level, n))
    if not hooked:
        raise LauncherError(
            f"@pytest.mark.services(..., fresh=True): none of {', '.join(wanted)} has a reset hook, so nothing "
            f"can be made fresh; add reset = [\"program\", \"arg\", ...] or reset = \"module:function\" "
            f"to [services.{names[0]}] (or to the dependency that holds the data)")
    _reset_current(launcher, hooked)


def _reset_current(launcher: UnifiedLauncher, names: list[str]) -> None:
    """Reset ``names`` as they run now: under xdist ``shared``, holding the lock (not while another
    worker restarts or stops one) on the instances the shared record names."""
    with launcher.guard():
        launcher.refresh(names)
        launcher.reset_blocking(names)


def _ensure(config: pytest.Config, names: Iterable[str]) -> dict[str, ServiceHandle]:
    session = _session(config)
    launcher = _launcher(config)
    wanted = launcher.closure(names)
    # Fast path: everything already up (a few attribute reads, no thread hop). A shared
    # environment always asks the record: another worker may have stopped or restarted one.
    if not (session.shared is None and launcher.all_up(wanted)):
        if session.shared is not None and session.role == "worker":
            session.shared.ensure(launcher, wanted)
        else:
            launcher.start_blocking(wanted)
    handles: dict[str, Any] = {n: launcher.services[n] for n in wanted}
    from ._handles import HandleGroup

    for group, members in launcher.config.groups.items():  # replicas = N: services["worker"][i]
        if all(m in handles for m in members):
            handles[group] = HandleGroup(group, [handles[m] for m in members])
    return handles


def pytest_sessionstart(session: pytest.Session) -> None:
    state = _session(session.config)
    if state.active:
        _interrupt_on_termination(state)
        _check_mode(state)
    names = _opt(session.config, "services")
    runs_nothing = session.config.option.collectonly or session.config.option.setupplan
    if state.active and names and state.role != "controller" and not runs_nothing:
        try:
            _ensure(session.config, [n.strip() for n in str(names).split(",") if n.strip()])
        except LauncherError as exc:
            raise pytest.UsageError(f"--launcher-services: {exc}") from None


def _check_mode(state: _Session) -> None:
    """A mode that cannot work (explicit single_process with two apps that need different values
    of one variable, or that share a settings module read under different values) is a usage
    error before any test, as every config mistake is; it errored each test that needed a service.
    At session start, so that pytest-django (which decides where Django apps may run) is configured."""
    from .config import KEEP, SHARED_WORKERS, resolve_mode

    assert state.lconfig is not None
    try:
        resolve_mode(state.lconfig, as_root=os.geteuid() == 0,
                     subprocess_apps_because=SHARED_WORKERS if state.shared is not None else KEEP if state.keep else None)
    except ConfigError as exc:
        raise pytest.UsageError(str(exc)) from None


@pytest.hookimpl  # not tryfirst: pytest's skip and xfail(run=False) marks must win (a skipped test starts nothing)
def pytest_runtest_setup(item: pytest.Item) -> None:
    marker_error: str | None = None
    try:
        names, fresh = _marked_services(item)
    except LauncherError as exc:
        marker_error = str(exc)
    if marker_error is not None:
        pytest.fail(marker_error, pytrace=False)  # outside the except: no "during handling" echo of it
    if not names or item.config.option.setupplan:  # --setup-plan shows the plan, runs nothing
        return
    state = _session(item.config)
    if not state.active:
        pytest.fail(
            "@pytest.mark.services used, but no launcher config found; looked in: "
            + "; ".join(state.looked)
            + ". Create a launcher.toml or pass --launcher-config PATH",
            pytrace=False,
        )
    try:
        handles = _ensure(item.config, names)
        if fresh:
            _reset_fresh(item.config, fresh)
        if health_errors_wanted(item):
            launcher = _launcher(item.config)
            item.stash[_WATCH] = TestWatch(launcher, [n for n in handles if n in launcher.services])
        return
    except UnknownServiceError as exc:
        message = f"@pytest.mark.services: {exc}"
    except LauncherError as exc:
        message = str(exc)
    pytest.fail(message, pytrace=False)  # outside the except: no "during handling" echo of it


#: The health events of the test now running (see ``_plugin_health``).
_WATCH = pytest.StashKey["TestWatch"]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item) -> Generator[None, None, None]:
    """After the test's own teardown: a service of its that turned unhealthy or died meanwhile
    is an error of its teardown, as a fixture's would be."""
    yield
    watch = item.stash.get(_WATCH, None)
    if watch is not None:
        del item.stash[_WATCH]
        problem = watch.finish()
        if problem is not None:
            pytest.fail(problem, pytrace=False)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, Any]:
    report = yield
    if report.failed and report.when in ("setup", "call"):
        state = item.config.stash.get(_KEY, None)
        if state is not None and state.launcher is not None:
            _add_log_sections(item, report, state.launcher)
    return report


def _log_lines(config: pytest.Config) -> int:
    value = config.getini("launcher_log_lines")
    try:
        return max(0, int(value))
    except ValueError:
        raise pytest.UsageError(f"ini key launcher_log_lines: {value!r} is not a whole number of lines; e.g. 20") from None


def _add_log_sections(item: pytest.Item, report: pytest.TestReport, launcher: UnifiedLauncher) -> None:
    """Log tails under a failing test: a service that died first, then the services the test
    marked; their dependencies only with -v (a healthy database's chatter hides the cause)."""
    lines = _log_lines(item.config)
    if lines == 0:
        return
    try:
        marked, _ = _marked_services(item)
        wanted = launcher.closure(marked)
    except LauncherError:  # a wrong marker or name: its own error says so
        return
    handles = launcher.services

    from .lifecycle import LIVE_STATES

    def died(name: str) -> bool:
        return handles[name].state == "died" or (handles[name].state in LIVE_STATES and not handles[name].alive)

    broken = [n for n in wanted if died(n)]
    shown = broken + [n for n in marked if n not in broken]
    if item.config.get_verbosity() > 0:
        shown += [n for n in wanted if n not in shown]
    from ._redact import redact

    for name in shown:
        handle = handles[name]
        if report.when == "setup" and handle.error is not None:
            continue  # its own failure message already ends with this tail
        text = handle.logs(lines)
        if text:
            how = "died; " if name in broken else ""
            report.sections.append((f"unified-launcher log: {name} ({how}last {lines} lines)", redact(text)))


# --------------------------------------------------------------------------- fixtures


class LauncherFacade:
    """The ``launcher`` fixture: the session's UnifiedLauncher, synchronously."""

    def __init__(self, config: pytest.Config) -> None:
        self._config = config

    @property
    def _launcher(self) -> UnifiedLauncher:
        return _launcher(self._config)

    def start(self, names: Iterable[str] | str | None = None) -> dict[str, ServiceHandle]:
        if isinstance(names, str):
            names = [names]
        return _ensure(self._config, names if names is not None else self._launcher.graph)

    def stop(self, names: Iterable[str] | str | None = None) -> None:
        if isinstance(names, str):
            names = [names]
        names = list(names) if names is not None else sorted(self._launcher.graph)
        with self._launcher.guard():
            self._launcher.refresh(names)
            self._launcher.stop_blocking(names)
            self._launcher.on_change(names)

    def service(self, name: str) -> ServiceHandle:
        return self._launcher.service(name)

    def reset(self, names: Iterable[str] | str) -> None:
        """Run the ``reset`` hook of ``names`` (each must be up): their data clean again."""
        _reset_current(self._launcher, [names] if isinstance(names, str) else list(names))

    @property
    def services(self) -> Mapping[str, ServiceHandle]:
        return self._launcher.services

    def status(self) -> LauncherStatus:
        """The session environment's status (idle, running, degraded, ...): SPEC 6's get_status()."""
        return self._launcher.get_status()

    get_status = status

    @property
    def config(self) -> LauncherConfig:
        return self._launcher.config

    def report(self) -> dict[str, Any]:
        return self._launcher.report()

    def __repr__(self) -> str:
        return f"<launcher fixture {self._launcher!r}>"


@pytest.fixture(scope="session")
def launcher(pytestconfig: pytest.Config) -> LauncherFacade:
    """The session's launcher (start, stop, service, status, report), synchronously."""
    facade = LauncherFacade(pytestconfig)
    try:
        _ = facade._launcher
    except LauncherError as exc:
        pytest.fail(str(exc), pytrace=False)
    return facade


@pytest.fixture
def services(request: pytest.FixtureRequest) -> Mapping[str, ServiceHandle]:
    """Read-only ``name -> ServiceHandle`` of the test's marked services and their dependencies."""
    names, _ = _marked_services(request.node)
    if not names:
        return types.MappingProxyType({})
    return types.MappingProxyType(_ensure(request.config, names))


@pytest.fixture
def startup_benchmark(request: pytest.FixtureRequest) -> Any:
    """``startup_benchmark(["api"], rounds=10)``: cold starts through pytest-benchmark.

    Each round starts the services (and dependencies) on fresh ports, timed by the
    ``benchmark`` fixture (so ``--benchmark-save`` / ``--benchmark-compare-fail`` gate
    regressions), then stops them; the test fails when the P95 exceeds the budget.
    """
    if not request.config.pluginmanager.hasplugin("benchmark"):
        pytest.fail("startup_benchmark runs through pytest-benchmark, which is not installed or is disabled "
                    "(-p no:benchmark): pip install pytest-benchmark", pytrace=False)
    benchmark = request.getfixturevalue("benchmark")
    state = _session(request.config)
    if state.lconfig is None or state.config_path is None:
        pytest.fail("startup_benchmark needs a launcher config; looked in: " + "; ".join(state.looked), pytrace=False)

    def run(names: Iterable[str] | str | None = None, rounds: int = 10) -> dict[str, Any]:
        from . import graph as graph_mod
        from .config import load_config
        from .orchestrator import UnifiedLauncher
        from .report import percentile

        assert state.lconfig is not None and state.config_path is not None
        wanted = [names] if isinstance(names, str) else (list(names) if names is not None else None)
        if not isinstance(rounds, int) or rounds < 1:
            pytest.fail(f"startup_benchmark: rounds={rounds!r}; give a whole number of at least 1, e.g. rounds=10",
                        pytrace=False)
        problem = None
        try:
            graph_mod.closure(state.lconfig.graph, wanted or ())
            config = load_config(state.config_path, profile=state.lconfig.profile, mode=state.lconfig.mode,
                                 budget=state.lconfig.startup_budget, worker=state.lconfig.worker)
            # Its own logs, and the session's variables put back: in-process apps write their env
            # into os.environ, and the rounds' ports are not the session's.
            bench_launcher = UnifiedLauncher(config, log_dir=config.state_dir / "logs" / "startup_benchmark")
            saved_environ = dict(os.environ)
            try:
                benchmark.pedantic(
                    lambda: bench_launcher.start_blocking(wanted),
                    teardown=lambda: bench_launcher.stop_blocking(close=False),
                    rounds=rounds, iterations=1, warmup_rounds=0,
                )
            finally:
                bench_launcher.stop_blocking()
                os.environ.clear()
                os.environ.update(saved_environ)
        except LauncherError as exc:
            problem = f"startup_benchmark: {exc}"
        if problem is not None:
            pytest.fail(problem, pytrace=False)  # outside the except: no "during handling" echo
        report = bench_launcher.report()
        totals = [r["total_startup_seconds"] for r in report["runs"]]
        p95 = percentile(totals, 95)
        benchmark.extra_info.update({"launcher_p95": p95, "launcher_budget": config.startup_budget,
                                     "launcher_mode": bench_launcher.mode})
        if p95 > config.startup_budget:
            pytest.fail(f"startup P95 {p95:.3f} s over {len(totals)} cold starts exceeds the budget of "
                        f"{config.startup_budget:g} s", pytrace=False)
        return report

    return run


# --------------------------------------------------------------------------- end of session


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    state = session.config.stash.get(_KEY, None)
    if state is None or not state.active:
        return
    if state.role == "worker":
        _roles.finish_worker(session.config, state)
    elif state.role == "controller":
        _roles.finish_controller(state)
    else:
        _finish_single(session.config, state)
    report = _roles.combined_report(state)
    if report is None:
        return
    session.config.stash[_REPORT] = report
    path = _opt(session.config, "report")
    from ._output import write_text

    if path:
        write_text(path, json.dumps(report, indent=2) + "\n")
    svg = _opt(session.config, "waterfall")
    if svg and report["runs"]:
        from .report import render_svg

        write_text(svg, render_svg(report["runs"][-1], budget_seconds=report["budget_seconds"]))
    if state.role != "worker" and report["runs"]:
        total = report["runs"][-1]["total_startup_seconds"]
        if total > report["budget_seconds"] and session.exitstatus == 0:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED


_REPORT = pytest.StashKey[dict[str, Any]]()


def _finish_single(config: pytest.Config, state: _Session) -> None:
    launcher = state.launcher
    if launcher is None:
        return
    if state.keep and not state.attach:
        _roles.keep(state, launcher)
    elif state.attach:
        launcher.release_attached()
    else:
        launcher.stop_blocking()


@pytest.hookimpl(optionalhook=True)  # pytest-xdist's hook: without xdist installed, pytest must not reject it
def pytest_testnodedown(node: Any, error: Any) -> None:
    state = node.config.stash.get(_KEY, None)
    output = getattr(node, "workeroutput", None) or {}
    if state is not None and "unified_launcher_report" in output:
        state.worker_reports.append(json.loads(output["unified_launcher_report"]))


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    state = config.stash.get(_KEY, None)
    report = config.stash.get(_REPORT, None)
    if state is None or report is None or not report["runs"]:
        return
    from .report import session_summary

    terminalreporter.section("unified launcher")
    for line in session_summary(report):
        red = "EXCEEDS" in line or "FAILED" in line
        terminalreporter.line(line, red=red)
    message = state.keep_message
    if message:
        terminalreporter.line(message, yellow=True)
