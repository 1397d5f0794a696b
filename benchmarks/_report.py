"""Publishing a run: the machine it ran on, Markdown tables, the figure, and results.json."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

from _plot import BarSpec, LineSpec, draw_figure
from _procs import HERE, PYTHON
from _results import (
    DOWNLOAD_COLUMNS,
    JOB_COLUMNS,
    MEMORY_COLUMNS,
    Check,
    Results,
    Summary,
    cell,
    checks_table,
    col,
    find,
    markdown,
    table,
)

RESULTS_MD, RESULTS_PNG, RESULTS_JSON = (
    HERE / "RESULTS.md",
    HERE / "results.png",
    HERE / "results.json",
)


def machine() -> dict[str, str]:
    """What the figures were measured on."""
    model = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "CPU": model,
        "cores": str(os.cpu_count()),
        "OS": platform.platform(),
        "Python": f"{platform.python_version()} ({platform.python_implementation()})",
    }
    for dist in ("fal-edit-async", "aiohttp", "anyio", "fal-client", "httpx"):
        try:
            info[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            info[dist] = "not installed"
    info["code under test"] = code_under_test()
    info["date"] = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return info


def code_under_test() -> str:
    """Where the child processes import fal_edit_async from, and its commit."""
    probe = "import fal_edit_async, pathlib; print(pathlib.Path(fal_edit_async.__file__).parent)"
    try:
        package = Path(_run([PYTHON, "-c", probe], cwd=HERE))
        commit = _run(["git", "-C", str(package), "rev-parse", "--short", "HEAD"])
        dirty = _run(["git", "-C", str(package), "status", "--porcelain", "."])
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not in a git checkout)"
    return f"{package.parent}, git {commit}" + (" + uncommitted changes" if dirty else "")


def _run(argv: list[str], cwd: Path | None = None) -> str:
    return subprocess.run(argv, capture_output=True, text=True, check=True, cwd=cwd).stdout.strip()


def sweep_tables(results: Results) -> str:
    """Jobs/s and CPU per job by concurrency: one row per contender, one column per level."""
    levels = {k.split("/", 1)[1]: v for k, v in results.items() if k.startswith("sweep/")}
    if not levels:
        return ""
    out = []
    for title, key, digits in (("jobs/s", "jobs_per_s", 1), ("CPU ms/job", "cpu_ms_per_job", 2)):
        rows = [[title, *levels]]
        for name in next(iter(levels.values())):
            rows.append([name, *(cell(s[name], key, digits) for s in levels.values())])
        out.append(markdown(rows))
    return "\n\n".join(out)


COLUMNS = {
    "throughput": JOB_COLUMNS,
    "sweep": JOB_COLUMNS,
    "memory": MEMORY_COLUMNS,
    "download": DOWNLOAD_COLUMNS,
    "pipeline": JOB_COLUMNS,
    "scale": MEMORY_COLUMNS,
    "coldstart": (col("wall s", "wall", 3),),
}


def scenario_sections(
    results: Results, scenarios: Sequence[str], descriptions: Mapping[str, tuple[str, str]]
) -> list[str]:
    parts = []
    for scenario in scenarios:
        title, text = descriptions[scenario]
        parts += [f"## {title}", "", text, ""]
        if scenario == "sweep":
            parts += [sweep_tables(results), ""]
        for key, summaries in results.items():
            if key.startswith(scenario + "/"):
                parts += [
                    f"### {key.split('/', 1)[1]}",
                    "",
                    table(summaries.values(), COLUMNS[scenario]),
                    "",
                ]
    return parts


NOTES = """\
Figures are the median of the repeats with the spread (min-max) in brackets. Each timed round
runs a fresh emulator process and a fresh contender process; the contender warms up with one
wave of jobs at full concurrency first (not with `--quick`), so its CPU time covers the timed
round only, while peak RSS (`VmHWM`) is the process's whole life (interpreter and imports
included).

* **job latency**: from the emulator receiving the submit to the client holding the result.
* **completion latency** (e): from the emulator marking the job COMPLETED to the client holding
  the result (both `time.monotonic()`, which Linux keeps system-wide).
* **HTTP requests/job**: the emulator's counters over the timed round, divided by jobs.
* **client CPU %**: the contender process's CPU time (all its threads) over the round's wall
  time; near 100 % the client's event loop (one core) is the bottleneck, and its wall time
  follows its CPU per job.
* **emulator CPU %**: the emulator process's CPU time over the round's wall time; near 100 %
  the emulator (one core) is the bottleneck, not the client.
* Contenders: `ours-edit` is `AsyncClient.edit()` per job under a CapacityLimiter;
  `ours-batch` is `edit_many()`; `fal-client` is the official `fal_client.AsyncClient.subscribe`
  (its defaults: polling every 0.1 s); `floor` is bare aiohttp doing the fewest requests
  (submit, SSE status stream, result). In (d), `ours-download` is
  `fal_edit_async._downloads.download_image` (its default, no SHA-256), `ours-download-sha256`
  the same with `checksum=True` (as a journaled batch), `bare-download` aiohttp
  `iter_chunked` with blocking writes.
