"""``unified-launcher``: the same environments outside pytest (check, up, status, down, bench, init).

Exit codes: 0 ok, 1 a startup failure or a budget exceeded, 2 a config or usage error.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .errors import AttachError, ConfigError, LauncherError

EXAMPLES = {
    "check": "example: unified-launcher check --profile ci",
    "up": "examples:\n  unified-launcher up                 # everything, until Ctrl-C\n"
          "  unified-launcher up agent --dev     # agent + dependencies, reload on changes\n"
          "  unified-launcher up --detach        # start, print the table, return",
    "status": "example: unified-launcher status",
    "down": "example: unified-launcher down",
    "bench": "example: unified-launcher bench api_gateway --runs 10 --json bench.json --svg waterfall.svg",
    "init": "example: unified-launcher init --with postgres,redis,fastapi",
    "port": "example: psql -h 127.0.0.1 -p \"$(unified-launcher port database)\"",
    "url": "example: curl \"$(unified-launcher url api_gateway)/health\"",
}


def _shared(parser: argparse.ArgumentParser) -> None:
    from .config import MODE_CHOICES

    parser.add_argument("--config", metavar="PATH", default=argparse.SUPPRESS,
                        help="config file (default: ./launcher.toml, then ./pyproject.toml)")
    parser.add_argument("--profile", metavar="NAME", default=argparse.SUPPRESS, help="profile to merge, e.g. ci")
    parser.add_argument("--mode", choices=MODE_CHOICES, default=argparse.SUPPRESS,
                        help="how app services run")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="unified-launcher",
        description="Start, check and benchmark the service graph of a launcher.toml outside pytest.",
    )
    _shared(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=text, description=text, epilog=EXAMPLES[name],
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        _shared(p)
        return p

    check = add("check", "validate the config and print the start order level by level")
    check.add_argument("--no-import", action="store_true",
                       help="do not import the apps (check imports each in its own interpreter)")
    up = add("up", "start services (with dependencies) and keep them running until Ctrl-C or `down`")
    up.add_argument("services", nargs="*", help="services to start (default: all)")
    up.add_argument("--dev", action="store_true", help="restart a service and its dependents when its files change")
    up.add_argument("--detach", action="store_true", help="start, wait until healthy, print the table, return")
    up.add_argument("--daemon-fd", type=int, default=None, help=argparse.SUPPRESS)
    add("status", "show the running environment's services, URLs and pids")
    for what in ("port", "url"):
        address = add(what, f"print a running service's {what} (for the shell, as `docker compose port`)")
        address.add_argument("service", help="a service of the running environment")
    add("down", "stop the running environment gracefully")
    bench = add("bench", "cold-start and stop the services N times; P50/P95/P99/max against the budget")
    bench.add_argument("services", nargs="*", help="services to start (default: all)")
    bench.add_argument("--runs", type=_at_least_one, default=10, help="number of cold starts (default 10)")
    bench.add_argument("--json", metavar="PATH", type=_output_file, help="write the JSON report here")
    bench.add_argument("--svg", metavar="PATH", type=_output_file,
                       help="write the startup waterfall of the slowest run here")
    init = add("init", "write a commented starter launcher.toml and a test that uses it")
    init.add_argument("--with", dest="with_", default=None,
                      help="comma-separated templates: postgres, redis, fastapi, external; or django alone "
                           "(default: django where ./manage.py names its settings, else postgres,redis,fastapi)")
    return parser


def _at_least_one(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number of at least 1; e.g. --runs 10")
    return number


def _output_file(value: str) -> Path:
    """A file the command writes at its end, checked now, so a wrong path fails before the runs."""
    from ._output import check_writable

    problem = check_writable(value)
    if problem:
        raise argparse.ArgumentTypeError(f"cannot write {value} ({problem})")
    return Path(value)


def _selection(config: Any, names: list[str]) -> list[str] | None:
    """The services named on the command line (None: all), checked before anything starts."""
    from . import graph as graph_mod

    if names:
        names = config.expand(names)  # a replicated service: all its instances
        graph_mod.closure(config.graph, names)  # raises UnknownServiceError, which lists the known ones
    return names or None


def _config_path(args: argparse.Namespace) -> Path:
    from ._discovery import find_config

    path, looked = find_config(explicit=getattr(args, "config", None), rootdir=Path.cwd())
    if path is None:
        raise ConfigError(
            "no launcher config found; looked in: " + "; ".join(looked),
            fix="run `unified-launcher init`, or pass --config PATH",
        )
    return path


def _state_dir(args: argparse.Namespace) -> Path:
    from .config import state_dir_of

    return state_dir_of(_config_path(args), profile=getattr(args, "profile", None))


def _load(args: argparse.Namespace, **kwargs: Any) -> Any:
    from .config import load_config

    return load_config(_config_path(args), profile=getattr(args, "profile", None),
                       mode=getattr(args, "mode", None), **kwargs)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    if not (sys.argv[1:] if argv is None else argv):  # no command: show them all, not just a usage line
        parser.print_help(sys.stderr)
        return 2
    args = parser.parse_args(argv)
    try:
        return int(COMMANDS[args.command](args))
    except LauncherError as exc:
        from ._redact import redact

        print(f"error: {redact(str(exc))}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `unified-launcher check | head`: the reader left; not an error of ours
        from ._environment import discard_output

        discard_output(sys.stdout)
        return 141  # 128 + SIGPIPE, what a shell reports for a command whose reader went away


# --------------------------------------------------------------------------- check


def cmd_check(args: argparse.Namespace) -> int:
    from . import graph as graph_mod
    from ._redact import redact
    from .config import resolve_mode

    config = _load(args)
    mode, reason, _ = resolve_mode(config, as_root=os.geteuid() == 0)
    count = len(config.services)
    from ._serve import check_apps

    problems = _missing_programs(config) + _busy_ports(config)
    if not args.no_import:
        problems += _broken_reset_functions(config)
    apps = ["apps not imported (--no-import)"] if args.no_import else []
    if not args.no_import:
        apps, not_apps = check_apps([s for s in config.services.values() if s.kind == "app"], config.root,
                                    dict(os.environ))
        # an import-string mistake, or neither ASGI nor WSGI
        problems += [ConfigError(problem, source=str(config.source), service=name, key="app")
                     for name, problem in sorted(not_apps.items())]
    if problems:  # every one at once: a start would fail on each
        for problem in problems:
            print(f"error: {redact(str(problem))}", file=sys.stderr)
        return max(problem.exit_code for problem in problems)
    print(f"{config.source}: OK ({count} service{'' if count == 1 else 's'}"
          + (f", profile {config.profile}" if config.profile else "") + f"; mode {mode}: {reason})")
    from .config import describe_dependencies
    from .report import render_table

    rows = []
    for level, names in enumerate(graph_mod.levels(config.graph)):
        for name in names:
            svc = config.services[name]
            kind = ("worker task" if svc.scope == "worker" else "task") if svc.task else \
                {"app": "app", "command": "command", "url": "external", "image": "image"}[svc.kind]
            port = "-" if svc.port is None else ("auto" if svc.port_auto else str(svc.port))
            probe = _as_rule(svc, svc.health.describe())
            rows.append([str(level), name, kind, port, probe, describe_dependencies(svc) or "-"])
    print("\nstart order (each service starts as soon as its own dependencies are ready):")
    for line in render_table(["level", "service", "kind", "port", "health probe", "depends on"], rows):
        print(redact(line))
    from .config import MEMORY_MIN_FREE, MEMORY_TMP

    for svc in config.services.values():
        if svc.tmpfs and svc.tmp.is_relative_to(MEMORY_TMP):
            print(f"tmpfs: {svc.name}'s ${{tmp}} is in memory (under {MEMORY_TMP})")
        elif svc.tmpfs:
            print(f"tmpfs: {svc.name}'s ${{tmp}} stays on disk (under {svc.tmp.parent.parent}): {MEMORY_TMP} is "
                  f"missing or has less than {MEMORY_MIN_FREE >> 30} GiB free")
    for svc in config.services.values():
        if svc.reset is not None:  # ${worker} shows as this process's: main
            print(redact(f"reset: {svc.name}: {_as_rule(svc, svc.reset.describe())}"))
    for line in apps:
        print(redact(line))
    from ._imports import shared_module_conflicts  # what auto avoids and single_process refuses

    for shared in [] if config.mode == "multi_process" else shared_module_conflicts(
            config.services.values(), config.root, os.environ):
        print(redact(f"warning: {shared.describe()}; they cannot share one process, so auto runs apps as subprocesses"))
    return 0


def _as_rule(svc: Any, text: str) -> str:
    """``text`` with an automatic port written ``${port}``: it differs at every start."""
    if svc.port_auto and svc.port is not None:
        return re.sub(rf"(?<![0-9]){svc.port}(?![0-9])", "${port}", text)
    return text


def _missing_programs(config: Any) -> list[LauncherError]:
    """Each command or setup program that cannot be found or run (every start would fail on it)."""
    import shutil

    problems: list[LauncherError] = []
    images = sorted(s.name for s in config.services.values() if s.kind == "image")
    if images:
        from ._containers import EngineNotFound, find_engine

        try:
            engine = find_engine(config.container_engine)
        except EngineNotFound as exc:
            problems.append(ConfigError(f"{', '.join(images)} need a container engine: {exc}",
                                        source=str(config.source), key="launcher.container_engine"))
        else:
            for name in images:  # pull = "never": the image must be here already
                spec = config.services[name].container
                if spec.pull == "never" and engine.run_sync("image", "inspect", "--format={{.Id}}", spec.image)[0]:
                    problems.append(ConfigError(
                        f"image {spec.image} is not present ({engine.name}) and pull = \"never\"",
                        source=str(config.source), service=name, key="image",
                        fix=f"pull or build it first ({engine.name} pull {spec.image}), or set pull = \"missing\""))
    for svc in config.services.values():
        steps = [("setup", step) for step in svc.setup]
        steps += [("command", svc.command)] if svc.command and svc.kind != "image" else []  # an image's runs inside
        steps += [("reset", svc.reset.argv)] if svc.reset is not None and svc.reset.argv else []
        for key, argv in steps:
            program = argv[0]
            if "/" in program:  # a path: relative to the service's folder, as it is run
                path = svc.cwd / program
                problem = (None if path.is_file() and os.access(path, os.X_OK) else
                           f"program '{program}' is not executable" if path.is_file() else
                           f"program '{program}' does not exist in {svc.cwd}")
                fix = f"chmod +x {path}" if path.is_file() else "fix the path (it is relative to the config's folder)"
            else:
                search = svc.env.get("PATH", os.environ.get("PATH", os.defpath))
                problem = None if shutil.which(program, path=search) else f"program '{program}' not found on PATH"
                fix = "install it, or give its full path"
            if problem:
                problems.append(ConfigError(problem, source=str(config.source), service=svc.name, key=key, fix=fix))
    return problems


def _broken_reset_functions(config: Any) -> list[LauncherError]:
    """Each ``reset = "module:function"`` that cannot be imported or called as function(handle, worker)."""
    from ._reset import import_hook
    from .errors import ServiceResetError

    problems: list[LauncherError] = []
    for svc in config.services.values():
        if svc.reset is not None and svc.reset.function is not None:
            try:
                import_hook(svc, svc.reset.function, str(config.root))
            except ServiceResetError as exc:
                problems.append(ConfigError(exc.cause, source=str(config.source), service=svc.name, key="reset",
                                            fix='reset = "package.module:function", a function(handle, worker)'))
    return problems


def _busy_ports(config: Any) -> list[LauncherError]:
    """Each fixed port something else listens on now (an automatic one is chosen free at start)."""
    from ._ports import is_free
    from .runners.subprocess import port_holder

    problems: list[LauncherError] = []
    for svc in config.services.values():
        if svc.is_external or svc.port is None or svc.port_auto or is_free(svc.host, svc.port):
            continue
        holder = port_holder(svc.port) or "another process"
        problems.append(LauncherError(
            f"{config.source}: service '{svc.name}': its port {svc.port} on {svc.host} is in use by {holder}, "
            f"so every start would fail; stop that process, or set port = \"auto\""))
    return problems


# --------------------------------------------------------------------------- up / status / down


def _print_table(services: dict[str, Any]) -> None:
    from .report import render_table

    rows = []
    for name, s in sorted(services.items(), key=lambda kv: (kv[1].get("level", 0), kv[0])):
        startup = s.get("startup_seconds")
        health, res = s.get("health") or {}, s.get("resources") or {}
        probe_ms = health.get("probe_ms_p50")
        last = health.get("last_probe")
        rows.append([name, s.get("state", "?"), s.get("url") or "-", str(s.get("pid") or "-"),
                     s.get("runner", "-"), "-" if startup is None else f"{startup:.3f}",
                     _probe_cell(s.get("state"), health, last),
                     "-" if probe_ms is None else f"{probe_ms:.1f}",
                     f"{res['rss_bytes'] / 2**20:.1f}" if res else "-",
                     f"{res['cpu_seconds']:.2f}" if res else "-"])
    headers = ["service", "state", "url", "pid", "runner", "startup s", "probe", "probe ms", "MiB", "cpu s"]
    for line in render_table(headers, rows):
        print(line)


def _probe_cell(state: str | None, health: dict[str, Any], last: str | None) -> str:
    """ok / failing; "soon" for a running service whose first probe is still to come (the
    monitor's first one is ``interval`` seconds after ready); "-" for one that is not probed."""
    if health.get("probes"):
        return "ok" if last == "ok" else "failing"
    return "soon" if state == "running" and health.get("monitored") else "-"


def _missing_cli_extra(dev: bool) -> str | None:
    """What `up` needs but cannot import (the ``cli`` extra), as an error line; None if all is there."""
    import importlib.util

    needed = {"jwt": "PyJWT", "prometheus_client": "prometheus-client"} | ({"watchdog": "watchdog"} if dev else {})
    missing = [package for module, package in needed.items() if importlib.util.find_spec(module) is None]
    if not missing:
        return None
    return (f"error: `unified-launcher up{' --dev' if dev else ''}` needs {', '.join(missing)}, which "
            f"{'is' if len(missing) == 1 else 'are'} not installed; pip install 'pytest-unified-launcher[cli]'")


def cmd_up(args: argparse.Namespace) -> int:
    from ._up import read_up_record

    config = _load(args)
    names = _selection(config, args.services)
    missing = _missing_cli_extra(args.dev or config.dev_mode)
    if missing:
        print(missing, file=sys.stderr)
        return 2
    try:
        existing = read_up_record(config.state_dir)
    except AttachError:
        existing = None
    if existing and _owner_alive(existing):
        print(f"error: an environment is already running (pid {existing['owner_pid']}); "
              "stop it with `unified-launcher down`", file=sys.stderr)
        return 2
    if args.detach:
        return _detach(args, config)
    fd = args.daemon_fd

    def on_ready(env: Any, error: BaseException | None) -> None:
        if error is not None:
            print(f"error: {error}", file=sys.stderr, flush=True)
        else:
            _print_table(read_up_record(config.state_dir)["services"])
            print(f"control API: {env.control_url} (token in {config.state_dir / 'up.json'})", flush=True)
            print("press Ctrl-C to stop" if fd is None else "running in the background; stop with `unified-launcher down`",
                  flush=True)
        if fd is not None:
            message = {"ok": error is None, "error": str(error) if error else None}
            os.write(fd, (json.dumps(message) + "\n").encode())
            os.close(fd)

    from ._environment import run_up

    return asyncio.run(run_up(config, names, dev=args.dev, on_ready=on_ready, follow_logs=fd is None))


def _detach(args: argparse.Namespace, config: Any) -> int:
    """Run `up` as a background process; wait for its verdict; print the table."""
    read_fd, write_fd = os.pipe()
    argv = [sys.executable, "-m", "pytest_unified_launcher"]
    for opt in ("config", "profile", "mode"):
        if getattr(args, opt, None):
            argv += [f"--{opt}", str(getattr(args, opt))]
    argv += ["up", *args.services, "--daemon-fd", str(write_fd)] + (["--dev"] if args.dev else [])
    from ._state import ensure_state_dir

    ensure_state_dir(config.state_dir, source=str(config.source))  # 0700, ours, tagged (or a clear error)
    log_path = config.state_dir / "up.log"
    with open(os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600), "ab") as log:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, pass_fds=[write_fd],
                                start_new_session=True, cwd=os.getcwd())
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as pipe:
        line = pipe.readline()
    try:
        verdict = json.loads(line) if line else {"ok": False, "error": f"the background process exited; see {log_path}"}
    except ValueError:
        verdict = {"ok": False, "error": f"unexpected answer from the background process; see {log_path}"}
    if not verdict["ok"]:
        proc.wait(timeout=120)
        print(f"error: {verdict['error']}", file=sys.stderr)
        return 1
    from ._up import read_up_record

    record = read_up_record(config.state_dir)
    _print_table(record["services"])
    print(f"running in the background (pid {proc.pid}); control API {record['control']['url']}; "
          "stop with `unified-launcher down`")
    return 0


