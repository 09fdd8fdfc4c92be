"""The container engine: podman or docker, driven through its CLI (SPEC 8).

The CLI, not the API socket: podman's socket needs a service process (``podman system service``)
that is not running by default, docker's CLI and API both need dockerd anyway, and one CLI call
per container operation measured no slower here than a round trip through the socket (see
``benchmarks/containers.py``). Only what both engines' CLIs accept is used, apart from podman's
``rm --time`` (stop and remove in one call), chosen by :attr:`Engine.is_podman`.

Every container carries two labels, so what a killed session left can be found and removed
without any record beyond the session's id: :data:`SESSION_LABEL` and :data:`SERVICE_LABEL`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SESSION_LABEL = "io.unified-launcher.session"
SERVICE_LABEL = "io.unified-launcher.service"
#: What ``container_engine = "auto"`` tries, in order.
ENGINES = ("podman", "docker")


#: How long a connection through docker's port proxy must stay open for a tcp probe to pass:
#: the proxy closes it within a millisecond or two when nothing listens in the container.
DOCKER_TCP_SETTLE = 0.05


class EngineNotFound(LookupError):
    """No container engine on PATH (or not the one asked for); the message names the fix."""


@dataclass(frozen=True)
class Engine:
    """One container engine's CLI: ``name`` (podman, docker) and the program's path."""

    name: str
    path: str

    @property
    def is_podman(self) -> bool:
        return self.name == "podman"

    @property
    def tcp_settle(self) -> float:
        """How long a tcp probe's connection to a published port must stay open (or answer):
        docker publishes 127.0.0.1 ports through its userland proxy, which accepts before
        anything listens in the container, then closes; podman forwards in the kernel (refused)."""
        return 0.0 if self.is_podman else DOCKER_TCP_SETTLE

    async def run(self, *args: str, timeout: float = 30.0) -> tuple[int, str]:
        """``engine ARGS...`` to its end: ``(exit code, stdout + stderr)``; killed on timeout."""
        proc = await asyncio.create_subprocess_exec(
            self.path, *args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )
        try:
            async with asyncio.timeout(timeout):
                out, _ = await proc.communicate()
        except BaseException:  # a timeout or a cancel: the CLI goes with it
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            raise
        return proc.returncode or 0, out.decode(errors="replace").strip()

    def removal(self, grace: float) -> list[tuple[str, ...]]:
        """The commands that stop containers (their stop signal, SIGKILL after ``grace``
        seconds) and remove them with their anonymous volumes; each takes the names after it.
        podman's ``rm`` does both; docker's ``rm --force`` is an immediate SIGKILL, so ``stop``
        comes first."""
        seconds = f"--time={max(0, round(grace))}"
        if self.is_podman:
            return [("rm", "--force", "--ignore", "--volumes", seconds)]
        return [("stop", seconds), ("rm", "--force", "--volumes")]

    async def remove(self, *names: str, grace: float, timeout: float) -> tuple[int, str]:
        """Stop and remove ``names`` (:meth:`removal`): ``(0, "")``, or 1 and what failed. A
        container that is not there is no failure; a stop that fails still has the removal."""
        results = []
        for step in self.removal(grace):
            try:
                results.append(await self.run(*step, *names, timeout=timeout))
            except (OSError, TimeoutError) as exc:
                results.append((1, f"{' '.join(step)}: {exc or type(exc).__name__}"))
        return _removal_outcome(results)

    def remove_sync(self, *names: str, grace: float, timeout: float) -> tuple[int, str]:
        """:meth:`remove` for code without a loop (the reaper)."""
        return _removal_outcome([self.run_sync(*step, *names, timeout=timeout) for step in self.removal(grace)])

    def run_sync(self, *args: str, timeout: float = 30.0) -> tuple[int, str]:
        """:meth:`run` for code without a loop (the reaper)."""
        try:
            done = subprocess.run([self.path, *args], stdin=subprocess.DEVNULL, capture_output=True,
                                  timeout=timeout, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return -1, str(exc)
        return done.returncode, (done.stdout + done.stderr).decode(errors="replace").strip()


def _removal_outcome(results: list[tuple[int, str]]) -> tuple[int, str]:
    """What failed in the steps of a removal, leaving out "no such container" (already gone)."""
    failed = [line for code, out in results if code != 0 for line in out.splitlines()
              if line.strip() and "no such container" not in line.lower()]
    return (1, "\n".join(failed)) if failed else (0, "")


def find_engine(setting: str = "auto", environ: Mapping[str, str] | None = None) -> Engine:
    """The engine ``setting`` names ("auto": podman, else docker), found on PATH."""
    path = (environ or os.environ).get("PATH")
    names = ENGINES if setting == "auto" else (setting,)
    for name in names:
        found = shutil.which(name, path=path)
        if found:
            return Engine(name, found)
    if setting == "auto":
        raise EngineNotFound("no container engine found: neither podman nor docker is on PATH; install "
                             "podman (apt-get install podman) or docker, or run this service as a command")
    other = next(n for n in ENGINES if n != setting)
    hint = f", or set container_engine = \"{other}\"" if shutil.which(other, path=path) else ""
    raise EngineNotFound(f"container_engine = \"{setting}\" but {setting} is not on PATH; install it{hint}")


#: ``image -> digest`` per engine, asked once per process (``bench`` starts the same image often).
_DIGESTS: dict[tuple[str, str], str | None] = {}


async def image_digest(engine: Engine, image: str) -> str | None:
    """The digest of ``image`` as present (podman: its manifest digest; docker: its id)."""
    key = (engine.path, image)
    if key not in _DIGESTS:
        fmt = "{{.Digest}}" if engine.is_podman else "{{.Id}}"
        try:
            code, out = await engine.run("image", "inspect", "--format", fmt, image, timeout=30.0)
        except (OSError, TimeoutError):
            return None
        if code != 0:
            return None  # not there yet (being pulled): asked again by the next start
        _DIGESTS[key] = out.split()[0] if out.split() else None
    return _DIGESTS[key]


def container_process(pid: int, container_id: str) -> tuple[int, str] | None:
    """``(pid, start time)`` when ``pid`` is the process of container ``container_id``, else None.

    The engine's pid file names a pid; by the time it is read, that process may have ended and
    the pid gone to another. Its cgroup, read between two equal start-time reads, proves it: the
    container's cgroup path carries its id (``libpod-<id>``, ``docker-<id>.scope``, ``/docker/<id>``).
    """
    from ._process import start_time

    before = start_time(pid)
    if before is None or len(container_id) < 12:
        return None
    try:
        with open(f"/proc/{pid}/cgroup") as fh:
            groups = fh.read()
    except OSError:
        return None
    if container_id not in groups or start_time(pid) != before:
        return None
    return pid, before


def container_name(session: str, service: str) -> str:
    """The container's name: unique per session and service, readable in ``podman ps``."""
    return f"ul-{session}-{service}"


