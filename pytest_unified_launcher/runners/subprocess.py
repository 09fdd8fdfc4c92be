"""Subprocess services: ``command`` services, tasks, and app services in multi_process mode."""

from __future__ import annotations

import asyncio
import logging
import os
import shlex
import signal
import stat
import sys
from pathlib import Path
from typing import Any

from .. import _timing
from .._process import (
    Cgroup,
    cannot_run,
    marked_pids,
    process_token,
    run_to_end,
    spawn,
    start_time,
    stop_marked,
    stop_process,
    user_ids,
)
from ..errors import ServiceStartupError
from ..health import HealthTimeout, NotifySocket, ProbeUnusable, ProcessExited, make_probe, wait_healthy
from . import Runner

log = logging.getLogger(__name__)


def describe_exit(code: int | None) -> str:
    if code is None:
        return "exited"
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


def port_holder(port: int) -> str:
    """Best effort: which process listens on ``port`` ("pid 123 (redis-server)")."""
    try:
        import psutil

        for conn in psutil.net_connections(kind="inet"):
            if conn.laddr and conn.laddr.port == port and conn.status == psutil.CONN_LISTEN and conn.pid:
                return f"pid {conn.pid} ({psutil.Process(conn.pid).name()})"
    except Exception:
        pass
    return ""


class ForeignFolder(OSError):
    """A scratch folder that is not provably ours (another user's, a link, writable by others)."""


def _verify_own_dir(path: Path) -> None:
    st = os.lstat(path)
    _verify_stat(st, path)


def _verify_own_fd(fd: int, path: Path) -> None:
    _verify_stat(os.fstat(fd), path)


def _verify_stat(st: os.stat_result, path: Path) -> None:
    if not stat.S_ISDIR(st.st_mode):
        raise ForeignFolder(f"its temp dir's root {path} exists and is not a folder the launcher made")
    if st.st_uid != os.geteuid():
        raise ForeignFolder(f"its temp dir's root {path} already exists, owned by uid {st.st_uid}, not the launcher")
    if st.st_mode & 0o022:
        raise ForeignFolder(f"its temp dir's root {path} is writable by others")


def _chown_ours(parent_fd: int, name: str, ids: tuple[int, int]) -> None:
    """Give ``name`` (under ``parent_fd``) and what we own below it to the service user.

    Folders are opened with O_NOFOLLOW relative to their parent and handed over through their
    fd; a link is never followed (its own owner is changed, harmlessly), a file with other
    names (a hard link) or a folder that is not ours is left alone.
    """
    try:
        fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=parent_fd)
    except OSError:
        return  # not a folder (or gone): nothing to walk
    try:
        st = os.fstat(fd)
        if st.st_uid == ids[0]:
            return  # already the service's: what it made below is its own
        if st.st_uid != os.geteuid() or st.st_mode & 0o022:
            return
        for entry in os.listdir(fd):
            try:
                est = os.stat(entry, dir_fd=fd, follow_symlinks=False)
            except OSError:
                continue
            if stat.S_ISDIR(est.st_mode):
                _chown_ours(fd, entry, ids)
            elif est.st_uid == os.geteuid() and (stat.S_ISLNK(est.st_mode) or est.st_nlink == 1):
                os.chown(entry, *ids, dir_fd=fd, follow_symlinks=False)
        os.fchown(fd, *ids)
    finally:
        os.close(fd)


