"""The project's Celery app: broker at REDIS_URL, tasks that write through the Django ORM."""

from __future__ import annotations

import os

from celery import Celery  # type: ignore[import-untyped]

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "djproj.settings")
app = Celery("djproj", broker=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
app.conf.update(broker_connection_retry_on_startup=True, worker_hijack_root_logger=False)


@app.task  # type: ignore[untyped-decorator]
def add_item(name: str) -> None:
    import django  # type: ignore[import-untyped]

    django.setup()
    from djproj.models import Item  # type: ignore[import-not-found]

    Item.objects.create(name=name)
