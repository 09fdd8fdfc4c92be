"""/health runs SELECT 1, so it fails where pytest-django blocks the database."""

from __future__ import annotations

import os

from django.db import connection  # type: ignore[import-untyped]
from django.http import HttpRequest, HttpResponse, JsonResponse  # type: ignore[import-untyped]
from django.urls import path  # type: ignore[import-untyped]
from django.views.decorators.csrf import csrf_exempt  # type: ignore[import-untyped]


def health(request: HttpRequest) -> JsonResponse:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        (one,) = cursor.fetchone()
    return JsonResponse({"ok": one == 1, "kind": "django", "pid": os.getpid()})


@csrf_exempt  # type: ignore[untyped-decorator]
def items(request: HttpRequest) -> HttpResponse:
    """GET: every item's name; POST name=...: one more item (committed at once: autocommit)."""
    from djproj.models import Item  # type: ignore[import-not-found]

    if request.method == "POST":
        Item.objects.create(name=request.POST["name"])
    return JsonResponse({"names": sorted(Item.objects.values_list("name", flat=True))})


urlpatterns = [path("health", health), path("items", items)]
