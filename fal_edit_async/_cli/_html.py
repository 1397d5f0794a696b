"""The HTML report: one self-contained page of a run, each input beside its outputs.

Written by ``--report PAGE`` when a run ends (Ctrl-C too), and by ``fal-edit report JOURNAL``
from a journal. The page needs no network: styles and the filter script are inline, and images
are linked by paths relative to the page, so the page and its images can be moved or shared
together. Everything shown is escaped (a file may be called ``<script>.png``).
"""

from __future__ import annotations

import html
import os
import re
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from decimal import Decimal
from pathlib import Path, PurePath
from typing import Any
from urllib.parse import quote_from_bytes

import attrs

from .. import EditImageInput, JournalEntry, JournalState
from ._inputs import Planned
from ._messages import message, next_step
from ._progress import OUTCOMES, Progress, duration
from ._report import outputs

__all__ = [
    "Row",
    "render",
    "rows_from_journal",
    "rows_from_run",
    "write_journal_report",
    "write_report",
]


@attrs.frozen(kw_only=True)
class Row:
    """One item of the report, as shown."""

    key: str
    outcome: str
    prompt: str = ""
    options: Mapping[str, Any] = attrs.field(factory=dict)
    inputs: Sequence[str] = ()
    outputs: Sequence[str] = ()
    cost: Decimal = Decimal(0)
    seconds: float | None = None
    request_id: str | None = None
    logs: Sequence[str] = ()
    error: str | None = None
    next_step: str | None = None
    line: int | None = None
    #: False when the inputs are not usable images (empty, fake): linked, not shown.
    viewable: bool = True


_OPTION_NAMES = (
    "image_size",
    "quality",
    "background",
    "input_fidelity",
    "output_format",
    "num_images",
    "sync_mode",
    "endpoint",
)


def _options(input: EditImageInput | Mapping[str, Any] | None) -> dict[str, Any]:
    if input is None:
        return {}
    get = input.get if isinstance(input, Mapping) else lambda n: getattr(input, n, None)
    shown = {}
    for name in _OPTION_NAMES:
        value = get(name)
        if value is not None:
            shown[name] = getattr(value, "value", value)
    return shown


def _source(source: object) -> str:
    if isinstance(source, bytes | bytearray | memoryview):
        return f"<{len(source)} bytes>"
    return os.fspath(source) if isinstance(source, PurePath) else str(source)


def rows_from_run(planned: Sequence[Planned], progress: Progress, *, journal: bool) -> list[Row]:
    """Every item of a run in the order given: finished ones as they ended, the rest as
    ``not started``."""
    rows = []
    for item in planned:
        finished = progress.finished_items.get(item.key)
        input = item.input
        base: dict[str, Any] = {
            "key": item.key,
            "prompt": input.prompt if input is not None else "",
            "options": _options(input),
            "inputs": [_source(s) for s in input.image_urls] if input else list(item.shown),
            "line": item.line,
            "viewable": input is not None,
        }
        if finished is None:
            active = progress.active.get(item.key)
            state = "in flight" if active else "not started"
            rid = active.request_id if active else None
            rows.append(Row(outcome=state, request_id=rid, **base))
            continue
        result = finished.result
        error = message(result.error) if result.error is not None else None
        step = None
        if finished.outcome != "done":
            step = next_step(result, finished.outcome, journal=journal, line=item.line)
        rows.append(
            Row(
                outcome=finished.outcome,
                outputs=outputs(result),
                cost=result.cost,
                seconds=finished.seconds,
                request_id=result.request_id,
                logs=finished.logs,
                error=error if error is not None else (str(item.error) if item.error else None),
                next_step=step,
                **base,
            )
        )
    return rows


_JOURNAL_OUTCOMES = {
    JournalState.DOWNLOADED: "done",
    JournalState.COMPLETED: "done",
    JournalState.SUBMITTED: "in flight",
    JournalState.CANCEL_REQUESTED: "interrupted",
    JournalState.CANCELLED: "cancelled",
    JournalState.UNSENT: "not submitted",
    JournalState.FAILED: "failed",
    JournalState.UNKNOWN: "unknown",
    JournalState.SUBMITTING: "in flight",
}