def _owner_alive(record: dict[str, Any]) -> bool:
    from ._up import owner_alive

    return owner_alive(record)


def cmd_status(args: argparse.Namespace) -> int:
    from ._process import process_token
    from ._up import read_up_record

    record = read_up_record(_state_dir(args))
    services = record["services"]
    overall = None
    if not record.get("owner_pid"):
        supervisor = "no supervisor (left running by pytest --launcher-keep; stop it with `unified-launcher down`)"
    elif _owner_alive(record):
        supervisor = f"supervisor pid {record['owner_pid']}: running"
        live = _ask_supervisor(record)
        if live is None:
            supervisor += " (its control API does not answer: the states below are from up.json)"
        else:  # the supervisor's own view: failed and stopped services too, not only the recorded ones
            overall = live["status"]
            recorded = services
            services = {}
            for entry in live["services"]:  # the start token where up.json has the same process
                same = recorded.get(entry["name"], {})
                services[entry["name"]] = entry | {"token": same.get("token") if same.get("pid") == entry["pid"] else None}
    else:
        supervisor = f"supervisor pid {record['owner_pid']}: gone (services may be orphaned; run `unified-launcher down`)"
    healthy = overall not in ("degraded", "failed")
    for entry in services.values():
        pid = entry.get("pid")
        if entry["state"] == "running" and pid and entry.get("token") and process_token(pid) != entry["token"]:
            entry["state"] = "dead"
            healthy = False
    if overall is None:
        overall = "running" if healthy else "degraded"
    elif not healthy and overall == "running":
        overall = "degraded"
    print(f"environment of {record['config']} (profile {record.get('profile') or '-'}, mode {record['mode']}); "
          f"{supervisor}; status {overall}")
    _print_table(services)
    return 0 if healthy else 1


