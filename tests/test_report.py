"""Unit tests for percentiles, the SPEC 5 report and the SVG waterfall."""

from __future__ import annotations

import statistics
import xml.etree.ElementTree as ET
from typing import Any

import pytest

from pytest_unified_launcher.report import (
    RunTiming,
    ServiceTiming,
    build_report,
    critical_path,
    percentile,
    render_svg,
    session_summary,
)


@pytest.mark.parametrize(
    "values",
    [[1.0, 2.0], [0.3, 0.1, 0.2], [5.0, 1.0, 9.0, 3.0, 7.0], [float(i) for i in range(1, 101)], [0.9, 0.91, 0.95, 1.2]],
)
def test_percentiles_match_statistics_quantiles(values: list[float]) -> None:
    """P50/P95/P99 agree with statistics.quantiles(method='inclusive')."""
    q = statistics.quantiles(values, n=100, method="inclusive")
    assert percentile(values, 50) == pytest.approx(q[49])
    assert percentile(values, 95) == pytest.approx(q[94])
    assert percentile(values, 99) == pytest.approx(q[98])


def test_percentile_of_one_value() -> None:
    """One run: every percentile is that run."""
    assert percentile([0.4], 95) == 0.4


def _run(total: float, gw: float) -> RunTiming:
    return RunTiming(
        total_startup_seconds=total,
        total_teardown_seconds=0.1,
        services={
            "db": ServiceTiming(level=0, runner="subprocess", started_at=0.0, spawned_at=0.01, ready_at=0.3,
                                startup_seconds=0.3, teardown_seconds=0.05, attempts=1),
            "cache": ServiceTiming(level=0, runner="subprocess", started_at=0.0, spawned_at=0.0, ready_at=0.1,
                                   startup_seconds=0.1, teardown_seconds=0.01, attempts=1),
            "gw": ServiceTiming(level=1, runner="in_process", started_at=0.3, spawned_at=0.3, ready_at=0.3 + gw,
                                startup_seconds=gw, teardown_seconds=0.01, attempts=1, depends_on=("db", "cache")),
        },
    )


def test_report_schema() -> None:
    """The report has SPEC 5's keys and its summary is computed over the runs."""
    report = build_report([_run(0.5, 0.2), _run(0.7, 0.4)], profile="ci", mode="multi_process",
                          mode_reason="asked", budget_seconds=0.6)
    assert report["schema"] == 1 and report["profile"] == "ci" and report["mode"] == "multi_process"
    assert len(report["runs"]) == 2
    gw = report["runs"][0]["services"]["gw"]
    assert {"level", "runner", "started_at", "ready_at", "startup_seconds", "teardown_seconds", "attempts"} <= set(gw)
    assert report["summary"]["total"]["p50"] == pytest.approx(0.6)
    assert report["summary"]["services"]["gw"]["max"] == pytest.approx(0.4)
    assert report["budget_ok"] is False  # P95 0.69 > 0.6


def test_summary_lines_mark_a_budget_overrun() -> None:
    """The terminal summary says when the startup exceeds the budget."""
    report = build_report([_run(2.0, 0.2)], profile=None, mode="single_process", mode_reason="auto", budget_seconds=1.0)
    text = "\n".join(session_summary(report))
    assert "EXCEEDS the budget of 1 s" in text and "gw" in text and "single_process (auto)" in text


def test_summary_lines_name_services_that_failed() -> None:
    """A run in which a service failed says so on the total line, not just "within the budget"."""
    run = _run(0.5, 0.2)
    run.services["gw"].failed = True
    report = build_report([run], profile=None, mode="multi_process", mode_reason="asked", budget_seconds=25)
    lines = session_summary(report)
    assert any(line.startswith("gw ") and line.endswith("FAILED") for line in lines)
    assert "within the budget of 25 s, but FAILED to start: gw;" in "\n".join(lines)
    ok = session_summary(build_report([_run(0.5, 0.2)], profile=None, mode="m", mode_reason="r", budget_seconds=25))
    assert "FAILED" not in "\n".join(ok)


