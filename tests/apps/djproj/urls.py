"""/health runs SELECT 1, so it fails where pytest-django blocks the database."""

from __future__ import annotations

import os

from django.db import connection  # type: ignore[import-untyped]
from django.http import HttpRequest, JsonResponse  # type: ignore[import-untyped]
from django.urls import path  # type: ignore[import-untyped]


def health(request: HttpRequest) -> JsonResponse:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        (one,) = cursor.fetchone()
    return JsonResponse({"ok": one == 1, "kind": "django", "pid": os.getpid()})


urlpatterns = [path("health", health)]
