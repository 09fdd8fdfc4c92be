"""The one error tree: the core raises these, the plugin and the CLI translate them.

Each error keeps its context as attributes and builds its message in ``__str__`` (as mirakuru
does), so callers can both show it and act on it.
"""

from __future__ import annotations

from collections.abc import Sequence


def _redact(text: str) -> str:
    from ._redact import redact

    return redact(text)


class LauncherError(Exception):
    """Base of every error the launcher raises on purpose."""

    exit_code = 1


class ConfigError(LauncherError):
    """The config is wrong: names the file, the service and key, what is wrong and the fix."""

    exit_code = 2

    def __init__(
        self,
        problem: str,
        *,
        source: str | None = None,
        service: str | None = None,
        key: str | None = None,
        fix: str | None = None,
        cycle: Sequence[str] | None = None,
    ) -> None:
        super().__init__(problem)
        self.problem = problem
        self.source = source
        self.service = service
        self.key = key
        self.fix = fix
        self.cycle = tuple(cycle) if cycle else None

    def __str__(self) -> str:
        where = []
        if self.source:
            where.append(str(self.source))
        if self.service:
            where.append(f"service '{self.service}'")
        if self.key:
            where.append(f"key '{self.key}'")
        head = f"launcher config error in {', '.join(where)}: " if where else "launcher config error: "
        text = head + self.problem
        if self.fix:
            text += f"\n  fix: {self.fix}"
        return _redact(text)


class UnknownServiceError(LauncherError):
    """A service name that the config does not define."""

    exit_code = 2

    def __init__(self, names: Sequence[str], known: Sequence[str]) -> None:
        super().__init__(names)
        self.names = tuple(names)
        self.known = tuple(known)

    def __str__(self) -> str:
        unknown = ", ".join(repr(n) for n in self.names)
        known = ", ".join(self.known) or "(none)"
        return f"unknown service {unknown}; the config defines: {known}"


class ServiceStartupError(LauncherError):
    """A service did not become ready: the cause, then the tail of its output."""

    def __init__(
        self,
        service: str,
        cause: str,
        *,
        log_tail: str = "",
        exit_code: int | None = None,
        timeout: float | None = None,
    ) -> None:
        super().__init__(service, cause)
        self.service = service
        self.cause = cause
        self.log_tail = log_tail
        self.process_exit_code = exit_code
        self.timeout = timeout
        #: The port that was already taken, when that is why it failed.
        self.port_in_use: int | None = None

    def __str__(self) -> str:
        text = f"service '{self.service}' failed to start: {self.cause}"
        if self.log_tail.strip():
            tail = "\n".join("    " + line for line in self.log_tail.rstrip().splitlines())
            text += f"\n  last lines of its output:\n{tail}"
        return _redact(text)


class DependencyFailedError(ServiceStartupError):
    """A service was not started because one of its dependencies failed."""

    def __init__(self, service: str, dependency: str) -> None:
        super().__init__(service, f"dependency '{dependency}' failed to start")
        self.dependency = dependency


class ServiceDiedError(ServiceStartupError):
    """A service that was running has exited since."""

    def __str__(self) -> str:
        return super().__str__().replace("failed to start", "is no longer running", 1)


class ServiceUnhealthyError(ServiceStartupError):
    """A running service whose health probe failed ``failure_threshold`` times in a row (SPEC 10),
    or that turned unhealthy or died while a test used it."""

    def __str__(self) -> str:
        return super().__str__().replace("failed to start", "is unhealthy", 1)


class ServiceResetError(ServiceStartupError):
    """A service's ``reset`` hook failed (before a ``fresh=True`` test, or ``launcher.reset``)."""

    def __str__(self) -> str:
        return super().__str__().replace("failed to start", "could not be reset", 1)


class AttachError(LauncherError):
    """``--launcher-attach`` found no running environment, or an unhealthy one."""


__all__ = [
    "AttachError",
    "ConfigError",
    "DependencyFailedError",
    "LauncherError",
    "ServiceDiedError",
    "ServiceResetError",
    "ServiceStartupError",
    "UnknownServiceError",
]