def test_a_service_blocked_by_a_failed_dependency() -> None:
    """A service that never started because a dependency failed is listed as such, and has no
    bar in the waterfall; the total line names only the service that failed itself."""
    run = _run(0.5, 0.2)
    run.services["db"].failed = True
    run.services["gw"] = ServiceTiming(level=1, runner="in_process", depends_on=("db", "cache"), failed=True,
                                       blocked_by="db")
    report = build_report([run], profile=None, mode="m", mode_reason="r", budget_seconds=25)
    text = "\n".join(session_summary(report))
    assert "not started: db failed" in text and "FAILED to start: db;" in text
    assert report["runs"][0]["services"]["gw"]["blocked_by"] == "db"
    root = ET.fromstring(render_svg(report["runs"][0], budget_seconds=25))
    drawn = {g.get("data-service") for g in root.iter("{http://www.w3.org/2000/svg}g") if g.get("class") == "bar"}
    assert drawn == {"db", "cache"}


def test_critical_path() -> None:
    """The critical path follows the latest-ready dependency back from the last service."""
    report = build_report([_run(0.5, 0.2)], profile=None, mode="m", mode_reason="r", budget_seconds=25)
    assert critical_path(report["runs"][0]["services"]) == {"gw", "db"}


def test_svg_waterfall() -> None:
    """The SVG parses, has one bar per service, and each bar starts at its started_at."""
    report = build_report([_run(0.5, 0.2)], profile=None, mode="m", mode_reason="r", budget_seconds=0.6)
    svg = render_svg(report["runs"][0], budget_seconds=0.6)
    root = ET.fromstring(svg)
    ns = "{http://www.w3.org/2000/svg}"
    bars = [g for g in root.iter(f"{ns}g") if g.get("class") == "bar"]
    assert sorted(str(g.get("data-service")) for g in bars) == ["cache", "db", "gw"]
    rects = {g.get("data-service"): g.find(f"{ns}rect") for g in bars}
    xs = {name: float(rect.get("x", "nan")) for name, rect in rects.items() if rect is not None}
    assert xs["db"] == xs["cache"] < xs["gw"]
    outlined = {str(g.get("data-service")) for g in bars if g.find(f"{ns}rect[@class='critical']") is not None}
    assert outlined == {"db", "gw"}  # the critical path, each outline spanning the whole bar
    assert "budget 0.6 s" in svg


def _one(**fields: object) -> RunTiming:
    timing = ServiceTiming(level=0, runner="subprocess", started_at=0.0, spawned_at=0.0, ready_at=0.2,
                           startup_seconds=0.2, teardown_seconds=0.01, attempts=1)
    for key, value in fields.items():
        setattr(timing, key, value)
    return RunTiming(total_startup_seconds=0.2, total_teardown_seconds=0.01, services={"svc": timing})


@pytest.mark.parametrize(("fields", "result"), [
    ({}, "ok"),
    ({"died": "exited with code 3"}, "DIED (exited with code 3)"),
    ({"interrupted": True, "ready_at": None, "startup_seconds": None}, "interrupted"),
    ({"failed": True}, "FAILED"),
    ({"restarts": [ServiceTiming(level=0, runner="subprocess", started_at=5.0, ready_at=5.2, startup_seconds=0.2)]},
     "ok, restarted 1x"),
    ({"died": "was killed by SIGKILL",
      "restarts": [ServiceTiming(level=0, runner="subprocess", started_at=5.0, ready_at=5.2, startup_seconds=0.2)]},
     "DIED (was killed by SIGKILL), restarted 1x"),
])
def test_summary_result_column(fields: dict[str, object], result: str) -> None:
    """The summary's result says died, interrupted, failed or ok, and how often it was restarted
    (a service that died mid-session, or was cut short by Ctrl-C, showed 'ok')."""
    report = build_report([_one(**fields)], profile=None, mode="multi_process", mode_reason="asked",
                          budget_seconds=25)
    row = next(line for line in session_summary(report) if line.startswith("svc "))
    assert row.split("  ")[-1].strip() == result
    assert report["runs"][0]["services"]["svc"]["died"] == fields.get("died")