def rows_from_journal(entries: Iterable[JournalEntry]) -> list[Row]:
    """The journal's items. It keeps local inputs by their hash, not their path, so only
    URL inputs can be shown; outputs are shown from the files it recorded, or their URLs."""
    rows = []
    for entry in sorted(entries, key=lambda e: (e.sent_at or e.updated_at, e.key)):
        described = entry.input or {}
        sources = [str(s) for s in described.get("image_urls", ())]
        shown = [s.removeprefix("file:") for s in sources if not s.startswith("sha256:")]
        files = [str(f.path) for f in entry.files]
        urls = [str(i.get("url")) for i in (entry.output or {}).get("images", ()) if i.get("url")]
        name = entry.stem or (entry.files[0].path.stem if entry.files else None)
        rows.append(
            Row(
                key=name or entry.key,
                outcome=_JOURNAL_OUTCOMES.get(entry.state, entry.state.value),
                prompt=str(described.get("prompt", "")),
                options=_options(described),
                inputs=shown,
                outputs=files or urls,
                cost=entry.cost * entry.attempts if entry.request_id else Decimal(0),
                request_id=entry.request_id,
                error=entry.error,
            )
        )
    return rows


def _href(target: str, page: Path) -> str | None:
    """A link to an image from the page: URLs as they are, files relative to the page."""
    if target.startswith(("http://", "https://", "data:")):
        return target
    if target.startswith("<"):
        return None  # bytes given in memory: nothing to link to
    path = Path(target).absolute()
    relative = os.path.relpath(path, page.absolute().parent)
    # The name's own bytes, percent-encoded: a name that is not UTF-8 (``caf\xe9.png``, held
    # as a surrogate escape) still links to its file.
    return quote_from_bytes(os.fsencode(Path(relative).as_posix()))


def _images(targets: Sequence[str], page: Path, role: str, *, viewable: bool = True) -> str:
    parts = []
    for target in targets:
        href = _href(target, page)
        label = html.escape(PurePath(target).name if "://" not in target else target)
        if href is not None and not viewable:  # not an image: a link to the file, no <img>
            src = html.escape(href, quote=True)
            parts.append(
                f'<figure class="{role}"><a href="{src}">{label}</a>'
                "<figcaption>not an image</figcaption></figure>"
            )
            continue
        if href is None:
            parts.append(f'<figure class="{role}"><figcaption>{label}</figcaption></figure>')
            continue
        src = html.escape(href, quote=True)
        parts.append(
            f'<figure class="{role}"><a href="{src}"><img src="{src}" alt="{label}"></a>'
            f"<figcaption>{label}</figcaption></figure>"
        )
    return "".join(parts) or f'<p class="none">no {role}</p>'


def _item(row: Row, page: Path) -> str:
    esc = html.escape
    facts = [("state", row.outcome)]
    if row.request_id:
        facts.append(("request id", row.request_id))
    if row.cost:
        facts.append(("cost", f"~${row.cost:.2f}"))
    if row.seconds is not None:
        facts.append(("duration", duration(row.seconds)))
    if row.line is not None:
        facts.append(("manifest line", str(row.line)))
    facts += [(name, str(value)) for name, value in row.options.items()]
    dl = "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in facts)
    error = f'<p class="error">{esc(row.error)}</p>' if row.error else ""
    step = f'<p class="next">Next: {esc(row.next_step)}</p>' if row.next_step else ""
    logs = ""
    if row.logs:
        lines = esc("\n".join(row.logs))
        logs = f"<details><summary>{len(row.logs)} log lines</summary><pre>{lines}</pre></details>"
    return (
        f'<article class="item" data-state="{esc(row.outcome, quote=True)}">'
        f"<h2>{esc(row.key)}</h2>"
        f'<p class="prompt">{esc(row.prompt)}</p>'
        f'<div class="pair"><div class="side"><h3>input</h3>'
        f"{_images(row.inputs, page, 'input', viewable=row.viewable)}</div>"
        f'<div class="side"><h3>output</h3>{_images(row.outputs, page, "output")}</div></div>'
        f"<dl>{dl}</dl>{error}{step}{logs}</article>"
    )


