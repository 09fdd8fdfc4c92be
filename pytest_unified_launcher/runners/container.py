"""Image services: a container run by podman or docker (SPEC 8).

The container runs attached: ``podman run --rm ...`` is this runner's process, so everything a
process service has comes for free and works the same way. Its output (the container's, from
its first line) goes to the service's log with no ``logs`` polling; its exit is the container's
exit, seen through the same exit future and pidfd; the run record, the sentinel and
``--launcher-keep`` know it by its pid. What is container-specific: the image is pulled apart
(timed, so the waterfall shows pull time apart from start time), health probes reach the
published port (``exec`` probes run inside the container), and a stop signals the container's
process, after which the attached ``run --rm`` removes the container and exits (the engine is
asked to remove it only when that does not happen).
"""

from __future__ import annotations

import asyncio
import logging
import os
import shlex
from pathlib import Path
from typing import Any

from .. import _timing
from .._containers import (
    _DIGESTS, Engine, EngineNotFound, container_name, container_process, find_engine, image_digest, run_args,
)
from .._process import signal_if_same, spawn, start_time
from ..health import ExecTarget, HealthTimeout, ProbeUnusable, ProcessExited, make_probe, wait_healthy
from .subprocess import SubprocessRunner, describe_exit, port_holder

log = logging.getLogger(__name__)

#: What the engines print when an image is not there and ``--pull never`` forbids fetching it.
_NOT_PRESENT = ("image not known", "No such image", "Unable to find image", "manifest unknown")
#: The exit codes with which ``podman run``/``docker run`` speak for themselves, not the container.
_ENGINE_EXITS = {
    125: "the engine could not run the container (see its output below)",
    126: "the container's command cannot be run (not executable?)",
    127: "the container's command was not found in the image",
}


