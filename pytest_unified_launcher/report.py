"""Timings, percentiles, the SPEC 5 JSON report, the terminal table and the SVG waterfall.

Everything here is a pure function over plain data.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from xml.sax.saxutils import escape

SCHEMA = 1


@dataclass
class ServiceTiming:
    level: int
    runner: str
    started_at: float | None = None
    spawned_at: float | None = None
    ready_at: float | None = None
    startup_seconds: float | None = None
    teardown_seconds: float | None = None
    attempts: int = 0
    depends_on: tuple[str, ...] = ()
    #: Those of ``depends_on`` it waited for only to run (``condition = "started"``), not to be ready.
    started_after: tuple[str, ...] = ()
    failed: bool = False
    #: The dependency whose failure kept this service from starting at all.
    blocked_by: str | None = None
    #: How it ended, when it ended on its own before its stop ("exited with code 3").
    died: str | None = None
    #: Its start was cut short (Ctrl-C, or the session ended while it was starting).
    interrupted: bool = False
    #: Later starts of this service (a test's restart()), apart from the first, which is the one
    #: the waterfall draws and the total counts.
    restarts: list[ServiceTiming] = field(default_factory=list)
    #: An image service's image, its digest, and how long pulling it took (None: not pulled).
    image: str | None = None
    image_digest: str | None = None
    pull_seconds: float | None = None

    def result(self) -> str:
        """The summary's word for it: ok, FAILED, interrupted, DIED (...), and its restarts."""
        if self.blocked_by:
            return f"not started: {self.blocked_by} failed"
        word = ("FAILED" if self.failed else f"DIED ({self.died})" if self.died
                else "interrupted" if self.interrupted else "ok")
        return word + (f", restarted {len(self.restarts)}x" if self.restarts else "")


