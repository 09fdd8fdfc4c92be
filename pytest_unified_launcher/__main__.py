"""``python -m pytest_unified_launcher`` behaves like ``unified-launcher``."""

import sys

from .cli import main

sys.exit(main())
