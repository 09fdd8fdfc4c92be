"""``python -m djproj.manage migrate``: the project's own migrate task."""

import os
import sys

from django.core.management import execute_from_command_line  # type: ignore[import-untyped]

if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "djproj.settings")
    execute_from_command_line(sys.argv)