def cmd_address(args: argparse.Namespace) -> int:
    """``port NAME`` / ``url NAME``: one value on stdout, nothing else, so ``$(...)`` can use it."""
    from ._process import process_token
    from ._up import read_up_record

    record = read_up_record(_state_dir(args))
    entry = record["services"].get(args.service)
    running = ", ".join(sorted(record["services"])) or "none"
    if entry is None:
        print(f"error: service {args.service!r} is not running in this environment (running: {running}); "
              f"start it with `unified-launcher up {args.service}`", file=sys.stderr)
        return 1
    pid, token = entry.get("pid"), entry.get("token")
    if pid and token and process_token(pid) != token:
        print(f"error: service {args.service!r} (pid {pid}) is no longer running; see `unified-launcher status`",
              file=sys.stderr)
        return 1
    value = entry.get(args.command)
    if value is None:
        print(f"error: service {args.service!r} has no {args.command} (it listens on no port)", file=sys.stderr)
        return 1
    print(value)
    return 0


def _ask_supervisor(record: dict[str, Any]) -> dict[str, Any] | None:
    """Every service's state as `up` itself sees it (GET /services), or None if it does not answer."""
    from ._up import call_control

    try:
        data = call_control(record.get("control"), "/services")
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("services"), list):
        return None
    return dict(data)