_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:0;background:#f6f6f4;color:#222}
header{padding:16px 24px;background:#fff;border-bottom:1px solid #ddd;position:sticky;top:0}
h1{font-size:20px;margin:0 0 6px}h2{font-size:16px;margin:0 0 4px;word-break:break-all}
h3{font-size:12px;text-transform:uppercase;color:#777;
margin:0 0 4px}
.totals{margin:4px 0}.filters button{margin:4px 4px 0 0;padding:4px 10px;border:1px solid #bbb;
background:#fff;border-radius:12px;cursor:pointer}
.filters button[aria-pressed=true]{background:#222;
color:#fff}main{display:grid;grid-template-columns:repeat(auto-fill,minmax(420px,1fr));gap:16px;
padding:16px 24px}.item{background:#fff;border:1px solid #ddd;border-radius:8px;padding:12px}
.item[data-state=failed],.item[data-state=unknown]{border-color:#d33}
.pair{display:flex;gap:8px}.side{flex:1;min-width:0}figure{margin:0 0 6px}
img{width:100%;max-height:260px;object-fit:contain;display:block;background:#eee}
figcaption{font-size:11px;color:#666;word-break:break-all}dl{display:grid;
grid-template-columns:max-content 1fr;gap:0 8px;font-size:12px;margin:8px 0 0}dt{color:#777}
dd{margin:0;word-break:break-all}.error{color:#b00;white-space:pre-wrap}.next{color:#555}
.prompt{font-style:italic;margin:0 0 8px}pre{white-space:pre-wrap;font-size:11px}
.none{color:#999}.emulated{color:#a60}
"""

# The filter: buttons by state, also read from and written to the URL's #state=... part,
# so a link can open the page filtered.
_JS = """
(function(){
  var items=document.querySelectorAll('.item');
  var buttons=document.querySelectorAll('.filters button');
  function show(state){
    items.forEach(function(item){
      item.hidden = state!=='all' && item.dataset.state!==state;});
    buttons.forEach(function(b){b.setAttribute('aria-pressed', b.dataset.state===state);});
    document.getElementById('shown').textContent=
      document.querySelectorAll('.item:not([hidden])').length;
  }
  buttons.forEach(function(b){b.addEventListener('click',function(){
    history.replaceState(null,'','#state='+encodeURIComponent(b.dataset.state));
    show(b.dataset.state);});});
  var m=/state=([^&]+)/.exec(location.hash);
  show(m?decodeURIComponent(m[1]):'all');
})();
"""


def render(rows: Sequence[Row], page: Path, *, title: str, totals: Sequence[str]) -> str:
    """The whole page."""
    esc = html.escape
    counts = Counter(row.outcome for row in rows)
    order = [s for s in (*OUTCOMES, "in flight", "not started") if counts[s]]
    order += sorted(s for s in counts if s not in order)
    buttons = [f'<button data-state="all">all ({len(rows)})</button>']
    buttons += [
        f'<button data-state="{esc(s, quote=True)}">{esc(s)} ({counts[s]})</button>' for s in order
    ]
    lines = "".join(f'<p class="totals">{esc(t)}</p>' for t in totals)
    items = "".join(_item(row, page) for row in rows)
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>{esc(title)}</title><style>{_CSS}</style></head><body>"
        f"<header><h1>{esc(title)}</h1>{lines}"
        f'<div class="filters">{"".join(buttons)}'
        f' <span class="count"><span id="shown">{len(rows)}</span> shown</span></div></header>'
        f"<main>{items}</main><script>{_JS}</script></body></html>\n"
    )


#: Lone surrogates: the bytes of a name that is not UTF-8, which no UTF-8 page can hold.
_SURROGATE = re.compile("[\ud800-\udfff]")


def _write(page: Path, text: str) -> None:
    page.parent.mkdir(parents=True, exist_ok=True)
    part = page.with_name(f".{page.name}.part")
    # Links are percent-encoded already; a name shown as text gets U+FFFD for each bad byte.
    part.write_text(_SURROGATE.sub("\ufffd", text), encoding="utf-8")
    part.replace(page)  # never a half-written page


def write_report(
    page: Path,
    planned: Sequence[Planned],
    progress: Progress,
    *,
    emulator: bool = False,
    journal: bool = False,
) -> None:
    """Write the run's page to ``page`` (atomically)."""
    rows = rows_from_run(planned, progress, journal=journal)
    totals = [
        f"{progress.counts_text()} of {progress.total}",
        f"{progress.cost_text(emulator=emulator)} · {duration(progress.elapsed())}",
        "written " + time.strftime("%Y-%m-%d %H:%M:%S"),
    ]
    _write(page, render(rows, page, title="fal-edit report", totals=totals))


def write_journal_report(page: Path, entries: Sequence[JournalEntry], source: Path) -> int:
    """Write the page of a journal's items; returns how many it shows."""
    rows = rows_from_journal(entries)
    cost = sum((r.cost for r in rows), Decimal(0))
    counts = Counter(r.outcome for r in rows)
    text = ", ".join(f"{n} {s}" for s, n in counts.most_common())
    totals = [f"{text} of {len(rows)}", f"~${cost:.2f} estimated for the jobs fal accepted"]
    totals.append(f"journal: {source}")
    _write(page, render(rows, page, title=f"fal-edit report: {source.name}", totals=totals))
    return len(rows)
