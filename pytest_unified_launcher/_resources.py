"""What a running service costs: memory, CPU, open files and threads of its processes, via psutil.

A service is its process tree, or better its cgroup where it has one (a daemon that
double-forked out of the tree is still in it). Each sample reads a few ``/proc`` files per
process; the health monitor takes one at its pace, so the cost stays per interval, not per test.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

#: How often a service without its own cgroup has its process tree looked up again.
TREE_SECONDS = 60.0


@dataclass
class Resources:
    """The samples of one service's processes so far; ``cpu_seconds`` counts processes that
    ended since they were last seen too."""

    rss_bytes: int = 0
    rss_peak_bytes: int = 0
    open_files: int = 0
    threads: int = 0
    samples: int = 0
    _cpu: dict[int, float] = field(default_factory=dict, repr=False)

    @property
    def cpu_seconds(self) -> float:
        return sum(self._cpu.values())

    def as_dict(self) -> dict[str, Any]:
        return {"rss_bytes": self.rss_bytes, "rss_peak_bytes": self.rss_peak_bytes,
                "cpu_seconds": round(self.cpu_seconds, 3), "open_files": self.open_files,
                "threads": self.threads, "samples": self.samples}


class ResourceSampler:
    """Samples the processes of one service instance (``pid``, its cgroup or its descendants)."""

    def __init__(self, pid: int, token: str | None, resources: Resources | None = None) -> None:
        from ._process import CGROUP_ROOT, Cgroup

        self.pid, self.token = pid, token
        self.resources = resources or Resources()
        self._procs: dict[int, Any] = {}
        self._tree: list[Any] | None = None
        self._tree_at = 0.0
        # Where the pids come from is decided once (a sample runs every few seconds for hours):
        # the service's own cgroup when it has one, else the tree under its main process.
        group = Cgroup(Cgroup.path_for(pid, token))
        self._cgroup = group if group.path.parent == CGROUP_ROOT and group.path.is_dir() else None

    def _pids(self) -> list[int]:
        if self._cgroup is not None:  # every pid in it is a living process of the service
            pids = self._cgroup.pids()
            if pids:
                return pids
        # Without a cgroup the tree is psutil's children(), which reads every process of the
        # machine: ~1 ms with 70 processes, more on a busy desktop. It is looked up again every
        # TREE_SECONDS; between, the known processes are sampled while they are the same
        # processes (is_running() compares start times: a reused pid is not counted).
        import psutil

        now = time.monotonic()
        if self._tree is None or now - self._tree_at >= TREE_SECONDS:
            try:
                root = psutil.Process(self.pid)
                self._tree = [root, *root.children(recursive=True)]
            except psutil.Error:
                self._tree = []
            self._tree_at = now
            self._procs = {proc.pid: proc for proc in self._tree}
            return [proc.pid for proc in self._tree]
        self._tree = [proc for proc in self._tree if proc.is_running()]
        return [proc.pid for proc in self._tree]

    def sample(self) -> Resources:
        """One sample now; a process that is gone or not ours to read is skipped."""
        import psutil

        rss = files = threads = 0
        for pid in self._pids():
            proc = self._procs.get(pid)
            try:
                if proc is None:
                    proc = self._procs[pid] = psutil.Process(pid)
                with proc.oneshot():
                    rss += proc.memory_info().rss
                    times = proc.cpu_times()
                    self.resources._cpu[pid] = times.user + times.system
                    threads += proc.num_threads()
                    files += proc.num_fds()
            except psutil.Error:
                self._procs.pop(pid, None)
        res = self.resources
        res.rss_bytes, res.open_files, res.threads = rss, files, threads
        res.rss_peak_bytes = max(res.rss_peak_bytes, rss)
        res.samples += 1
        return res