def cmd_down(args: argparse.Namespace) -> int:
    from ._up import NothingRunning, read_up_record, remove_up_record

    state_dir = _state_dir(args)
    try:
        record = read_up_record(state_dir)
    except NothingRunning:
        print("nothing running")  # as compose's down: idempotent
        return 0
    if _owner_alive(record):
        pid = record["owner_pid"]
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 120
        while _owner_alive(record) and time.monotonic() < deadline:
            time.sleep(0.02)
        if not _owner_alive(record):
            print(f"stopped the environment (supervisor pid {pid})")
            return 0
        os.kill(pid, signal.SIGKILL)
    # No supervisor (``--launcher-keep``, or it was killed): stop the recorded services directly.
    from .config import KEEP
    from .orchestrator import UnifiedLauncher

    full = _load(args, pinned_ports=record.get("ports", {}), tmp_root=record.get("tmp_root"))
    launcher = UnifiedLauncher(full, subprocess_apps_because=KEEP)  # what it adopts are processes
    from ._up import service_is_ours

    alive = [name for name, entry in record["services"].items()
             if name in launcher.services and entry.get("pid") and service_is_ours(record, name)]
    # A container outlives its engine process (killed): adopted all the same, its stop removes
    # it by the id its starter wrote beside its log (nothing is signalled: the pid is gone).
    orphans = [name for name, entry in record["services"].items()
               if name in launcher.services and name not in alive and entry.get("pid")
               and launcher.config.services[name].kind == "image"]
    for name in alive + orphans:
        entry = record["services"][name]
        launcher.adopt(name, pid=entry["pid"], token=entry["token"],
                       log_path=Path(entry["log_path"]) if entry.get("log_path") else None)
    launcher.stop_blocking()
    remove_up_record(state_dir)
    print(f"stopped {len(alive)} services" if alive else "nothing was running any more; removed the stale record")
    return 0


