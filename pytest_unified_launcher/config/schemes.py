"""What kind of URL a service has: ``http://`` for what speaks HTTP, else the protocol's own.

Decided from what the config says (SPEC 12), never by probing: ``scheme`` when written, an
``app`` or an http probe means HTTP, a known server program or probe names its protocol, and
anything else with a port is ``tcp://``.
"""

from __future__ import annotations

import os
import shlex

from .models import ServiceModel

#: Program (or ``python -m`` module) names and what they serve; matched on an argv element's basename.
_PROGRAMS = {
    "postgresql": ("postgres", "postmaster", "pg_ctl", "pg_ctlcluster"),
    "redis": ("redis-server", "redis-stack-server", "valkey-server", "keydb-server"),
    "http": ("uvicorn", "gunicorn", "hypercorn", "daphne", "granian", "waitress-serve", "flask",
             "http.server", "runserver"),
}
#: Health-probe programs that name the protocol of what they probe.
_PROBES = {
    "postgresql": ("pg_isready",),
    "redis": ("redis-cli", "valkey-cli", "keydb-cli"),
}
#: How far into the argv a program name counts: ``bin/pg postgres``, ``python -m proj.manage runserver``.
_HEAD = 4


def _words(value: list[str] | str | None) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        try:
            value = shlex.split(value)
        except ValueError:
            return []  # reported as a config error where the command is expanded
    return [os.path.basename(word) for word in value[:_HEAD]]


def _match(words: list[str], table: dict[str, tuple[str, ...]]) -> str | None:
    return next((scheme for scheme, names in table.items() if any(w in names for w in words)), None)


def scheme_of(raw: ServiceModel) -> str:
    """The scheme of the url of an ``app``, ``command`` or ``image`` service that has a port."""
    if raw.scheme is not None:
        return raw.scheme
    if raw.app is not None or (raw.health is not None and raw.health.http is not None):
        return "http"
    probe = (raw.health.command or raw.health.exec) if raw.health is not None else None
    return (_match(_words(probe), _PROBES) or _match(_words(raw.command), _PROGRAMS)
            or _match([_image_name(raw.image)] if raw.image else [], _IMAGES) or "tcp")


#: Image names (the last path part, without tag or digest) and what they serve.
_IMAGES = {
    "postgresql": ("postgres", "postgis", "timescaledb"),
    "redis": ("redis", "valkey", "redis-stack-server", "keydb"),
    "http": ("nginx", "httpd", "caddy", "traefik"),
}


def _image_name(image: str) -> str:
    """``docker.io/library/postgres:16-alpine`` -> ``postgres``; ``localhost/ul-redis:1`` -> ``ul-redis``."""
    name = image.split("@", 1)[0].rsplit("/", 1)[-1]
    return name.split(":", 1)[0]
