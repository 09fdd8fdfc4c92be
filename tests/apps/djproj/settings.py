"""Settings in one file: PostgreSQL at DATABASE_URL if set, else SQLite at DJPROJ_DB (default: beside this file)."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit

SECRET_KEY = "test-only"
DEBUG = False
ALLOWED_HOSTS = ["*"]
ROOT_URLCONF = "djproj.urls"
INSTALLED_APPS = ["djproj"]
MIDDLEWARE: list[str] = []
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("DJPROJ_DB", str(Path(__file__).with_name("db.sqlite3"))),
    }
}

if os.environ.get("DATABASE_URL"):
    url = urlsplit(os.environ["DATABASE_URL"])
    DATABASES["default"] = {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": url.path.lstrip("/"),
        "USER": url.username or "",
        "HOST": url.hostname or "",
        "PORT": str(url.port or ""),
    }