# --------------------------------------------------------------------------- bench


def cmd_bench(args: argparse.Namespace) -> int:
    from ._output import write_text
    from .orchestrator import UnifiedLauncher
    from .report import bench_summary, render_svg

    config = _load(args)
    names = _selection(config, args.services)
    launcher = UnifiedLauncher(config)
    print(f"bench: {args.runs} cold starts of {', '.join(names) if names else 'all services'} "
          f"({launcher.mode}: {launcher.mode_reason})", flush=True)
    failed = None
    try:
        for i in range(1, args.runs + 1):
            try:
                launcher.start_blocking(names)
            except LauncherError as exc:
                failed = exc
            finally:
                launcher.stop_blocking(close=False)
            run = launcher.report()["runs"][-1]
            if failed:
                print(f"  run {i}/{args.runs}: FAILED after {run['total_startup_seconds']:.3f} s", flush=True)
                print(f"error: {failed}", file=sys.stderr)
                return 1
            print(f"  run {i}/{args.runs}: up {run['total_startup_seconds']:.3f} s, "
                  f"down {run['total_teardown_seconds'] or 0:.3f} s", flush=True)
    finally:
        launcher.close()
    report = launcher.report()
    if launcher.mode == "single_process" and launcher.in_process_apps:
        report["note"] = ("single_process: only the first run is cold for imports; "
                          "later runs reuse the modules already imported")
    for line in bench_summary(report):
        print(line)
    if report.get("note"):
        print("note: " + report["note"])
    if args.json:
        write_text(args.json, json.dumps(report, indent=2) + "\n")
    if args.svg:
        slowest = max(report["runs"], key=lambda r: r["total_startup_seconds"])
        write_text(args.svg, render_svg(slowest, budget_seconds=report["budget_seconds"],
                                        title=f"slowest of {args.runs} cold starts"))
    return 0 if report["budget_ok"] else 1


