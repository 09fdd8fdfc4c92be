"""The one clock: every duration the launcher reports comes from here, so tests can fake it."""

from __future__ import annotations

import time

#: Monotonic seconds, for durations.
monotonic = time.perf_counter
#: Wall-clock seconds since the epoch, for records other processes read.
wall = time.time
