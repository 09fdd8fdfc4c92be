"""The plugin's xdist and end-of-session roles: which process is the controller, a worker or a
plain session, what the controller tells its workers, and how each one ends its session
(stop, keep, hand over) and merges the workers' reports. Only the plugin imports this.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from .errors import ConfigError, LauncherError

if TYPE_CHECKING:
    from .config import LauncherConfig
    from .orchestrator import UnifiedLauncher
    from .plugin import _Session
    from .xdist import SharedEnvironment


def xdist_workers(namespace: Any) -> int:
    """How many xdist workers this run will have (2 standing for "several, not known yet").

    As xdist decides it: a run is distributed when it has workers to go to (``-n``, or
    ``--tx``), whatever ``--dist`` says: ``addopts = --dist loadfile`` without ``-n`` runs in
    this process, which must then be the single session, not a controller waiting for workers.
    """
    n = getattr(namespace, "numprocesses", None)
    if isinstance(n, str):
        return 2  # "auto" / "logical": resolved later, assume several
    if n:
        return int(n)
    if getattr(namespace, "tx", None) and getattr(namespace, "dist", "no") not in (None, "no"):
        return 2  # --tx 3*popen ...: a number of its own spelling
    return 0


def assign_role(
    session: _Session, lconfig: LauncherConfig, *, in_worker: bool, payload: dict[str, Any] | None, namespace: Any
) -> None:
    """single, xdist controller or xdist worker; a shared controller tells its workers (by
    environment, which they inherit) the ports and folders of the one environment."""
    from .xdist import SharedEnvironment, controller_payload

    if in_worker:
        session.role = "worker"
        if payload is not None and lconfig.xdist == "shared":
            session.shared = SharedEnvironment(Path(payload["folder"]))
            session.shared_payload = payload
        return
    workers = xdist_workers(namespace)
    if workers < 1:
        return
    session.role = "controller"
    claim_logs_for_workers(session, lconfig)
    if lconfig.xdist == "per_worker" and session.keep and not session.attach:
        raise pytest.UsageError(
            "--launcher-keep with --launcher-xdist=per_worker: every worker has an environment of its "
            "own, and one can be kept; use --launcher-xdist=shared (one environment for all workers)"
        )
    if lconfig.xdist == "per_worker" and workers > 1:
        fixed = sorted(n for n, s in lconfig.services.items() if s.port is not None and not s.port_auto and s.kind != "url")
        if fixed:
            count = "several" if isinstance(namespace.numprocesses, str) else str(workers)
            raise pytest.UsageError(str(ConfigError(
                f"fixed port {lconfig.services[fixed[0]].port} cannot be used with xdist = per_worker "
                f"and {count} workers: every worker would bind it",
                source=str(lconfig.source), service=fixed[0], key="port",
                fix='use port = "auto" (or remove port), or --launcher-xdist=shared',
            )))
    if lconfig.xdist == "shared":
        folder = lconfig.tmp_root.parent / f"{lconfig.tmp_root.name}-xdist"
        os.environ["UNIFIED_LAUNCHER_SHARED"] = controller_payload(
            config_path=lconfig.source, ports=lconfig.ports, tmp_root=lconfig.tmp_root, folder=folder
        )
        session.shared = SharedEnvironment(folder)
        _watch_controller(session, lconfig)
        if session.attach:
            from ._state import StateDirError

            try:
                session.up_pids = share_up_services(session.shared, lconfig.state_dir)
            except StateDirError as exc:
                raise pytest.UsageError(str(exc)) from None


def _watch_controller(session: _Session, lconfig: LauncherConfig) -> None:
    """Record the shared environment's scratch roots (its ``-xdist`` folder included) under the
    controller's name and arm a sentinel: a controller killed before any worker recorded a
    service left them behind (the workers' records name the controller, but there were none)."""
    from ._sentinel import Sentinel
    from ._state import StateFile

    record_id = f"xdist-controller-{os.getpid()}"
    session.controller_record = StateFile(lconfig.state_dir, record_id, tmp_root=lconfig.tmp_root)
    session.controller_record.write()
    session.controller_sentinel = Sentinel(lconfig.state_dir, record_id,
                                           log_path=session.log_dir / "_sentinel.log" if session.log_dir else None)
    session.controller_sentinel.arm()


def _unwatch_controller(session: _Session) -> None:
    """The controller ends normally: its record goes first, so no reap takes the kept folders."""
    if session.controller_record is not None:
        session.controller_record.close()
        session.controller_sentinel.disarm()
        session.controller_record = session.controller_sentinel = None


#: The log folder the xdist controller claimed for its workers (they inherit it).
LOGS_VAR = "UNIFIED_LAUNCHER_LOGS"


def claim_logs_for_workers(session: _Session, lconfig: LauncherConfig) -> None:
    """One log folder for this xdist session's environment(s), held for the session: `logs/`, or
    `logs/<id>/` while another session holds that. Shared workers write there, per_worker ones
    in `<it>/gw0/`, `<it>/gw1/`... (two sessions of one project replaced each other's logs)."""
    from ._state import claim_log_dir, ensure_state_dir

    try:
        ensure_state_dir(lconfig.state_dir, source=str(lconfig.source))
        session.log_dir, session.log_lock = claim_log_dir(lconfig.state_dir / "logs", f"xdist-{os.getpid()}")
    except ConfigError as exc:
        raise pytest.UsageError(str(exc)) from None
    except OSError as exc:
        raise pytest.UsageError(f"cannot write the launcher's logs under {lconfig.state_dir} ({exc.strerror}); "
                                "set [launcher] state_dir to a writable folder") from None
    os.environ[LOGS_VAR] = str(session.log_dir)


def share_up_services(shared: SharedEnvironment, state_dir: Path) -> dict[str, int | None]:
    """Attached under xdist: record `up`'s services as the shared environment's, so that the
    workers adopt them (a worker that found them missing from the record stopped them).
    Returns their pids, which the controller leaves alone at the end."""
    from ._up import read_up_record

    services = {name: entry for name, entry in read_up_record(state_dir)["services"].items()
                if entry.get("state") in ("running", "completed")}
    shared.write({name: {"state": entry["state"], "pid": entry.get("pid"), "token": entry.get("token")}
                  for name, entry in services.items()})
    return {name: entry.get("pid") for name, entry in services.items()}


def _up_pids(state_dir: Path) -> set[int | None]:
    """The pids `up` runs now (a worker may have had it restart one since the session began)."""
    from ._up import read_up_record

    try:
        return {entry.get("pid") for entry in read_up_record(state_dir)["services"].values()}
    except LauncherError:
        return set()


def keep(state: _Session, launcher: UnifiedLauncher) -> None:
    """Leave the services running, recorded for `unified-launcher down` (--launcher-keep)."""
    from ._up import write_up_record

    path = write_up_record(launcher)
    state.keep_message = (
        f"services left running (--launcher-keep); stop them with: "
        f"unified-launcher down --config {launcher.config.source}  (state: {path})"
    )
    launcher.forget()


def finish_worker(config: pytest.Config, state: _Session) -> None:
    launcher = state.launcher
    if launcher is not None:
        report = launcher.report()
        if state.shared is not None:
            # The controller stops the shared environment; until it has, the worker's run file
            # (owned by the controller) and sentinel stay, so that a kill of the controller reaps.
            launcher.forget(keep_record=not (state.keep or state.attach))
        else:
            launcher.stop_blocking()
            report = launcher.report()
        workeroutput = getattr(config, "workeroutput", None)
        if workeroutput is not None:
            workeroutput["unified_launcher_report"] = json.dumps(report)


def finish_controller(state: _Session) -> None:
    """After the last worker: stop the shared environment, or keep it (--launcher-keep), or,
    attached to `up`, stop only what the workers started themselves."""
    _unwatch_controller(state)
    if state.shared is None or state.lconfig is None:
        return
    import sys

    from ._state import StateDirError, reap
    from .config import SHARED_WORKERS, remove_scratch
    from .orchestrator import UnifiedLauncher

    if state.keep or state.attach:
        reap(state.lconfig.state_dir, owner_pid=os.getpid())  # only what crashed workers left
    try:
        record = state.shared.read()
    except StateDirError as exc:  # planted by another user: nothing in it is adopted or stopped
        sys.stderr.write(f"unified-launcher: {exc}\n")
        record = {}
    launcher = UnifiedLauncher(state.lconfig, subprocess_apps_because=SHARED_WORKERS, log_dir=state.log_dir)
    up_now = _up_pids(state.lconfig.state_dir) if state.attach else set()
    for name, entry in record.items():
        if name not in launcher.services or entry.get("state") not in ("running", "completed"):
            continue
        if state.attach and entry.get("pid") in up_now | {state.up_pids.get(name)}:
            continue  # `up`'s own process (also one a test had `up` restart): never ours to stop
        launcher.adopt(name, pid=entry.get("pid"), token=entry.get("token"),
                       completed=entry["state"] == "completed")
    state.shared.remove()
    if state.keep and not state.attach:
        keep(state, launcher)  # their ${tmp} stays too: `down` removes it
        return
    if state.attach:
        # The temp root is `up`'s (placeholders name its addresses): it stays with `up`.
        launcher.stop_blocking([n for n, h in launcher.services.items() if h.state != "stopped"])
        state.teardown_report = launcher.report()
        return
    launcher.stop_blocking()
    state.teardown_report = launcher.report()
    reap(state.lconfig.state_dir, owner_pid=os.getpid())
    remove_scratch(state.lconfig.tmp_root)


def combined_report(state: _Session) -> dict[str, Any] | None:
    """This session's report; on the xdist controller, the workers' runs merged into one."""
    if state.role != "controller":
        return state.launcher.report() if state.launcher is not None else None
    if not state.worker_reports:
        return None
    from .report import RunTiming, build_report, merge_health, timing_from_json

    merged = RunTiming()
    for rep in state.worker_reports:
        for run in rep["runs"]:
            merged.total_startup_seconds += run["total_startup_seconds"]
            for name, s in run["services"].items():
                # A worker that started it wins over one that saw it fail or never start it.
                known = merged.services.get(name)
                if known is None or (known.startup_seconds is None and s["startup_seconds"] is not None):
                    merged.services[name] = timing_from_json(s)
                elif s.get("died") or s.get("interrupted"):  # any worker that saw it die or cut short says so
                    known.died = known.died or s.get("died")
                    known.interrupted = known.interrupted or s.get("interrupted", False)
    teardown = state.teardown_report
    if teardown and teardown["runs"]:
        run = teardown["runs"][-1]
        merged.total_teardown_seconds = run["total_teardown_seconds"]
        for name, s in run["services"].items():
            if name in merged.services:
                merged.services[name].teardown_seconds = s["teardown_seconds"]
                merged.services[name].died = merged.services[name].died or s.get("died")
    first = state.worker_reports[0]
    if state.shared is None:
        # per_worker: every worker had its own environment; each one's startup counts once.
        runs = [run for rep in state.worker_reports for run in rep["runs"]]
        merged.total_startup_seconds = max((run["total_startup_seconds"] for run in runs), default=0.0)
        # ... and they stopped side by side: the slowest teardown is the session's (it was missing).
        teardowns = [run["total_teardown_seconds"] for run in runs if run.get("total_teardown_seconds") is not None]
        merged.total_teardown_seconds = max(teardowns) if teardowns else None
    resets: dict[str, list[float]] = {}
    for rep in state.worker_reports:
        for name, r in (rep.get("resets") or {}).items():
            resets.setdefault(name, []).extend(r["seconds"])
    health, resources = merge_health(state.worker_reports, shared=state.shared is not None)
    return build_report(
        [merged], profile=first["profile"], mode=first["mode"], mode_reason=first["mode_reason"],
        budget_seconds=first["budget_seconds"], resets=resets, health=health, resources=resources,
    )
