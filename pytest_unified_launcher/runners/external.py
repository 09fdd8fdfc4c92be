"""External services (``url = ...``): never started, only waited for."""

from __future__ import annotations

from .. import _timing
from ..errors import ServiceStartupError
from ..health import HealthTimeout, ProbeUnusable, make_probe, wait_healthy
from . import Runner


class ExternalRunner(Runner):
    kind = "external"

    async def start(self, deadline: float) -> None:
        self.spawned_at = _timing.monotonic()

    async def wait_ready(self, deadline: float) -> None:
        probe = make_probe(
            self.svc, self.svc.health, log_path=None,
            env=self.ctx.base_env, spawned_at=self.spawned_at or _timing.monotonic(),
        )
        try:
            await wait_healthy(probe, deadline=deadline, timeout=self.svc.startup_timeout, rate=self.probe_rate)
        except HealthTimeout as exc:
            raise ServiceStartupError(
                self.svc.name,
                f"external service {self.svc.url} not healthy after {exc.timeout:.1f} s "
                f"(last probe: {exc.last})",
                timeout=exc.timeout,
            ) from None
        except ProbeUnusable as exc:
            raise self._probe_unusable(exc) from None

    async def stop(self) -> None:
        return None