def session_containers(engine: Engine, session: str, *, timeout: float = 10.0) -> list[str]:
    """The ids of every container (running or not) labelled with ``session``."""
    code, out = engine.run_sync("ps", "-a", "-q", "--filter", f"label={SESSION_LABEL}={session}", timeout=timeout)
    return out.split() if code == 0 else []


def remove_session_containers(engine_name: str, session: str) -> list[str]:
    """Remove what a session that is gone left (the reaper): every container with its label.
    Returns the ids removed; an engine that is gone now removes nothing."""
    try:
        engine = find_engine(engine_name)
    except EngineNotFound:
        return []
    ids = session_containers(engine, session)
    if ids:
        # Its processes had their stop signal from the reaper already: no second grace period.
        code, out = engine.remove_sync(*ids, grace=0, timeout=60.0)
        if code != 0:
            log.warning("removing the containers %s of a killed session failed: %s", ", ".join(ids), out)
    return ids


def run_args(
    svc: Any, *, name: str, session: str, is_podman: bool, env_file: Path | None = None,
    cid_file: Path | None = None, pid_file: Path | None = None,
) -> list[str]:
    """``run`` and its options for the image service ``svc`` (without the engine's path).

    Every option is written ``--option=value``: a value can never be read as another option.
    The container's variables come from ``env_file`` (private, never on a command line that
    ``ps`` shows, never in the engine's own environment, where ``PATH`` or ``LD_PRELOAD`` would
    change how the engine runs). The container runs in the foreground, attached: its output is
    the engine process's, written to the service's log from its first line (and nowhere else:
    ``--log-driver=none``, the launcher caps its log), and its exit is that process's exit.
    """
    spec = svc.container
    args = ["run", "--rm", f"--name={name}", f"--label={SESSION_LABEL}={session}",
            f"--label={SERVICE_LABEL}={svc.name}", "--pull=never",  # pulled apart, timed
            "--log-driver=none", f"--stop-signal={svc.stop_signal}",
            f"--stop-timeout={max(1, round(svc.stop_timeout))}"]
    if is_podman:
        args += ["--replace"]  # a container of that name left by a crash of this same session
    if cid_file is not None:
        args += [f"--cidfile={cid_file}"]
    if pid_file is not None:  # podman's: the container's process, once it runs
        args += [f"--pidfile={pid_file}"]
    if env_file is not None:
        args += [f"--env-file={env_file}"]
    if spec.port is not None and svc.port is not None:
        args += [f"--publish={_publish_host(svc.host)}:{svc.port}:{spec.port}"]
    if svc.user:
        args += [f"--user={svc.user}"]
    if spec.workdir:
        args += [f"--workdir={spec.workdir}"]
    args += [f"--volume={mount}" for mount in spec.mounts]
    args += [f"--tmpfs={path}" for path in spec.tmpfs]
    args += [f"--ulimit={limit}={soft}:{hard}" for limit, soft, hard in spec.ulimits]
    return args + [spec.image, *svc.command]


#: A variable name the engines' env files take as one (anything else is refused at start).
ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def env_file_text(env: Mapping[str, str]) -> str:
    """``NAME=value`` lines for ``--env-file``; a name that is not a plain identifier or a
    value with a line break cannot be written there: ValueError naming it."""
    lines = []
    for name, value in sorted(env.items()):
        if not ENV_NAME_RE.fullmatch(name):
            raise ValueError(f"env name {name!r} cannot be passed to a container (letters, digits and _ only)")
        if "\n" in value or "\r" in value or "\0" in value:
            raise ValueError(f"env {name}'s value has a line break, which an engine's env file cannot carry")
        lines.append(f"{name}={value}\n")
    return "".join(lines)


def _publish_host(host: str) -> str:
    """The host address to publish on: an IPv6 address in brackets, a wildcard as itself."""
    if host in ("", "0.0.0.0"):
        return "0.0.0.0"
    return f"[{host}]" if ":" in host else host
