"""``${...}`` placeholders: what each place in the config may name, and expanding them."""

from __future__ import annotations

import re
from collections.abc import Container, Iterable, Mapping

from .. import graph as graph_mod
from ..errors import ConfigError
from .models import PLACEHOLDER_RE, FileModel, ServiceModel, Where

# --------------------------------------------------------------------------- placeholders


class _Scope:
    """The placeholder values visible at one place in the config."""

    def __init__(
        self,
        values: Mapping[str, str],
        environ: Mapping[str, str],
        where: Where,
        allowed_services: Container[str] | None,
        all_services: Mapping[str, Mapping[str, str]],
        groups: Mapping[str, tuple[str, ...]] | None = None,
    ) -> None:
        self.values = values
        self.environ = environ
        self.where = where
        self.allowed = allowed_services
        self.all_services = all_services
        self.groups = groups or {}

    def lookup(self, name: str) -> str:
        if name in self.values:
            return self.values[name]
        if name.startswith("env."):
            var, _, default = name[4:].partition(":-")
            if var in self.environ:
                return self.environ[var]
            if ":-" in name:
                return default
            raise self._error(
                f"placeholder '${{{name}}}': environment variable {var} is not set",
                f"set {var}, or give a default: ${{env.{var}:-value}}",
            )
        if name.startswith("services."):
            parts = name.split(".")
            if len(parts) == 3 and parts[1] in self.all_services:
                target, attr = parts[1], parts[2]
                if self.allowed is not None and target not in self.allowed:
                    raise self._error(
                        f"placeholder '${{{name}}}' refers to '{target}', "
                        "which is not among this service's dependencies",
                        f"add '{target}' to depends_on",
                    )
                values = self.all_services[target]
                if attr in values:
                    return values[attr]
                if attr in ("port", "url"):
                    raise self._error(
                        f"placeholder '${{{name}}}': service '{target}' has no port",
                        f"give '{target}' a port (port = \"auto\")",
                    )
            if len(parts) == 3 and parts[1] in self.groups:
                members = self.groups[parts[1]]
                raise self._error(
                    f"placeholder '${{{name}}}': '{parts[1]}' has {len(members)} replicas, each with its own address",
                    f"name one: ${{services.{members[0]}.{parts[2]}}} (its replicas are {', '.join(members)})",
                )
            if len(parts) == 3 and parts[1] not in self.all_services:
                raise self._error(
                    f"placeholder '${{{name}}}' names an unknown service '{parts[1]}'",
                    graph_mod._known_fix(parts[1], self.all_services),
                )
        if name in ("worker", "worker_index"):
            raise self._error(
                f"placeholder '${{{name}}}' is known only in [launcher.test_env], in reset and in "
                'scope = "worker" tasks: anything else is one process shared by every xdist worker',
                'use it in one of those (e.g. a task with scope = "worker" creating app_${worker}), '
                "or write $${" + name + "} for a literal",
            )
        known = sorted(self.values) + ["env.VAR", "services.NAME.port|host|url"]  # replica: 0 .. N-1
        raise self._error(
            f"unknown placeholder '${{{name}}}'",
            "known placeholders: " + ", ".join("${" + k + "}" for k in known) + "; write $$ for a literal $",
        )

    def _error(self, problem: str, fix: str) -> ConfigError:
        return self.where(problem, fix)

    def expand(self, text: str) -> str:
        def sub(match: re.Match[str]) -> str:
            if match.group(0) == "$$":
                return "$"
            return self.lookup(match.group(1).strip())

        return PLACEHOLDER_RE.sub(sub, text)


def _referenced_services(model: FileModel, more: Iterable[str] = ()) -> set[str]:
    """Services whose address some other service, ``[env]``, test_env or env file names in a placeholder."""
    texts = [str(v) for v in model.launcher.test_env.values()] + [str(v) for v in model.env.values()] + list(more)
    for svc in model.services.values():
        texts.append(repr(svc.model_dump()))
    found: set[str] = set()
    for text in texts:
        found.update(re.findall(r"\$\{\s*services\.([A-Za-z0-9_-]+)\.", text))
    return found


def _uses_port(raw: ServiceModel) -> bool:
    texts: list[str] = []
    if isinstance(raw.command, str):
        texts.append(raw.command)
    elif raw.command:
        texts.extend(raw.command)
    for step in raw.setup:
        texts.extend([step] if isinstance(step, str) else step)
    texts.extend(str(v) for v in raw.env.values())
    if raw.stop_command is not None:
        texts.extend([raw.stop_command] if isinstance(raw.stop_command, str) else raw.stop_command)
    if raw.health is not None:
        texts.extend(str(v) for v in raw.health.model_dump().values() if v is not None)
    if raw.cwd:
        texts.append(raw.cwd)
    return any(re.search(r"\$\{\s*(port|url)\s*\}", t) for t in texts)
