import os

from django.core.asgi import get_asgi_application  # type: ignore[import-untyped]

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "djproj.settings")
application = get_asgi_application()
