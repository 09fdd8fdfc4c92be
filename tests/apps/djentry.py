"""A project's own entry module that re-exports the Django handler (its source never names django)."""

from djproj.asgi import application as app  # type: ignore[import-not-found]

__all__ = ["app"]