# --------------------------------------------------------------------------- init


def cmd_init(args: argparse.Namespace) -> int:
    from ._templates import TEMPLATES, find_django, has_pytest_config, render_django, render_init

    target = Path(getattr(args, "config", None) or "launcher.toml")
    chosen = [w.strip() for w in (args.with_ or "").split(",") if w.strip()]
    django = find_django(target.parent, forced=chosen == ["django"]) if chosen in ([], ["django"]) else None
    if "django" in chosen and django is None:
        print("error: --with: django stands alone (it brings PostgreSQL and Redis); e.g. --with django",
              file=sys.stderr)
        return 2
    if args.with_ is None and django is None:
        chosen = ["postgres", "redis", "fastapi"]
    unknown = [c for c in chosen if c not in TEMPLATES]
    if django is None and (unknown or not chosen):
        print(f"error: --with: {'unknown template ' + ', '.join(map(repr, unknown)) if unknown else 'no template given'}; "
              f"choose from: {', '.join(TEMPLATES)}", file=sys.stderr)
        return 2
    if target.exists():
        print(f"error: {target} already exists; not overwriting it (remove it or pass --config NEW_PATH)",
              file=sys.stderr)
        return 2
    if django is not None:
        print(django.summary())
        if has_pytest_config(target.parent):
            print(f"note: pytest-django needs DJANGO_SETTINGS_MODULE = {django.settings} in your pytest settings")
    from ._containers import EngineNotFound, find_engine

    try:
        engine: str | None = find_engine().name
    except EngineNotFound:
        engine = None
    files = render_django(django, target) if django is not None else render_init(chosen, target, engine=engine)
    for path, text in files.items():
        if path.exists() and path != target:
            print(f"kept existing {path}")
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        if text.startswith("#!"):  # a script the config runs (bin/pg-init)
            path.chmod(0o755)
        print(f"wrote {path}")
    print(f"next: unified-launcher check --config {target}")
    if django is None and engine is not None and any(c in ("postgres", "redis") for c in chosen):
        print(f"{engine} is on PATH: the `containers` profile runs the database and cache from images "
              f"(pytest --launcher-profile=containers)")
    return 0


COMMANDS = {
    "check": cmd_check, "up": cmd_up, "status": cmd_status, "down": cmd_down, "port": cmd_address, "url": cmd_address,
    "bench": cmd_bench, "init": cmd_init,
}