@dataclass
class RunTiming:
    total_startup_seconds: float = 0.0
    total_teardown_seconds: float | None = None
    services: dict[str, ServiceTiming] = field(default_factory=dict)


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100), linear between closest ranks (statistics' 'inclusive')."""
    if not values:
        return math.nan
    data = sorted(values)
    if len(data) == 1:
        return data[0]
    pos = (len(data) - 1) * q / 100.0
    low = math.floor(pos)
    high = min(low + 1, len(data) - 1)
    return data[low] + (data[high] - data[low]) * (pos - low)


def stats(values: Sequence[float]) -> dict[str, float]:
    return {
        "p50": _r(percentile(values, 50)),
        "p95": _r(percentile(values, 95)),
        "p99": _r(percentile(values, 99)),
        "max": _r(max(values)) if values else math.nan,
    }


def _r(value: float | None) -> Any:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else round(value, 4)


def run_to_json(run: RunTiming) -> dict[str, Any]:
    return {
        "total_startup_seconds": _r(run.total_startup_seconds),
        "total_teardown_seconds": _r(run.total_teardown_seconds),
        "services": {
            name: {
                "level": t.level,
                "runner": t.runner,
                "started_at": _r(t.started_at),
                "spawned_at": _r(t.spawned_at),
                "ready_at": _r(t.ready_at),
                "startup_seconds": _r(t.startup_seconds),
                "teardown_seconds": _r(t.teardown_seconds),
                "attempts": t.attempts,
                "depends_on": list(t.depends_on),
                "started_after": list(t.started_after),
                "failed": t.failed,
                "blocked_by": t.blocked_by,
                "died": t.died,
                "interrupted": t.interrupted,
                "restarts": [{"started_at": _r(r.started_at), "ready_at": _r(r.ready_at),
                              "startup_seconds": _r(r.startup_seconds)} for r in t.restarts],
                "result": t.result(),
                **({"image": t.image, "image_digest": t.image_digest, "pull_seconds": _r(t.pull_seconds)}
                   if t.image else {}),
            }
            for name, t in sorted(run.services.items())
        },
    }


def timing_from_json(s: Mapping[str, Any]) -> ServiceTiming:
    """The inverse of :func:`run_to_json` for one service (xdist workers send their runs as JSON)."""
    return ServiceTiming(
        level=s["level"], runner=s["runner"], started_at=s["started_at"], spawned_at=s.get("spawned_at"),
        ready_at=s["ready_at"], startup_seconds=s["startup_seconds"], teardown_seconds=s["teardown_seconds"],
        attempts=s["attempts"], depends_on=tuple(s.get("depends_on", ())),
        started_after=tuple(s.get("started_after", ())), failed=s.get("failed", False),
        blocked_by=s.get("blocked_by"), died=s.get("died"), interrupted=s.get("interrupted", False),
        image=s.get("image"), image_digest=s.get("image_digest"), pull_seconds=s.get("pull_seconds"),
        restarts=[ServiceTiming(level=s["level"], runner=s["runner"], started_at=r["started_at"],
                                ready_at=r["ready_at"], startup_seconds=r["startup_seconds"])
                  for r in s.get("restarts", ())],
    )


def build_report(
    runs: Iterable[RunTiming],
    *,
    profile: str | None,
    mode: str,
    mode_reason: str,
    budget_seconds: float,
    resets: Mapping[str, Sequence[float]] | None = None,
    health: Mapping[str, Any] | None = None,
    resources: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The SPEC 5 report: every run, and P50/P95/P99/max over the runs; ``resets``: each
    service's reset durations (``fresh=True``, ``launcher.reset``), as a count and P50/P95."""
    run_list = [r for r in runs if r.services]
    totals = [r.total_startup_seconds for r in run_list]
    per_service: dict[str, list[float]] = {}
    teardown: list[float] = []
    for run in run_list:
        if run.total_teardown_seconds is not None:
            teardown.append(run.total_teardown_seconds)
        for name, t in run.services.items():
            if t.startup_seconds is not None:
                per_service.setdefault(name, []).append(t.startup_seconds)
    summary: dict[str, Any] = {
        "total": stats(totals) if totals else None,
        "teardown": stats(teardown) if teardown else None,
        "services": {name: stats(v) for name, v in sorted(per_service.items())},
    }
    p95 = percentile(totals, 95) if totals else 0.0
    return {
        "schema": SCHEMA,
        "profile": profile,
        "mode": mode,
        "mode_reason": mode_reason,
        "budget_seconds": budget_seconds,
        "runs": [run_to_json(r) for r in run_list],
        "summary": summary,
        "budget_ok": bool(p95 <= budget_seconds),
        "resets": {name: {"count": len(seconds), "p50": _r(percentile(seconds, 50)),
                          "p95": _r(percentile(seconds, 95)), "seconds": [_r(x) for x in seconds]}
                   for name, seconds in sorted((resets or {}).items()) if seconds},
        "health": dict(health or {}),
        "resources": dict(resources or {}),
    }


def merge_health(reports: Sequence[Mapping[str, Any]], *, shared: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """The xdist workers' ``health`` and ``resources`` as one: probes and failures summed,
    transitions in time order (each once: workers of a shared environment see the same), the
    median of the workers' p50 and the highest p95; resources: the highest peak, and CPU seconds
    the highest (``shared``: one process seen by all) or summed (``per_worker``: one each)."""
    health: dict[str, Any] = {}
    resources: dict[str, Any] = {}
    for rep in reports:
        for name, h in (rep.get("health") or {}).items():
            into = health.setdefault(name, {"probes": 0, "failures": 0, "response_ms": None, "last_probe": None,
                                            "transitions": [], "_p50": [], "_p95": []})
            into["probes"] += h["probes"]
            into["failures"] += h["failures"]
            into["last_probe"] = h.get("last_probe") or into["last_probe"]
            if h.get("response_ms"):
                into["_p50"].append(h["response_ms"]["p50"])
                into["_p95"].append(h["response_ms"]["p95"])
            seen = {(t["kind"], round(t["at"], 1)) for t in into["transitions"]}
            into["transitions"] += [t for t in h["transitions"] if (t["kind"], round(t["at"], 1)) not in seen]
        for name, r in (rep.get("resources") or {}).items():
            known = resources.get(name)
            if known is None or "n/a" in known:
                resources[name] = dict(r)
            elif "n/a" not in r:
                known["rss_peak_bytes"] = max(known["rss_peak_bytes"], r["rss_peak_bytes"])
                known["cpu_seconds"] = (max(known["cpu_seconds"], r["cpu_seconds"]) if shared
                                        else round(known["cpu_seconds"] + r["cpu_seconds"], 3))
                known["samples"] += r["samples"]
    for h in health.values():
        p50s, p95s = h.pop("_p50"), h.pop("_p95")
        if p50s:
            h["response_ms"] = {"p50": percentile(p50s, 50), "p95": max(p95s)}
        h["transitions"].sort(key=lambda t: t["at"])
    return health, resources


#: The events the summary lists (ready and stopped are every service's).
NOTABLE = ("unhealthy", "recovered", "died", "restarted")


def health_lines(report: Mapping[str, Any]) -> list[str]:
    """``health:`` lines of the summary: each service's notable transitions, with the clock time."""
    import time as _time

    lines = []
    for name, h in sorted((report.get("health") or {}).items()):
        notable = [t for t in h["transitions"] if t["kind"] in NOTABLE]
        if not notable:
            continue
        shown = [f"{t['kind']} {_time.strftime('%H:%M:%S', _time.localtime(t['at']))}"
                 + (f" ({t['detail']})" if t["kind"] in ("unhealthy", "died") and t["detail"] else "")
                 for t in notable[:6]]
        more = f" and {len(notable) - 6} more" if len(notable) > 6 else ""
        lines.append(f"health: {name}: " + ", ".join(shown) + more)
    return lines


def peak_mib(resources: Mapping[str, Any], name: str) -> str:
    r = resources.get(name)
    if r is None:
        return "-"
    if "n/a" in r:
        return "n/a"
    return f"{r['rss_peak_bytes'] / 2**20:.1f}"


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def render_table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    """A plain aligned text table: numeric columns right-aligned, the rest left-aligned."""
    body = [list(map(str, r)) for r in rows]
    widths = [max([len(h)] + [len(r[i]) for r in body]) for i, h in enumerate(headers)]
    numeric = [bool(body) and all(_is_number(r[i]) for r in body) for i in range(len(headers))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            c.rjust(widths[i]) if numeric[i] else c.ljust(widths[i]) for i, c in enumerate(cells)
        ).rstrip()

    return [line(headers), line(["-" * w for w in widths])] + [line(r) for r in body]


def _is_number(text: str) -> bool:
    if text in ("-", ""):
        return True
    try:
        float(text)
    except ValueError:
        return False
    return True


def session_summary(report: Mapping[str, Any]) -> list[str]:
    """The terminal summary of one session (the last run of the report)."""
    runs = report["runs"]
    if not runs:
        return [f"mode: {report['mode']} ({report['mode_reason']}); no services were started"]
    run = runs[-1]
    rows = []
    resources = report.get("resources") or {}
    for name, s in sorted(run["services"].items(), key=lambda kv: (kv[1]["level"], kv[0])):
        result = s.get("result") or timing_from_json(s).result()
        rows.append([name, str(s["level"]), s["runner"], _fmt(s["startup_seconds"]),
                     _fmt(s["teardown_seconds"]), str(s["attempts"]), peak_mib(resources, name), result])
    lines = render_table(["service", "level", "runner", "startup s", "teardown s", "attempts", "peak MiB", "result"],
                         rows)
    total = run["total_startup_seconds"]
    budget = report["budget_seconds"]
    verdict = "within" if total <= budget else "EXCEEDS"
    failed = sorted(name for name, s in run["services"].items() if s["failed"] and not s.get("blocked_by"))
    died = sorted(name for name, s in run["services"].items() if s.get("died"))
    lines.append(f"total startup {total:.3f} s {verdict} the budget of {budget:g} s"
                 + (f", but FAILED to start: {', '.join(failed)}" if failed else "")
                 + (f"; DIED while running: {', '.join(died)}" if died else "")
                 + (f"; teardown {run['total_teardown_seconds']:.3f} s" if run["total_teardown_seconds"] is not None else ""))
    lines.append(f"mode: {report['mode']} ({report['mode_reason']})")
    lines += health_lines(report)
    resets = report.get("resets") or {}
    if resets:
        lines.append("resets: " + ", ".join(f"{name} {r['count']}x (p50 {r['p50']:.3f} s, p95 {r['p95']:.3f} s)"
                                            for name, r in resets.items()))
    return lines


def bench_summary(report: Mapping[str, Any]) -> list[str]:
    """The bench table: per service and total P50/P95/P99/max over the runs."""
    summary = report["summary"]
    resources = report.get("resources") or {}
    rows = []
    for name, s in summary["services"].items():
        rows.append([name, _fmt(s["p50"]), _fmt(s["p95"]), _fmt(s["p99"]), _fmt(s["max"]), peak_mib(resources, name)])
    if summary["total"]:
        t = summary["total"]
        rows.append(["TOTAL startup", _fmt(t["p50"]), _fmt(t["p95"]), _fmt(t["p99"]), _fmt(t["max"]), ""])
    if summary["teardown"]:
        t = summary["teardown"]
        rows.append(["TOTAL teardown", _fmt(t["p50"]), _fmt(t["p95"]), _fmt(t["p99"]), _fmt(t["max"]), ""])
    lines = render_table(["service (seconds)", "p50", "p95", "p99", "max", "peak MiB"], rows)
    verdict = "OK" if report["budget_ok"] else "EXCEEDED"
    lines.append(f"budget {report['budget_seconds']:g} s for the total P95: {verdict}"
                 f" ({len(report['runs'])} runs, mode {report['mode']})")
    return lines


def critical_path(services: Mapping[str, Mapping[str, Any]]) -> set[str]:
    """The chain of services that determined when the last one became ready (a dependency it
    waited for only to run, ``condition = "started"``, counts by when it was spawned)."""
    if not services:
        return set()
    done = {n: s for n, s in services.items() if s.get("ready_at") is not None}
    if not done:
        return set()
    current = max(done, key=lambda n: done[n]["ready_at"])
    path = {current}
    while True:
        after_start = set(services[current].get("started_after", ()))
        deps = [d for d in services[current].get("depends_on", []) if d in done]
        if not deps:
            return path

        def released(dep: str, after_start: set[str] = after_start) -> float:
            moment = done[dep].get("spawned_at") if dep in after_start else None
            return float(moment if moment is not None else done[dep]["ready_at"])

        current = max(deps, key=released)
        path.add(current)


def render_svg(run: Mapping[str, Any], *, budget_seconds: float, title: str = "startup waterfall") -> str:
    """A startup waterfall: one bar per service from started_at to ready_at, by level."""
    services = {n: s for n, s in run["services"].items() if not s.get("blocked_by")}  # never started
    order = sorted(services, key=lambda n: (services[n]["level"], services[n]["started_at"] or 0, n))
    end = max([s["ready_at"] or 0 for s in services.values()] + [run.get("total_startup_seconds") or 0, 0.001])
    show_budget = budget_seconds <= end * 1.5
    span = max(end, budget_seconds) if show_budget else end
    left, right, row_h, top = 170, 80, 26, 56
    width = 900
    plot_w = width - left - right
    height = top + row_h * len(order) + 60

    def x(t: float) -> float:
        return float(left + plot_w * (t / span))

    crit = critical_path(services)
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">',
        f'<title>{escape(title)}</title>',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{left}" y="20" font-size="14" font-weight="bold">{escape(title)}: '
        f'{run.get("total_startup_seconds", 0):.3f} s</text>',
        f'<rect x="{left}" y="30" width="14" height="10" fill="#2b7bb9" opacity="0.35"/>'
        f'<text x="{left + 18}" y="39" fill="#555">setup and spawn</text>'
        f'<rect x="{left + 130}" y="30" width="14" height="10" fill="#2b7bb9"/>'
        f'<text x="{left + 148}" y="39" fill="#555">waiting for health</text>'
        f'<rect x="{left + 275}" y="30" width="14" height="10" fill="white" stroke="#c00" stroke-width="2"/>'
        f'<text x="{left + 293}" y="39" fill="#555">critical path</text>'
        f'<rect x="{left + 385}" y="30" width="14" height="10" fill="#d9534f"/>'
        f'<text x="{left + 403}" y="39" fill="#555">failed</text>'
        + (f'<rect x="{left + 455}" y="30" width="14" height="10" fill="#8e6bb8"/>'
           f'<text x="{left + 473}" y="39" fill="#555">image pull</text>'
           if any(s.get("pull_seconds") for s in services.values()) else ""),
    ]
    ticks = _ticks(span)
    for t in ticks:
        out.append(f'<line x1="{x(t):.1f}" y1="{top - 4}" x2="{x(t):.1f}" y2="{top + row_h * len(order)}" stroke="#eee"/>')
        out.append(f'<text x="{x(t):.1f}" y="{top + row_h * len(order) + 16}" text-anchor="middle" fill="#555">{t:g} s</text>')
    last_level = None
    for i, name in enumerate(order):
        s = services[name]
        y = top + i * row_h
        if s["level"] != last_level:
            last_level = s["level"]
            out.append(f'<line x1="0" y1="{y}" x2="{width}" y2="{y}" stroke="#ccc"/>')
            out.append(f'<text x="4" y="{y + 12}" fill="#888" font-size="10">level {s["level"]}</text>')
        out.append(f'<text x="{left - 6}" y="{y + 17}" text-anchor="end">{escape(name)}</text>')
        start = s["started_at"] or 0.0
        spawned = s.get("spawned_at") or start
        pulled = min(start + (s.get("pull_seconds") or 0.0), spawned)
        ready = s["ready_at"] if s["ready_at"] is not None else end
        colour = "#d9534f" if s.get("failed") else "#2b7bb9"
        outline = (  # the whole bar, setup included: it is all on the path
            f'<rect class="critical" x="{x(start):.1f}" y="{y + 5}" width="{max(x(ready) - x(start), 1):.1f}" '
            f'height="{row_h - 10}" fill="none" stroke="#c00" stroke-width="2"/>' if name in crit else ""
        )
        out.append(
            f'<g class="bar" data-service="{escape(name)}">'
            + (f'<rect class="phase-pull" x="{x(start):.1f}" y="{y + 5}" width="{max(x(pulled) - x(start), 0.5):.1f}" '
               f'height="{row_h - 10}" fill="#8e6bb8"/>' if pulled > start else "")
            + f'<rect class="phase-spawn" x="{x(pulled):.1f}" y="{y + 5}" width="{max(x(spawned) - x(pulled), 0.5):.1f}" '
            f'height="{row_h - 10}" fill="{colour}" opacity="0.35"/>'
            f'<rect class="phase-health" x="{x(spawned):.1f}" y="{y + 5}" width="{max(x(ready) - x(spawned), 1):.1f}" '
            f'height="{row_h - 10}" fill="{colour}"/>{outline}'
            f'<text x="{x(ready) + 4:.1f}" y="{y + 17}" fill="#333">{(s["startup_seconds"] or 0):.3f} s'
            f'{_bar_note(s)}</text>'
            f'</g>'
        )
    if show_budget:
        out.append(f'<line x1="{x(budget_seconds):.1f}" y1="{top - 8}" x2="{x(budget_seconds):.1f}" '
                   f'y2="{top + row_h * len(order)}" stroke="#c00" stroke-dasharray="4 3"/>')
        out.append(f'<text x="{x(budget_seconds) - 4:.1f}" y="{top - 10}" text-anchor="end" fill="#c00">budget {budget_seconds:g} s</text>')
    else:
        out.append(f'<text x="{width - right}" y="{top - 10}" text-anchor="end" fill="#080">budget {budget_seconds:g} s (off the scale)</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def _bar_note(s: Mapping[str, Any]) -> str:
    """What the waterfall says beside a bar besides its time: restarts, death, interruption."""
    notes = [f"after {', '.join(s['started_after'])} started"] if s.get("started_after") else []
    notes += [f"restarted {len(s['restarts'])}x"] if s.get("restarts") else []
    if s.get("died"):
        notes.append("died")
    if s.get("interrupted"):
        notes.append("interrupted")
    return escape(" (" + ", ".join(notes) + ")") if notes else ""


def _ticks(span: float) -> list[float]:
    raw = span / 6
    magnitude = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
    return [round(i * step, 6) for i in range(int(span / step) + 1)]
