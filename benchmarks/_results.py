"""From raw round reports to figures: per-run metrics, medians with spread, targets, tables."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

#: Emulator counters reported per job, and their column names.
REQUEST_KINDS = (
    ("submits", "submit"),
    ("streams_opened", "stream"),
    ("status_polls", "poll"),
    ("result_fetches", "result"),
    ("downloads", "download"),
    ("requests_total", "total"),
)


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (``p`` in 0..100); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def metrics(report: dict[str, Any], jobs: int) -> dict[str, float]:
    """The figures of one timed round.

    Job latency runs from the emulator receiving the submit to the client holding the
    result; completion latency from the emulator completing the job to the same moment.
    Both clocks are ``time.monotonic()``, which Linux keeps system-wide.
    """
    wall = report["wall"]
    before, after = report["before"], report["after"]
    stamps = after["jobs"]
    held = [(t, stamps[rid]) for rid, t in report["done"].items() if rid in stamps]
    latency = [(t - submitted) * 1000 for t, (submitted, _) in held]
    completion = [(t - done) * 1000 for t, (_, done) in held if done is not None]
    emulator_cpu = after["cpu"] - before["cpu"]
    # Busy time of the whole machine that neither process accounts for: other processes (and
    # this driver, which sleeps meanwhile). The child's CPU spans its timed round only, a
    # little shorter than the machine's window, so a few % remain even on an idle machine.
    other = after["machine_busy"] - before["machine_busy"] - report["cpu"] - emulator_cpu
    out = {
        "wall": wall,
        "jobs_per_s": jobs / wall,
        "cpu_ms_per_job": report["cpu"] * 1000 / jobs,
        "lat_p50": percentile(latency, 50),
        "lat_p99": percentile(latency, 99),
        "done_p50": percentile(completion, 50),
        "done_p99": percentile(completion, 99),
        "rss_mb": report["maxrss_kb"] / 1024,
        "client_cpu_pct": report["cpu"] / wall * 100,
        "emu_cpu_pct": emulator_cpu / wall * 100,
        "other_cpu_pct": max(0.0, other) / wall * 100,
        "steal_pct": (after["machine_steal"] - before["machine_steal"]) / wall * 100,
        "mb_per_s": report["bytes"] / 1e6 / wall,
        "failed": report["failed"],
    }
    for key, name in REQUEST_KINDS:
        out[f"req_{name}"] = (after[key] - before[key]) / jobs
    return out


@dataclass
class Summary:
    """The repeats of one contender in one case: each metric's median, min and max."""

    contender: str
    runs: list[dict[str, float]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def median(self, key: str) -> float:
        # A run has the figures its scenario measures (a cold start has only its wall time).
        values = [v for r in self.runs if not math.isnan(v := r.get(key, math.nan))]
        return statistics.median(values) if values else math.nan

    def spread(self, key: str) -> tuple[float, float]:
        values = [v for r in self.runs if not math.isnan(v := r.get(key, math.nan))]
        return (min(values), max(values)) if values else (math.nan, math.nan)


def fmt(value: float, digits: int = 1) -> str:
    if math.isnan(value):
        return "-"
    if abs(value) >= 100:
        digits = 0
    return f"{value:,.{digits}f}"


def cell(summary: Summary, key: str, digits: int = 1) -> str:
    """``median (min-max)``, or just the median for a single run."""
    median = fmt(summary.median(key), digits)
    if len(summary.runs) < 2:
        return median
    low, high = summary.spread(key)
    return f"{median} ({fmt(low, digits)}-{fmt(high, digits)})"


def requests_cell(summary: Summary) -> str:
    """Requests per job by kind, the kinds that occurred only."""
    parts = []
    for _, name in REQUEST_KINDS[:-1]:
        value = summary.median(f"req_{name}")
        if value >= 0.005:
            parts.append(f"{value:.2f} {name}")
    return ", ".join(parts) + f" = {summary.median('req_total'):.2f}"


#: Every case's summaries, by case key (``scenario/label``) and contender.
Results = dict[str, dict[str, Summary]]


def find(results: Results, scenario: str, index: int = 0) -> dict[str, Summary] | None:
    """The ``index``-th case of a scenario, or None when it did not run."""
    found = [v for k, v in results.items() if k.startswith(scenario + "/")]
    return found[index] if len(found) > index else None


@dataclass(frozen=True)
class Column:
    title: str
    render: Callable[[Summary], str]


def col(title: str, key: str, digits: int = 1) -> Column:
    return Column(title, lambda s: cell(s, key, digits))


JOB_COLUMNS = (
    col("wall s", "wall", 2),
    col("jobs/s", "jobs_per_s"),
    col("CPU ms/job", "cpu_ms_per_job", 2),
    col("job latency p50 ms", "lat_p50"),
    col("p99 ms", "lat_p99"),
    col("completion p50 ms", "done_p50", 2),
    col("p99 ms", "done_p99", 1),
    Column("HTTP requests/job", requests_cell),
    col("peak RSS MB", "rss_mb"),
    col("client CPU %", "client_cpu_pct", 0),
    col("emulator CPU %", "emu_cpu_pct", 0),
    col("other load %", "other_cpu_pct", 0),
)
MEMORY_COLUMNS = (
    col("wall s", "wall", 2),
    col("jobs/s", "jobs_per_s"),
    col("CPU ms/job", "cpu_ms_per_job", 2),
    col("peak RSS MB", "rss_mb"),
    Column("HTTP requests/job", requests_cell),
    col("emulator CPU %", "emu_cpu_pct", 0),
    col("other load %", "other_cpu_pct", 0),
)
DOWNLOAD_COLUMNS = (
    col("wall s", "wall", 2),
    col("MB/s", "mb_per_s", 0),
    col("CPU ms/file", "cpu_ms_per_job", 1),
    col("peak RSS MB", "rss_mb"),
    col("emulator CPU %", "emu_cpu_pct", 0),
    col("other load %", "other_cpu_pct", 0),
)


def table(summaries: Iterable[Summary], columns: Sequence[Column]) -> str:
    """A Markdown table, one row per contender (readable as plain text too)."""
    rows = [["contender", *(c.title for c in columns)]]
    for summary in summaries:
        failed = summary.median("failed")
        name = summary.contender + (f" ({failed:.0f} FAILED)" if failed else "")
        rows.append([name, *(c.render(summary) for c in columns)])
    return markdown(rows)


def markdown(rows: Sequence[Sequence[str]]) -> str:
    """Rows (the first is the header) as an aligned Markdown table."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "| " + " | ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) + " |"
        for row in rows
    ]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


@dataclass(frozen=True)
class Check:
    """One target: what was compared, the figures, and whether it holds."""

    name: str
    measured: str
    target: str
    ok: bool | None  # None: could not be measured in this run

    @property
    def verdict(self) -> str:
        return {True: "PASS", False: "FAIL", None: "n/a"}[self.ok]


def ratio_check(name: str, value: float, base: float, limit: float, *, at_most: bool) -> Check:
    """``value / base`` against ``limit`` (at most, or at least)."""
    if math.isnan(value) or math.isnan(base) or base == 0:
        return Check(name, "not measured", f"{'≤' if at_most else '≥'} {limit}x", None)
    ratio = value / base
    ok = ratio <= limit if at_most else ratio >= limit
    measured = f"{ratio:.2f}x ({fmt(value, 2)} vs {fmt(base, 2)})"
    return Check(name, measured, f"{'≤' if at_most else '≥'} {limit}x", ok)


def bound_check(name: str, value: float, limit: float, unit: str) -> Check:
    if math.isnan(value):
        return Check(name, "not measured", f"≤ {limit} {unit}", None)
    return Check(name, f"{fmt(value, 2)} {unit}", f"≤ {limit} {unit}", value <= limit)


def checks_table(checks: Sequence[Check]) -> str:
    rows = [["target", "measured", "goal", "verdict"]]
    rows += [[c.name, c.measured, c.target, c.verdict] for c in checks]
    return markdown(rows)