class SubprocessRunner(Runner):
    kind = "subprocess"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.proc: Any = None  # asyncio.subprocess.Process, or a forked RemoteProcess
        self._token: str | None = None  # the process's start time at spawn: pids get reused
        self._cgroup: Cgroup | None = None
        self._spawning: asyncio.Future[Any] | None = None
        self._exited: asyncio.Future[int] | None = None
        self._log_fd: int | None = None
        self._ready = asyncio.Event()
        self._ready_fd: int | None = None
        self._notify: NotifySocket | None = None

    # ------------------------------------------------------------------ properties

    @property
    def token(self) -> str | None:
        return self._token

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def log_path(self) -> Path:
        return self.ctx.log_dir / self.svc.log_name

    @property
    def exit_code(self) -> int | None:
        return self.proc.returncode if self.proc else None

    def alive(self) -> bool:
        # A process that has ended is not alive even before the child watcher has collected its
        # status (a zombie, or reaped by the watcher's thread and not yet reported to the loop):
        # a failing test's report must show a service killed a moment before as dead.
        return self.proc is not None and self.proc.returncode is None and process_token(self.proc.pid) != "?"

    async def collected(self, timeout: float) -> None:
        if self._exited is not None and not self._exited.done():
            await asyncio.wait({self._exited}, timeout=timeout)

    # ------------------------------------------------------------------ start

    def _env(self) -> dict[str, str]:
        return self.ctx.service_env(self.svc)

    def _argv(self, ready_fd: int | None) -> list[str]:
        if self.svc.kind != "app":
            return list(self.svc.command)
        assert self.svc.app and self.svc.port is not None
        argv = [
            sys.executable, "-m", "pytest_unified_launcher._serve", "--app", self.svc.app,
            "--host", self.svc.host, "--port", str(self.svc.port), "--app-dir", str(self.ctx.root),
            "--log-level", self.ctx.log_level,
        ]
        if self.svc.interface:
            argv += ["--interface", self.svc.interface]
        if ready_fd is not None:
            argv += ["--ready-fd", str(ready_fd)]
        return argv

    def _fail(self, cause: str, **kwargs: Any) -> ServiceStartupError:
        return ServiceStartupError(self.svc.name, cause, log_tail=self.logs(20), **kwargs)

    def _prepare_tmp(self, ids: tuple[int, int] | None) -> None:
        """Create the session's scratch root and this service's ``${tmp}`` in it, safely.

        The root's name is predictable (``/dev/shm/ul-<id>`` twins ``/tmp/ul-<id>``) and its
        parent is world-writable, so a root that another user planted (or a link) is refused:
        only a folder of ours that nobody else can write is used. Inside it nothing can be
        planted, but on a restart ``${tmp}`` holds what the service user wrote, so the walk that
        hands our entries to that user never follows a link, a hard link or a foreign folder.
        """
        root = self.svc.tmp.parent
        try:
            os.mkdir(root, 0o711)
        except FileExistsError:
            pass
        _verify_own_dir(root)
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        try:
            _verify_own_fd(fd, root)
            os.fchmod(fd, 0o711)
            try:
                os.mkdir(self.svc.tmp.name, 0o700, dir_fd=fd)
            except FileExistsError:
                pass  # a restart: the folder we made (nobody else can write the root)
            if ids is not None:
                _chown_ours(fd, self.svc.tmp.name, ids)
        finally:
            os.close(fd)

    async def start(self, deadline: float) -> None:
        svc = self.svc
        try:
            ids = user_ids(svc.user)
        except LookupError as exc:
            raise self._fail(f"{exc}; create it or remove user = ...") from None
        self._log_fd = self._open_log()
        try:
            self._prepare_tmp(ids)
        except ForeignFolder as exc:
            raise self._fail(f"{exc}; remove it (another user may have planted it) or set TMPDIR elsewhere") from None
        except OSError as exc:
            raise self._fail(f"cannot prepare its temp dir {svc.tmp} ({exc.strerror})") from None
        if not svc.cwd.is_dir():  # else spawning fails with "not found", which names the command
            what = "is not a folder" if svc.cwd.exists() else "does not exist"
            raise self._fail(f"its working directory {svc.cwd} {what}; create it or fix the service's cwd = ...")
        env = self._env()
        for step in svc.setup:
            await self._run_setup(step, env, ids, deadline)
        if svc.port is not None and not svc.task:
            from .._ports import is_free

            if not is_free(svc.host, svc.port):
                holder = port_holder(svc.port)
                err = self._fail(
                    f"port {svc.port} already in use" + (f" by {holder}" if holder else "")
                    + "; stop that process or choose another port"
                )
                err.port_in_use = svc.port
                raise err
        pass_fds: list[int] = []
        write_fd = None
        if svc.kind == "app":
            self._ready_fd, write_fd = os.pipe()
            pass_fds.append(write_fd)
            asyncio.get_running_loop().add_reader(self._ready_fd, self._on_ready_pipe)
        if svc.health.kind == "notify":
            try:
                self._notify = NotifySocket(svc.tmp.parent, svc.name, ids=ids)
            except OSError as exc:
                raise self._fail(f"cannot create its NOTIFY_SOCKET under {svc.tmp.parent} ({exc})") from None
            env["NOTIFY_SOCKET"] = str(self._notify.path)
        self.spawned_at = _timing.monotonic()
        forkserver = self.ctx.forkserver
        if svc.kind == "app" and forkserver is not None and ids is None and write_fd is not None \
                and await forkserver.wait_ready(max(0.0, deadline - _timing.monotonic())):
            self.spawned_at = _timing.monotonic()
            self._spawning = asyncio.ensure_future(forkserver.spawn(
                self._argv(None)[3:], env=env, cwd=svc.cwd, log_fd=self._log_fd, ready_fd=write_fd))
        else:
            self.ctx.before_spawn()  # the sentinel watches before the process exists
            self._cgroup = Cgroup.create()
            self._spawning = asyncio.ensure_future(spawn(
                self._argv(write_fd), env=env, cwd=svc.cwd, log_file=self._log_fd, ids=ids, pass_fds=pass_fds,
                cgroup=self._cgroup))
        try:
            # Shielded: if we are cancelled (Ctrl-C), the spawn still completes and stop() reaps it.
            self.proc = await asyncio.shield(self._spawning)
        except (FileNotFoundError, PermissionError) as exc:
            self._drop_cgroup()
            raise self._fail(cannot_run("command", self._argv(None)[0], exc, svc.cwd)) from None
        except ConnectionError as exc:
            self._drop_cgroup()
            raise self._fail(f"{exc}; set [launcher] spawner = \"plain\" to spawn apps directly") from None
        finally:
            if write_fd is not None:
                os.close(write_fd)
        self._token = getattr(self.proc, "token", None) or start_time(self.proc.pid)
        # On record first: until then only its cgroup's "new" name (this launcher's pid) finds it.
        self.ctx.on_spawn(svc.name, self.proc.pid)
        if self._cgroup is not None:
            await self._cgroup.name_after(self.proc.pid, self._token)
        else:  # a forked app: it joins now (it forks nothing before its app is imported)
            self._cgroup = Cgroup.adopt(self.proc.pid, self._token)
        self._exited = asyncio.ensure_future(self.proc.wait())

    async def _run_setup(
        self, step: tuple[str, ...], env: dict[str, str], ids: tuple[int, int] | None, deadline: float
    ) -> None:
        assert self._log_fd is not None
        os.write(self._log_fd, f"$ {shlex.join(step)}\n".encode())
        try:
            code = await run_to_end(
                step, env=env, cwd=self.svc.cwd, log_file=self._log_fd, ids=ids,
                timeout=max(0.0, deadline - _timing.monotonic()),
                on_spawn=lambda pid: self.ctx.on_spawn(self.svc.name, pid),
                on_exit=lambda pid: self.ctx.on_exit(self.svc.name, pid),
                stop_timeout=self.svc.stop_timeout,
            )
        except (FileNotFoundError, PermissionError) as exc:
            raise self._fail(cannot_run("setup command", step[0], exc, self.svc.cwd)) from None
        except TimeoutError:
            raise self._fail(
                f"setup command `{shlex.join(step)}` did not finish within {self.svc.startup_timeout:.1f} s",
                timeout=self.svc.startup_timeout,
            ) from None
        if code != 0:
            raise self._fail(f"setup command `{shlex.join(step)}` {describe_exit(code)}", exit_code=code)

    async def _run_stop_command(self) -> None:
        """``stop_command`` (e.g. ``redis-cli shutdown``), then the exit it asks for, both within
        ``stop_timeout``; whatever happens, :func:`stop_process` follows (its signal reaches only a
        process still running). A failure is logged, never raised: the stop goes on."""
        assert self.proc is not None
        argv = self.svc.stop_command
        deadline = _timing.monotonic() + self.svc.stop_timeout
        if self._log_fd is not None:
            os.write(self._log_fd, f"$ {shlex.join(argv)}\n".encode())
        try:
            code = await run_to_end(
                argv, env=self._env(), cwd=self.svc.cwd, ids=user_ids(self.svc.user),
                log_file=self._log_fd if self._log_fd is not None else asyncio.subprocess.DEVNULL,
                timeout=self.svc.stop_timeout, stop_timeout=min(2.0, self.svc.stop_timeout),
            )
        except (OSError, TimeoutError) as exc:
            problem = (f"stop_command did not finish within {self.svc.stop_timeout:.1f} s"
                       if isinstance(exc, TimeoutError) else cannot_run("stop_command", argv[0], exc, self.svc.cwd))
            log.warning("%s: %s; sending signal %d", self.svc.name, problem, self.svc.stop_signal)
            return
        if code != 0:
            log.warning("%s: stop_command `%s` %s; sending signal %d", self.svc.name, shlex.join(argv),
                        describe_exit(code), self.svc.stop_signal)
            return
        try:
            async with asyncio.timeout(max(0.0, deadline - _timing.monotonic())):
                await asyncio.shield(self.proc.wait())
        except TimeoutError:
            log.warning("%s: still running %.1f s after its stop_command; sending signal %d", self.svc.name,
                        self.svc.stop_timeout, self.svc.stop_signal)

    def _drop_cgroup(self) -> None:
        if self._cgroup is not None:
            self._cgroup.remove()
            self._cgroup = None

    def _on_ready_pipe(self) -> None:
        assert self._ready_fd is not None
        try:
            data = os.read(self._ready_fd, 64)
        except OSError:
            data = b""
        if data.startswith(b"ready"):
            self._ready.set()
        self._close_ready_pipe()

    def _close_ready_pipe(self) -> None:
        if self._ready_fd is not None:
            try:
                asyncio.get_running_loop().remove_reader(self._ready_fd)
            except RuntimeError:
                pass
            os.close(self._ready_fd)
            self._ready_fd = None

    # ------------------------------------------------------------------ readiness

    async def _task_exit(self, deadline: float) -> int:
        """A task's exit code, once it exited (or the startup error of one that did not in time)."""
        assert self._exited is not None
        timeout = self.svc.startup_timeout
        try:
            async with asyncio.timeout(max(0.0, deadline - _timing.monotonic())):
                return await asyncio.shield(self._exited)
        except TimeoutError:
            raise self._fail(f"task did not finish within {timeout:.1f} s", timeout=timeout) from None

    async def wait_ready(self, deadline: float) -> None:
        assert self.proc is not None and self._exited is not None
        timeout = self.svc.startup_timeout
        if self.svc.task:
            code = await self._task_exit(deadline)
            if code != 0:
                raise self._fail(describe_exit(code), exit_code=code)
            return
        signals: tuple[asyncio.Event, ...] = ()
        waiting_for = None  # what the timeout message says when the signal never came
        if self.svc.kind == "app":
            signals = (self._ready,)
            waiting_for = "the app never started listening (still importing, or stuck in its lifespan startup?)"
        if self._notify is not None:
            signals = (self._notify.ready,)
            waiting_for = ("no READY=1 on NOTIFY_SOCKET: the program must speak sd_notify "
                           "(e.g. redis-server --supervised systemd; PostgreSQL built with systemd support)")
        probe = make_probe(
            self.svc, self.svc.health, log_path=self.log_path,
            env=self._env(), spawned_at=self.spawned_at or _timing.monotonic(), notify=self._notify,
        )
        try:
            if signals:
                await self._wait_signal(signals[0], deadline)
            await wait_healthy(
                probe, deadline=deadline, timeout=timeout, exited=self._exited,
                exit_code=lambda: self.exit_code, signals=signals, log_path=self.log_path,
                not_probed=waiting_for if signals and not signals[0].is_set() else None,
                rate=self.probe_rate,
            )
        except ProcessExited as exc:
            raise self._fail(describe_exit(exc.code) + self._exit_hint(exc.code), exit_code=exc.code) from None
        except HealthTimeout as exc:
            raise self._health_timeout(exc.timeout, exc.last) from None
        except ProbeUnusable as exc:
            raise self._probe_unusable(exc) from None

    def _exit_hint(self, code: int | None) -> str:
        """What an exit during startup means: an app's entry point says why it gave up; a command
        that exits 0 before it is ready is wrong, and the fix."""
        if self.svc.kind == "app":
            from .._serve import EXIT_MEANINGS

            meaning = EXIT_MEANINGS.get(code) if code is not None else None
            return f" ({meaning})" if meaning else ""
        if code != 0 or self.svc.task:
            return ""
        hint = (" before it was ready: a service's command must keep running in the foreground (if it"
                " daemonizes, turn that off, e.g. redis-server --daemonize no; a one-shot job: set task = true)")
        escaped = marked_pids(self.ctx.launcher_id, self.svc.name)
        if escaped:
            hint += f"; it left pid {', '.join(map(str, escaped))} in the background, which is stopped now"
        return hint

    async def _wait_signal(self, event: asyncio.Event, deadline: float) -> None:
        """Wait for the ready pipe / READY=1 (no polling), the process's exit, or the deadline."""
        assert self._exited is not None
        waiter: asyncio.Future[Any] = asyncio.ensure_future(event.wait())
        exited: asyncio.Future[Any] = self._exited
        try:
            await asyncio.wait(
                {waiter, exited}, timeout=max(0.0, deadline - _timing.monotonic()),
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            waiter.cancel()

    # ------------------------------------------------------------------ stop

    def detach(self) -> None:
        """Leave the process running; close only what this process holds."""
        self._close_ready_pipe()
        if self._notify is not None:
            self._notify.close()
            self._notify = None
        if self._log_fd is not None:
            os.close(self._log_fd)
            self._log_fd = None

    async def stop(self) -> None:
        if self.proc is None and self._spawning is not None:
            # The start was cancelled (Ctrl-C) while the process was being spawned: take it over
            # as start() would have, with its start token, else every signal to it is refused.
            try:
                self.proc = await self._spawning
            except Exception:
                self.proc = None
            else:
                self._token = self._token or getattr(self.proc, "token", None) or start_time(self.proc.pid)
                self.ctx.on_spawn(self.svc.name, self.proc.pid)
        try:
            if self.proc is not None:
                if self.svc.stop_command and self.proc.returncode is None:
                    await self._run_stop_command()
                await stop_process(self.proc, stop_signal=self.svc.stop_signal, stop_timeout=self.svc.stop_timeout,
                                   token=self._token)
                self.ctx.on_exit(self.svc.name, self.proc.pid)
                escaped = marked_pids(self.ctx.launcher_id, self.svc.name)
                if escaped:
                    log.warning("%s left processes outside its group (it daemonizes?): stopping pids %s",
                                self.svc.name, escaped)
                    await stop_marked(escaped, stop_signal=self.svc.stop_signal, stop_timeout=self.svc.stop_timeout)
            if self._cgroup is not None:
                left = await self._cgroup.stop(self.svc.stop_signal, self.svc.stop_timeout)
                if left:
                    log.warning("%s left processes outside its group and without its marker (a daemon that "
                                "cleared its environment?): stopped pids %s with its cgroup", self.svc.name, left)
                self._cgroup = None
        finally:
            self.detach()