def test_waterfall_draws_the_first_start_and_lists_restarts() -> None:
    """A restarted service is drawn at its first start (not at its restart, after its dependents),
    with its restarts noted beside the bar."""
    restart = ServiceTiming(level=0, runner="subprocess", started_at=5.0, ready_at=5.2, startup_seconds=0.2)
    report = build_report([_one(restarts=[restart])], profile=None, mode="multi_process", mode_reason="asked",
                          budget_seconds=25)
    run = report["runs"][0]
    assert run["services"]["svc"]["restarts"] == [{"started_at": 5.0, "ready_at": 5.2, "startup_seconds": 0.2}]
    svg = render_svg(run, budget_seconds=25)
    bar = next(g for g in ET.fromstring(svg).iter("{http://www.w3.org/2000/svg}g") if g.get("data-service") == "svc")
    assert "restarted 1x" in "".join(bar.itertext())
    assert float(bar[0].get("x", "0")) < 200  # drawn at 0 s, not 5 s


@pytest.mark.parametrize(
    ("started_after", "expected"),
    [((), {"app", "db"}), (("db",), {"app", "cache"})],
    ids=["healthy", "started"],
)
def test_critical_path_follows_what_a_dependent_waited_for(started_after: tuple[str, ...], expected: set[str]) -> None:
    """A dependency waited for only to run (condition = "started") releases its dependent when
    it is spawned, not when it is ready: the path follows whichever released it last."""
    services = {
        "db": {"depends_on": [], "spawned_at": 0.05, "ready_at": 0.9},
        "cache": {"depends_on": [], "spawned_at": 0.05, "ready_at": 0.3},
        "app": {"depends_on": ["db", "cache"], "started_after": list(started_after), "ready_at": 1.2},
    }
    assert critical_path(services) == expected


def test_waterfall_says_what_started_after_a_start() -> None:
    run = {"total_startup_seconds": 1.0, "services": {
        "db": {"level": 0, "started_at": 0.0, "spawned_at": 0.05, "ready_at": 0.9, "startup_seconds": 0.9,
               "depends_on": []},
        "app": {"level": 1, "started_at": 0.06, "ready_at": 0.5, "startup_seconds": 0.44, "depends_on": ["db"],
                "started_after": ["db"]}}}
    assert "(after db started)" in render_svg(run, budget_seconds=25)


def _health(probes: int, failures: int, p50: float, p95: float, transitions: list[tuple[str, float]]) -> dict[str, Any]:
    return {"probes": probes, "failures": failures, "response_ms": {"p50": p50, "p95": p95}, "last_probe": "ok",
            "transitions": [{"service": "db", "kind": k, "at": at, "detail": ""} for k, at in transitions]}


@pytest.mark.parametrize(("shared", "cpu"), [(True, 2.0), (False, 3.0)])
def test_merge_health_of_xdist_workers(shared: bool, cpu: float) -> None:
    """Workers' health merges: probes and failures summed, transitions in time order and each
    once, the median p50 and the highest p95; peak memory the highest; CPU the highest for one
    shared process, summed for one process per worker; an in-process 'n/a' yields to numbers."""
    from pytest_unified_launcher.report import merge_health

    a = {"health": {"db": _health(10, 1, 1.0, 5.0, [("ready", 1.0), ("died", 3.0)])},
         "resources": {"db": {"rss_peak_bytes": 100, "cpu_seconds": 1.0, "samples": 2},
                       "api": {"n/a": "in-process"}}}
    b = {"health": {"db": _health(4, 0, 3.0, 4.0, [("ready", 1.0), ("unhealthy", 2.0)])},
         "resources": {"db": {"rss_peak_bytes": 300, "cpu_seconds": 2.0, "samples": 1}}}
    health, resources = merge_health([a, b], shared=shared)
    assert health["db"]["probes"] == 14 and health["db"]["failures"] == 1
    assert health["db"]["response_ms"] == {"p50": 2.0, "p95": 5.0}
    assert [t["kind"] for t in health["db"]["transitions"]] == ["ready", "unhealthy", "died"]
    assert resources["db"]["rss_peak_bytes"] == 300 and resources["db"]["cpu_seconds"] == cpu
    assert resources["db"]["samples"] == 3 and "n/a" in resources["api"]


