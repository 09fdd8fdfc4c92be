"""Settings in one file; the database is SQLite at DJPROJ_DB (default: beside this file)."""

from __future__ import annotations

import os
from pathlib import Path

SECRET_KEY = "test-only"
DEBUG = False
ALLOWED_HOSTS = ["*"]
ROOT_URLCONF = "djproj.urls"
INSTALLED_APPS: list[str] = []
MIDDLEWARE: list[str] = []
USE_TZ = True
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("DJPROJ_DB", str(Path(__file__).with_name("db.sqlite3"))),
    }
}