class ContainerRunner(SubprocessRunner):
    kind = "container"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.engine: Engine | None = None
        self.name = container_name(self.ctx.launcher_id, self.svc.name)
        #: Filled once the container runs: its id, its main process (host pid) and image digest.
        self.container_id: str | None = None
        self.image_digest: str | None = None
        self.pull_seconds: float | None = None
        self._main: tuple[int, str | None] | None = None
        self._started: asyncio.Future[None] | None = None
        self._probe: Any = None
        self._digest: asyncio.Future[str | None] | None = None

    @property
    def tcp_settle(self) -> float:
        """See :attr:`Engine.tcp_settle`."""
        return self.engine.tcp_settle if self.engine is not None else 0.0

    @property
    def exec_target(self) -> ExecTarget | None:
        """Where ``health.exec`` probes run: this container, through the engine."""
        return ExecTarget(self.engine.path, self.name, self._engine_env()) if self.engine is not None else None

    def resource_process(self) -> tuple[int, str | None] | None:
        """The container's main process (and what it started): what its resources are."""
        return self._main

    # ------------------------------------------------------------------ start

    def _engine_env(self) -> dict[str, str]:
        """The engine process's environment: the launcher's own and the markers that find it
        again, never the service's variables (those are the container's: ``PATH`` or
        ``LD_PRELOAD`` there must not change how root's engine runs on the host)."""
        from .._process import OWNER_VAR, SERVICE_VAR

        return {**self.ctx.base_env, OWNER_VAR: self.ctx.launcher_id, SERVICE_VAR: self.svc.name}

    def _write_env_file(self) -> None:
        """The container's variables, for ``--env-file``: private (0600, in the launcher's 0700
        log folder, never through a link), removed once the container runs."""
        from .._containers import env_file_text

        try:
            text = env_file_text(self.svc.env)
        except ValueError as exc:
            raise self._fail(f"{exc}; rename it or remove the line break") from None
        self._env_file.unlink(missing_ok=True)
        fd = os.open(self._env_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(text)

    def _make_mount_sources(self) -> None:
        """``${tmp}`` and the mount sources under it (the config could not require them)."""
        assert self.svc.container is not None
        try:
            self._prepare_tmp(None)
            for mount in self.svc.container.mounts:
                source = Path(mount.split(":", 1)[0])
                if source.is_absolute() and source.is_relative_to(self.svc.tmp) and not source.exists():
                    source.mkdir(mode=0o755, parents=True)
        except OSError as exc:
            raise self._fail(f"cannot prepare its temp dir {self.svc.tmp} ({exc})") from None

    async def start(self, deadline: float) -> None:
        svc = self.svc
        assert svc.container is not None
        try:
            self.engine = find_engine(self.ctx.container_engine, self.ctx.base_env)
        except EngineNotFound as exc:
            raise self._fail(str(exc)) from None
        self.ctx.on_engine(self.engine.name)  # on record before any container exists: reapable by label
        self._log_fd = self._open_log()
        self._make_mount_sources()
        for step in svc.setup:  # on the host, with the service's variables, as for a command
            await self._run_setup(step, self._env(), None, deadline)
        if svc.container.pull == "always":
            await self._pull(deadline)
        if svc.port is not None and not svc.task:
            from .._ports import is_free

            if not is_free(svc.host, svc.port):
                holder = port_holder(svc.port)
                err = self._fail(f"port {svc.port} already in use" + (f" by {holder}" if holder else "")
                                 + "; stop that process or choose another port")
                err.port_in_use = svc.port
                raise err
        await self._spawn(self._engine_env())

    async def _spawn(self, env: dict[str, str]) -> None:
        assert self.engine is not None and self._log_fd is not None
        for path in (self._cid_file, self._pid_file):
            path.unlink(missing_ok=True)  # the engine refuses to overwrite them (a restart's)
        self._write_env_file()
        argv = [self.engine.path, *run_args(self.svc, name=self.name, session=self.ctx.launcher_id,
                                              is_podman=self.engine.is_podman, env_file=self._env_file,
                                              cid_file=self._cid_file,
                                              pid_file=self._pid_file if self.engine.is_podman else None)]
        os.write(self._log_fd, f"$ {shlex.join(argv)}\n".encode())
        self.ctx.before_spawn()
        self.spawned_at = _timing.monotonic()
        self._spawning = asyncio.ensure_future(spawn(argv, env=env, cwd=self.svc.cwd, log_file=self._log_fd))
        try:
            # Shielded: if we are cancelled (Ctrl-C), the spawn still completes and stop() reaps it.
            self.proc = await asyncio.shield(self._spawning)
        except (FileNotFoundError, PermissionError) as exc:
            raise self._fail(f"cannot run the container engine {self.engine.path}: {exc.strerror}") from None
        self._token = start_time(self.proc.pid)
        self.ctx.on_spawn(self.svc.name, self.proc.pid)
        self._exited = asyncio.ensure_future(self.proc.wait())
        self._started = asyncio.ensure_future(self._wait_started())
        if self._digest is None:
            self._digest = asyncio.ensure_future(image_digest(self.engine, self.svc.container.image))  # type: ignore[union-attr]

    async def _pull(self, deadline: float) -> None:
        """``engine pull IMAGE``, timed apart; its output goes to the log."""
        assert self.engine is not None and self.svc.container is not None and self._log_fd is not None
        image = self.svc.container.image
        os.write(self._log_fd, f"$ {self.engine.name} pull {image}\n".encode())
        t0 = _timing.monotonic()
        try:
            code, out = await self.engine.run("pull", image, timeout=max(1.0, deadline - t0))
        except TimeoutError:
            raise self._fail(f"pulling image {image} did not finish within {self.svc.startup_timeout:.1f} s; "
                             f"pull it before the run ({self.engine.name} pull {image}) or raise startup_timeout",
                             timeout=self.svc.startup_timeout) from None
        self.pull_seconds = (self.pull_seconds or 0.0) + _timing.monotonic() - t0
        _DIGESTS.pop((self.engine.path, image), None)  # the pull may have brought a newer one
        self._digest = None
        os.write(self._log_fd, (out + "\n").encode())
        if code != 0:
            raise self._fail(f"cannot pull image {image} ({self.engine.name} pull exited with code {code}); "
                             "check the name and tag, the network, and the registry login "
                             f"({self.engine.name} login)")

    @property
    def _cid_file(self) -> Path:
        return self.ctx.log_dir / f"{self.svc.log_name}.cid"

    @property
    def _pid_file(self) -> Path:
        return self.ctx.log_dir / f"{self.svc.log_name}.pid"

    @property
    def _env_file(self) -> Path:
        return self.ctx.log_dir / f"{self.svc.log_name}.env"

    async def _wait_started(self) -> None:
        """Until the container's process runs (or the engine exits): its id and host pid.

        podman writes the pid file once the container's process has started: watching for it
        costs a stat every few milliseconds, where asking ``inspect`` in a loop would start an
        engine process each time, competing for the cores with the container starting up.
        docker has no pid file: it is asked until the container runs.
        """
        assert self.engine is not None
        delay = 0.002
        while self.alive():
            pid = _read_int(self._pid_file) if self.engine.is_podman else await self._inspect_pid()
            # Not taken on the pid file's word: the pid may already name another process.
            container_id = _read_text(self._cid_file)
            main = container_process(pid, container_id) if pid else None
            if main is not None:
                self._main, self.container_id = main, container_id
                self._env_file.unlink(missing_ok=True)  # read when the container was created
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.01 if self.engine.is_podman else 0.05)

    async def _inspect_pid(self) -> int | None:
        assert self.engine is not None
        code, out = await self.engine.run("container", "inspect", "--format", "{{.State.Pid}}", self.name,
                                          timeout=10.0)
        return int(out) if code == 0 and out.isdigit() and int(out) > 0 else None

    # ------------------------------------------------------------------ readiness

    async def wait_ready(self, deadline: float) -> None:
        assert self.proc is not None and self._exited is not None
        try:
            await self._wait_ready(deadline)
        except ProcessExited as exc:
            if exc.code == 125 and self._image_missing() and self.svc.container.pull == "missing":  # type: ignore[union-attr]
                await self._pull(deadline)  # pulled, then started again: not an attempt of its own
                self.ctx.on_exit(self.svc.name, self.proc.pid)
                await self._spawn(self._engine_env())
                try:
                    await self._wait_ready(deadline)
                except ProcessExited as again:
                    raise self._exited_error(again.code) from None
            else:
                raise self._exited_error(exc.code) from None
        if self._digest is not None:  # asked while the container started: done long before
            done, _ = await asyncio.wait({self._digest}, timeout=max(0.0, deadline - _timing.monotonic()))
            self.image_digest = self._digest.result() if done else None

    async def _wait_ready(self, deadline: float) -> None:
        assert self._exited is not None
        timeout = self.svc.startup_timeout
        if self.svc.task:
            code = await self._task_exit(deadline)
            if code != 0:
                raise ProcessExited(code)  # said as a container's exit, by wait_ready
            return
        # Probes start once the container runs: creating it takes a few hundred milliseconds,
        # which would spend the probe budget (10 a second) on an engine still at work, and
        # "alive for 0.5 s" counts from the container's start (a command missing from the image
        # fails only then).
        assert self._started is not None
        waiting: set[asyncio.Future[Any]] = {self._started, self._exited}
        await asyncio.wait(waiting, timeout=max(0.0, deadline - _timing.monotonic()),
                           return_when=asyncio.FIRST_COMPLETED)
        if self._exited.done():
            raise ProcessExited(self.exit_code)
        started = _timing.monotonic()
        probe = self._probe = make_probe(self.svc, self.svc.health, log_path=self.log_path, env=self._env(),
                                         spawned_at=started, container=self.exec_target, tcp_settle=self.tcp_settle)
        try:
            await wait_healthy(probe, deadline=deadline, timeout=timeout, exited=self._exited,
                               exit_code=lambda: self.exit_code, log_path=self.log_path, rate=self.probe_rate)
        except HealthTimeout as exc:
            raise self._health_timeout(exc.timeout, exc.last) from None
        except ProbeUnusable as exc:
            raise self._probe_unusable(exc) from None

    def _image_missing(self) -> bool:
        tail = self.logs(5)
        return any(marker in tail for marker in _NOT_PRESENT)

    def _exited_error(self, code: int | None) -> Exception:
        assert self.svc.container is not None and self.engine is not None
        image = self.svc.container.image
        if code == 125 and self._image_missing():
            return self._fail(f"image {image} is not present and pull = \"never\"; pull or build it first "
                              f"({self.engine.name} pull {image}), or set pull = \"missing\"", exit_code=code)
        if code == 125 and "Cannot connect to the Docker daemon" in self.logs(5):
            return self._fail("the docker daemon is not running: start it (systemctl start docker), or use "
                              "podman (container_engine = \"podman\")", exit_code=code)
        meaning = _ENGINE_EXITS.get(code) if code is not None else None
        what = "container " + describe_exit(code) + (f": {meaning}" if meaning else "")
        if code == 0 and not self.svc.task:
            what += (" before it was ready: its command must keep running in the foreground (a one-shot "
                     "job: set task = true)")
        return self._fail(what, exit_code=code)

    # ------------------------------------------------------------------ stop

    async def stop(self) -> None:
        """Stop the container, remove it, and end the engine process.

        The usual way needs no engine call: its stop signal goes straight to the container's
        main process (its host pid, checked by start time), and the attached ``podman run
        --rm`` removes the container and exits once that process has. Only when that does not
        happen within ``stop_timeout`` (or the container never ran) does the engine stop and
        remove it (``rm --force``: kill).
        """
        if self._started is not None:
            self._started.cancel()
        waited = False  # the stop signal and its grace were given already
        if self._main is not None and self.proc is not None and self.proc.returncode is None \
                and signal_if_same(*self._main, self.svc.stop_signal):
            waited = True
            try:
                async with asyncio.timeout(self.svc.stop_timeout):
                    await asyncio.shield(self.proc.wait())
            except TimeoutError:
                log.warning("%s: its container still ran %.1f s after signal %d: killing it", self.svc.name,
                            self.svc.stop_timeout, self.svc.stop_signal)
        # The engine process ended by itself after the container's exit (``--rm`` removed it),
        # or after our signal: nothing left. Otherwise (never ran, still running, the engine
        # failed or was killed: the container may live on) the engine removes it.
        code = self.proc.returncode if self.proc is not None else None
        if code is None or code < 0 or code == 125:
            await self._remove(grace=0 if waited else None)
        for path in (self._cid_file, self._pid_file, self._env_file):
            path.unlink(missing_ok=True)
        if hasattr(self._probe, "close"):  # the startup's exec probe, if one outlived its timeout
            await self._probe.close()
        await super().stop()

    async def _remove(self, grace: float | None = None) -> None:
        """The engine's stop and removal (``grace``, default ``stop_timeout``, then kill)."""
        engine = self.engine
        if engine is not None and (self.proc is not None or self._spawning is not None):
            code, out = await engine.remove(self.name, grace=self.svc.stop_timeout if grace is None else grace,
                                            timeout=self.svc.stop_timeout + 30)
            if code != 0:
                log.warning("%s: removing its container %s failed: %s", self.svc.name, self.name, out)


def _read_text(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def _read_int(path: Path) -> int | None:
    text = _read_text(path)
    return int(text) if text.isdigit() and int(text) > 0 else None