@pytest.mark.parametrize(("resources", "shown"), [
    ({}, "-"),
    ({"db": {"n/a": "in-process"}}, "n/a"),
    ({"db": {"rss_peak_bytes": 3 * 2**20 + 2**19}}, "3.5"),
])
def test_peak_memory_cell(resources: dict[str, Any], shown: str) -> None:
    """The summary's peak MiB: a number, n/a for an in-process app, - when never sampled."""
    from pytest_unified_launcher.report import peak_mib

    assert peak_mib(resources, "db") == shown


def test_health_lines_show_notable_transitions_only() -> None:
    """ready and stopped are every service's: only unhealthy, recovered, died and restarted are
    listed, with the clock time and, for the bad ones, why; a quiet service has no line."""
    import time

    from pytest_unified_launcher.report import health_lines

    at = time.mktime((2026, 12, 2, 17, 35, 2, 0, 0, -1))
    report = {"health": {
        "quiet": _health(5, 0, 1, 1, [("ready", at), ("stopped", at + 1)]),
        "web": {**_health(5, 2, 1, 1, []), "transitions": [
            {"kind": "ready", "at": at, "detail": ""},
            {"kind": "unhealthy", "at": at + 1, "detail": "3 probes failed in a row"},
            {"kind": "recovered", "at": at + 2, "detail": "probe passed"}]},
    }}
    assert health_lines(report) == ["health: web: unhealthy 17:35:03 (3 probes failed in a row), recovered 17:35:04"]


@pytest.mark.parametrize(("pull_seconds", "drawn"), [(None, False), (2.0, True)])
def test_a_container_reports_its_image_and_the_waterfall_shows_its_pull_apart(pull_seconds: float | None,
                                                                              drawn: bool) -> None:
    """SPEC 8: ``runner = "container"`` with the image and its digest; a pull is its own phase."""
    from pytest_unified_launcher.report import run_to_json, timing_from_json

    timing = ServiceTiming(level=0, runner="container", started_at=0.0, spawned_at=2.1, ready_at=2.5,
                           startup_seconds=2.5, image="redis:7", image_digest="sha256:ab", pull_seconds=pull_seconds)
    run = RunTiming(total_startup_seconds=2.5, services={"cache": timing})
    row = run_to_json(run)["services"]["cache"]
    assert (row["runner"], row["image"], row["image_digest"], row["pull_seconds"]) == \
        ("container", "redis:7", "sha256:ab", pull_seconds)
    assert timing_from_json(row) == timing  # what an xdist worker sends comes back whole
    assert "image" not in run_to_json(RunTiming(services={"p": _one().services["svc"]}))["services"]["p"]
    svg = ET.fromstring(render_svg(run_to_json(run), budget_seconds=25))
    pulls = [r for r in svg.iter("{http://www.w3.org/2000/svg}rect") if r.get("class") == "phase-pull"]
    assert len(pulls) == int(drawn)
    if drawn:  # from the start to the end of the pull, then the spawn phase after it
        spawn = next(r for r in svg.iter("{http://www.w3.org/2000/svg}rect") if r.get("class") == "phase-spawn")
        assert float(spawn.get("x", "0")) == pytest.approx(float(pulls[0].get("x", "0")) + float(pulls[0].get("width", "0")), abs=0.2)
        assert "image pull" in "".join(svg.itertext())