"""


@dataclass
class Report:
    """A finished run: its figures, verdicts, and what is needed to publish them again."""

    results: Results
    checks: list[Check]
    scenarios: list[str]
    descriptions: Mapping[str, tuple[str, str]]
    command: str
    repeats: int
    info: dict[str, str]
    elapsed: float

    def markdown(self) -> str:
        parts = [
            "# Benchmark results",
            "",
            f"Written by `{self.command}` ({self.repeats} repeat"
            f"{'s' if self.repeats != 1 else ''}, {self.elapsed / 60:.1f} min) on "
            f"{self.info['date']}. Plot: `results.png`; raw figures: `results.json`.",
            "",
            "## Machine",
            "",
            markdown([["", ""], *([k, v] for k, v in self.info.items())]),
            "",
            "## Targets",
            "",
            checks_table(self.checks) if self.checks else "No target measured in this run.",
            "",
            *scenario_sections(self.results, self.scenarios, self.descriptions),
            "## Notes",
            "",
            NOTES,
        ]
        return "\n".join(parts)

    def caption(self) -> str:
        info = self.info
        return (
            f"{info['CPU']}, {info['cores']} cores, Python {info['Python']}, {info['date']}; "
            f"median of {self.repeats}, whiskers min-max"
        )

    def to_json(self) -> str:
        data = {
            "command": self.command,
            "scenarios": self.scenarios,
            "repeats": self.repeats,
            "elapsed": self.elapsed,
            "machine": self.info,
            "results": {
                key: {name: {"runs": s.runs, "errors": s.errors} for name, s in summaries.items()}
                for key, summaries in self.results.items()
            },
            "checks": [c.__dict__ for c in self.checks],
        }
        return json.dumps(data, indent=1) + "\n"

    @classmethod
    def from_json(
        cls,
        text: str,
        evaluate: Callable[[Results], list[Check]],
        descriptions: Mapping[str, tuple[str, str]],
    ) -> Report:
        """A saved run, with its verdicts worked out again by ``evaluate``."""
        data = json.loads(text)
        results = {
            key: {
                name: Summary(name, runs=entry["runs"], errors=entry["errors"])
                for name, entry in summaries.items()
            }
            for key, summaries in data["results"].items()
        }
        return cls(
            results=results,
            checks=evaluate(results),
            scenarios=data["scenarios"],
            descriptions=descriptions,
            command=data["command"],
            repeats=data["repeats"],
            info=data["machine"],
            elapsed=data["elapsed"],
        )

    def publish(self, *, with_json: bool = True) -> None:
        """Write RESULTS.md, results.png and (unless told not to) results.json."""
        written = [RESULTS_MD, RESULTS_PNG]
        RESULTS_MD.write_text(self.markdown())
        if with_json:
            RESULTS_JSON.write_text(self.to_json())
            written.append(RESULTS_JSON)
        figure(self.results, self.caption())
        print("wrote " + ", ".join(p.name for p in written), file=sys.stderr)


def point(summary: Summary, key: str) -> tuple[float, float, float]:
    low, high = summary.spread(key)
    return summary.median(key), low, high


def figure(results: Results, caption: str) -> None:
    panels: list[BarSpec | LineSpec] = []
    a = find(results, "throughput")
    if a is not None:
        for title, label, key in (
            ("(a) throughput", "jobs/s", "jobs_per_s"),
            ("(a) client CPU per job", "ms", "cpu_ms_per_job"),
        ):
            values = {("", n): point(s, key) for n, s in a.items()}
            panels.append(BarSpec(title, label, [""], list(a), values))
        values = {(p, n): point(s, f"done_{p}") for n, s in a.items() for p in ("p50", "p99")}
        panels.append(BarSpec("(e) completion latency", "ms", ["p50", "p99"], list(a), values))
    levels = {k.split("=", 1)[1]: v for k, v in results.items() if k.startswith("sweep/")}
    if levels:
        names = list(next(iter(levels.values())))
        series = {n: [point(s[n], "jobs_per_s") for s in levels.values()] for n in names}
        xs = [int(c) for c in levels]
        panels.append(LineSpec("(b) throughput by concurrency", "jobs/s", xs, series))
    memory = {k.split("/", 1)[1]: v for k, v in results.items() if k.startswith("memory/")}
    if memory:
        names = ["ours-batch", "floor"]
        values = {(g, n): point(s[n], "rss_mb") for g, s in memory.items() for n in names}
        panels.append(BarSpec("(c) peak RSS", "MB", list(memory), names, values))
    downloads = {k.split("/", 1)[1]: v for k, v in results.items() if k.startswith("download/")}
    if downloads:
        names = sorted({n for s in downloads.values() for n in s}, key=_download_order)
        values = {(g, n): point(s[n], "mb_per_s") for g, s in downloads.items() for n in s}
        panels.append(BarSpec("(d) download throughput", "MB/s", list(downloads), names, values))
    draw_figure(panels, RESULTS_PNG, caption)


def _download_order(name: str) -> int:
    order = ("ours-batch", "ours-download", "ours-download-sha256", "floor", "bare-download")
    return order.index(name) if name in order else len(order)
