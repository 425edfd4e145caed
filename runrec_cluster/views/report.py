"""``runrec report SWEEP``: one self-contained HTML page about a sweep.

No script, no CDN, no external file: inline CSS and SVG plots drawn here. The page has

- a summary (runs by state, the config keys that vary, the metrics);
- one plot per (metric, varied config key): each run a point (its tooltip names the run);
  runs without the metric (failed, cancelled) are drawn as crosses under the axis, so failures
  stay visible; numeric keys on a linear or log axis, other keys as categories;
- the runs table: state and cause, verdict, the hardware class and its verdict (a run on a node
  that did not meet its class is flagged ``HARDWARE MISMATCH``, and the summary counts and lists
  such runs), trust flags, varied config, metrics, and links between a run and its reruns
  (``rerun_of``), also for reruns made outside the sweep;
- failures and negative results listed with their cause, the failure message as recorded
  (already redacted by the job; cut to ``MESSAGE_CAP`` characters) and the latest annotation
  (verdict and note).

Integers print as integers: a column the query index holds as integers stays one on the page
also where pandas made it float (a run lacking the value).

Every text from a record is HTML-escaped.
"""

from __future__ import annotations

import html
import json
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from runrec_cluster.errors import RunrecError
from runrec_cluster.query.select import query
from runrec_cluster.query.sweeps import int_columns, metric_columns, sweep_frame, varied_config
from runrec_cluster.record import RunRecord

MESSAGE_CAP = 500  # characters of a failure message shown in the failures section
W, H = 420, 260
ML, MR, MT, MB = 58, 16, 28, 52
_STATE_COLOR = {
    "succeeded": "#2e7d32",
    "failed": "#c62828",
    "cancelled": "#ef6c00",
    "running": "#0277bd",
    "submitted": "#5c6bc0",
    "unknown": "#757575",
}

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#222}
h1{font-size:20px} h2{font-size:16px;margin-top:28px}
table{border-collapse:collapse;font-size:13px} th,td{border-bottom:1px solid #ddd;padding:3px 8px;text-align:left;white-space:nowrap}
th{background:#f4f4f4;position:sticky;top:0} td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.failed td{background:#fdecea} tr.negative td{background:#fff4e5} tr.suspect td,tr.retired td{background:#fff8d6}
tr.hwmismatch td{background:#fde7f3} .hwmismatch{color:#ad1457;font-weight:600}
.state-succeeded{color:#2e7d32}.state-failed{color:#c62828;font-weight:600}.state-cancelled{color:#ef6c00}
.plots{display:flex;flex-wrap:wrap;gap:12px} figure{margin:0;border:1px solid #e4e4e4;padding:4px}
figcaption{font-size:12px;color:#555} .muted{color:#777} code{font-size:12px}
svg text{font-size:11px;fill:#333}
"""


def _e(v: Any) -> str:
    return html.escape("" if v is None else str(v), quote=True)


def _isnum(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _isint(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, dict | list):
        return json.dumps(v, sort_keys=True)
    return str(v)


def _tick(t: float, digits: int = 4) -> str:
    """A tick label: a whole number in full (``886812345``, not ``8.868e+08``), else ``digits``
    significant digits."""
    if float(t).is_integer() and abs(t) < 1e15:
        return str(int(t))
    return f"{t:.{digits}g}"


def _ticks(lo: float, hi: float, n: int = 5, *, whole: bool = False) -> list[float]:
    """About ``n`` round tick values in [lo, hi]; only whole numbers when ``whole`` (an axis of
    integers: no tick between two seeds)."""
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / n
    if whole:
        raw = max(raw, 1.0)
    mag = 10 ** math.floor(math.log10(raw))
    mults = (1, 2, 5, 10) if whole else (1, 2, 2.5, 5, 10)
    step = next(m * mag for m in mults if m * mag >= raw)
    start = math.ceil(lo / step) * step
    out = []
    x = start
    while x <= hi + step * 1e-9:
        out.append(round(x, 12))
        x += step
    return out


@dataclass(frozen=True)
class _Axes:
    """Where a plot's values go: the ranges (log10 on a log x axis), categories of a
    non-numeric x, and the plotting area."""

    numeric_x: bool
    log_x: bool
    cats: list[str]
    x_lo: float
    x_hi: float
    y_lo: float
    y_hi: float
    whole_x: bool = False  # every value an integer: ticks only at whole numbers
    whole_y: bool = False
    pw: int = W - ML - MR
    ph: int = H - MT - MB

    def sx(self, x: Any) -> float:
        if self.numeric_x:
            v = math.log10(x) if self.log_x else x
            return ML + (v - self.x_lo) / (self.x_hi - self.x_lo) * self.pw
        i = self.cats.index(_fmt(x) or "(none)")
        return ML + (i + 0.5) / len(self.cats) * self.pw

    def sy(self, y: float) -> float:
        return MT + self.ph - (y - self.y_lo) / (self.y_hi - self.y_lo) * self.ph


def _axes(points: list[dict[str, Any]]) -> _Axes:
    xs = [p["x"] for p in points]
    numeric_x = all(_isnum(x) for x in xs if x is not None) and any(x is not None for x in xs)
    cats: list[str] = []
    if not numeric_x:
        for x in xs:
            label = _fmt(x) or "(none)"
            if label not in cats:
                cats.append(label)
    ys = [p["y"] for p in points if _isnum(p["y"])]
    y_lo, y_hi = (min(ys), max(ys)) if ys else (0.0, 1.0)
    if y_lo == y_hi:
        y_lo, y_hi = y_lo - 0.5, y_hi + 0.5
    pad = (y_hi - y_lo) * 0.06
    y_lo, y_hi = y_lo - pad, y_hi + pad
    log_x = False
    x_lo = x_hi = 0.0
    if numeric_x:
        nx = [x for x in xs if _isnum(x)]
        x_lo, x_hi = min(nx), max(nx)
        log_x = x_lo > 0 and x_hi / x_lo >= 100
        if log_x:
            x_lo, x_hi = math.log10(x_lo), math.log10(x_hi)
        if x_lo == x_hi:
            x_lo, x_hi = x_lo - 0.5, x_hi + 0.5
        xpad = (x_hi - x_lo) * 0.06
        x_lo, x_hi = x_lo - xpad, x_hi + xpad
    whole_x = numeric_x and not log_x and all(_isint(x) for x in xs if x is not None)
    whole_y = bool(ys) and all(_isint(y) for y in ys)
    return _Axes(numeric_x, log_x, cats, x_lo, x_hi, y_lo, y_hi, whole_x, whole_y)


def _grid(ax: _Axes, xkey: str, ykey: str) -> list[str]:
    """The frame, grid lines, tick labels and axis titles."""
    pw, ph = ax.pw, ax.ph
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="plot" width="{W}" height="{H}" '
        f'viewBox="0 0 {W} {H}" role="img" aria-label="{_e(ykey)} against {_e(xkey)}">',
        f'<rect x="{ML}" y="{MT}" width="{pw}" height="{ph}" fill="#fafafa" stroke="#ccc"/>',
    ]
    for t in _ticks(ax.y_lo, ax.y_hi, whole=ax.whole_y):
        y = ax.sy(t)
        parts.append(f'<line x1="{ML}" x2="{ML + pw}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eee"/>')
        parts.append(f'<text x="{ML - 4}" y="{y + 4:.1f}" text-anchor="end">{_tick(t)}</text>')
    if ax.numeric_x:
        for t in _ticks(ax.x_lo, ax.x_hi, whole=ax.whole_x):
            x = ML + (t - ax.x_lo) / (ax.x_hi - ax.x_lo) * pw
            label = _tick(10**t, 3) if ax.log_x else _tick(t)
            parts.append(
                f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{MT}" y2="{MT + ph}" stroke="#eee"/>'
            )
            parts.append(
                f'<text x="{x:.1f}" y="{MT + ph + 14}" text-anchor="middle">{label}</text>'
            )
    else:
        for c in ax.cats:
            x = ML + (ax.cats.index(c) + 0.5) / len(ax.cats) * pw
            parts.append(
                f'<text x="{x:.1f}" y="{MT + ph + 14}" text-anchor="middle">{_e(c[:14])}</text>'
            )
    log = " (log)" if ax.log_x else ""
    parts.append(f'<text x="{ML + pw / 2}" y="{H - 8}" text-anchor="middle">{_e(xkey)}{log}</text>')
    parts.append(
        f'<text transform="translate(12,{MT + ph / 2}) rotate(-90)" '
        f'text-anchor="middle">{_e(ykey)}</text>'
    )
    return parts


def _marks(ax: _Axes, points: list[dict[str, Any]], xkey: str, ykey: str) -> list[str]:
    """One point per run with a value; a cross under the axis for a run without one."""
    parts = []
    for p in points:
        if p["x"] is None and ax.numeric_x:
            continue
        x = ax.sx(p["x"])
        color = _STATE_COLOR.get(p["state"], "#555")
        tip = (
            f"{p['run_id']} [{p.get('sweep_index')}] {p['state']}: "
            f"{xkey}={_fmt(p['x'])}, {ykey}={_fmt(p['y'])}"
        )
        if _isnum(p["y"]):
            y = ax.sy(p["y"])
            parts.append(
                f'<circle class="pt" cx="{x:.1f}" cy="{y:.1f}" r="4" fill="{color}" '
                f'fill-opacity="0.8"><title>{_e(tip)}</title></circle>'
            )
        else:  # no value (failed, cancelled, still running): a cross under the axis
            y = MT + ax.ph + 26
            parts.append(
                f'<path class="nometric" d="M{x - 4:.1f},{y - 4} l8,8 m0,-8 l-8,8" stroke="{color}" '
                f'stroke-width="2"><title>{_e(tip)} (no value)</title></path>'
            )
    return parts


def plot_svg(points: list[dict[str, Any]], xkey: str, ykey: str) -> str:
    """A scatter plot of ``ykey`` against ``xkey``; each point dict has run_id, state, x, y."""
    ax = _axes(points)
    return "".join([*_grid(ax, xkey, ykey), *_marks(ax, points, xkey, ykey), "</svg>"])


@dataclass
class _Page:
    """What the page is drawn from: the sweep's rows, the reruns made outside it, the varied
    config keys and the metrics."""

    store_root: str
    sweep_id: str
    rows: list[dict[str, Any]]
    extra: list[dict[str, Any]]
    ids: set[str]
    varied: list[str]
    metrics: list[str]
    page_ids: set[str] = field(init=False)  # every run with a row on the page

    def __post_init__(self) -> None:
        self.page_ids = {r["run_id"] for r in self.all_rows}

    @property
    def all_rows(self) -> list[dict[str, Any]]:
        return self.rows + self.extra

    def link(self, rid: str) -> str:
        label = _e(rid[:12])
        return (
            f'<a href="#run-{_e(rid)}">{label}</a>'
            if rid in self.page_ids
            else f"<code>{label}</code>"
        )


def sweep_report(store: Any, sweep: str, index_dir: Any = None) -> tuple[str, dict[str, Any]]:
    """(HTML text, {sweep_id, runs, plots}) for the sweep whose id starts with ``sweep``."""
    sweep_id, df = sweep_frame(store, sweep, index_dir)
    ids = set(df["run_id"])
    all_df = query(store, refresh=False, index_dir=index_dir)
    outside = all_df[
        ~all_df["run_id"].isin(ids)
        & (all_df["rerun_of"].isin(ids) | all_df["rerun_root"].isin(ids))
    ]
    ints = int_columns(store, index_dir)
    page = _Page(
        store_root=store.root,
        sweep_id=sweep_id,
        rows=[_clean(r, ints) for r in df.to_dict(orient="records")],
        extra=[_clean(r, ints) for r in outside.to_dict(orient="records")],
        ids=ids,
        varied=varied_config(df),
        metrics=metric_columns(df),
    )
    out = _summary(page)
    plots, nplots = _plots(page)
    out += plots
    out += _runs_table(page)
    out += _failures(page, store)
    out.append(
        "<p class='muted'>Details: <code>runrec show RUN</code>; rerun: "
        "<code>runrec rerun RUN</code>.</p></body></html>"
    )
    return "\n".join(out), {"sweep_id": sweep_id, "runs": len(page.rows), "plots": nplots}


def _summary(page: _Page) -> list[str]:
    states: dict[str, int] = {}
    for r in page.rows:
        states[r["state"]] = states.get(r["state"], 0) + 1
    sweep_id = page.sweep_id
    by_state = ", ".join(
        f"<span class='state-{_e(k)}'>{v} {_e(k)}</span>" for k, v in sorted(states.items())
    )
    varied = _e(", ".join(page.varied) or "nothing")
    metrics = _e(", ".join(page.metrics) or "none")
    generated = (
        f" <span class='muted'>Generated {datetime.now(UTC):%Y-%m-%d %H:%M} UTC from "
        f"{_e(page.store_root)}.</span></p>"
    )
    return [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>sweep {_e(sweep_id[:12])}: runrec report</title><style>{CSS}</style></head><body>",
        f"<h1>Sweep <code>{_e(sweep_id)}</code></h1>",
        f"<p id='summary'>{len(page.rows)} runs: {by_state}. Varied: {varied}. Metrics: {metrics}."
        + generated,
        *_hardware_summary(page),
    ]


def _hardware_summary(page: _Page) -> list[str]:
    """The runs whose node did not meet their hardware class, each with what did not match."""
    bad = [r for r in page.all_rows if r.get("hardware.match") is False]
    if not bad:
        return []
    items = "".join(
        f"<li>{page.link(r['run_id'])} [{_e(_fmt(r.get('sweep_index')))}] "
        f"{_e(r['state'])}, class <code>{_e(r.get('hardware.class'))}</code>: "
        f"{_e(r.get('hardware.mismatches') or 'no detail recorded')}</li>"
        for r in bad
    )
    n = len(bad)
    return [
        f"<p id='hardware' class='hwmismatch'>HARDWARE MISMATCH: {n} run{'s' * (n != 1)} ran "
        "on a node that did not meet its hardware class; their results come from other "
        f"hardware.</p><ul class='hwmismatch'>{items}</ul>"
    ]


def _hardware_cell(r: dict[str, Any]) -> str:
    """The hardware class and its verdict, short: ``a100: matched``, ``a100: MISMATCH``."""
    cls = r.get("hardware.class")
    if not cls:
        return ""
    match = r.get("hardware.match")
    if match is True:
        return f"{cls}: matched"
    if match is False:
        return f"{cls}: MISMATCH"
    return f"{cls}: placed by the scheduler" if r.get("hardware.placement") else f"{cls}"


def _plots(page: _Page) -> tuple[list[str], int]:
    """One plot per (metric, varied key), and how many."""
    if not (page.varied and page.metrics):
        return [
            "<p class='muted'>No plot: the sweep varies no config key, or records no metric.</p>"
        ], 0
    out = ["<h2>Metrics against the varied config</h2><div class='plots'>"]
    nplots = 0
    for m in page.metrics:
        for k in page.varied:
            pts = [
                {
                    "run_id": r["run_id"],
                    "sweep_index": r.get("sweep_index"),
                    "state": r["state"],
                    "x": r.get(k),
                    "y": r.get(m),
                }
                for r in page.rows
            ]
            out.append(
                f"<figure>{plot_svg(pts, k, m)}<figcaption>{_e(m)} against {_e(k)}"
                "</figcaption></figure>"
            )
            nplots += 1
    out.append("</div>")
    return out, nplots


def _runs_table(page: _Page) -> list[str]:
    reruns: dict[str, list[str]] = {}
    for r in page.all_rows:
        if r.get("rerun_of"):
            reruns.setdefault(r["rerun_of"], []).append(r["run_id"])
    hw = any(r.get("hardware.class") for r in page.all_rows)
    cols = ["sweep_index", "state", "cause", "verdict", *page.varied, *page.metrics]
    if hw:
        cols.insert(4, "hardware")
    out = ["<h2>Runs</h2><table id='runs'><thead><tr><th>run</th>"]
    out += [f"<th>{_e(c)}</th>" for c in cols]
    out.append("<th>flags</th><th>reruns</th></tr></thead><tbody>")
    for r in page.all_rows:
        cls = []
        if r["state"] == "failed":
            cls.append("failed")
        if r.get("negative"):
            cls.append("negative")
        if r.get("hardware.match") is False:
            cls.append("hwmismatch")
        cls += [f for f in ("retired", "suspect") if r.get(f)]
        out.append(
            f"<tr id='run-{_e(r['run_id'])}' class='{' '.join(cls)}'>"
            f"<td><code>{_e(r['run_id'][:12])}</code></td>"
        )
        for c in cols:
            v = _hardware_cell(r) if c == "hardware" else r.get(c)
            klass = (
                " class='num'" if _isnum(v) else (f" class='state-{_e(v)}'" if c == "state" else "")
            )
            out.append(f"<td{klass}>{_e(_fmt(v))}</td>")
        flags = [f.upper() for f in ("retired", "suspect") if r.get(f)]
        if r.get("hardware.match") is False:
            flags.append("HARDWARE MISMATCH")
        if r.get("negative"):
            flags.append("negative")
        if r["run_id"] not in page.ids:
            flags.append("outside the sweep")
        out.append(f"<td>{_e(', '.join(flags))}</td><td>")
        links = []
        if r.get("rerun_of"):
            links.append("rerun of " + page.link(r["rerun_of"]))
        if reruns.get(r["run_id"]):
            links.append("rerun as " + ", ".join(page.link(x) for x in reruns[r["run_id"]]))
        out.append("; ".join(links) + "</td></tr>")
    out.append("</tbody></table>")
    return out


def _failures(page: _Page, store: Any) -> list[str]:
    bad = [r for r in page.all_rows if r["state"] in ("failed", "cancelled") or r.get("negative")]
    out = ["<h2 id='failures'>Failures and negative results</h2>"]
    if not bad:
        return [*out, "<p>None.</p>"]
    out.append("<ul>")
    for r in bad:
        rec = _record(store, r["run_id"])
        why = ", ".join(
            _e(x)
            for x in (
                r.get("cause"),
                r.get("failure_type"),
                r.get("verdict") and f"verdict {r['verdict']}",
            )
            if x
        )
        out.append(
            f"<li id='failure-{_e(r['run_id'])}'>{page.link(r['run_id'])} "
            f"[{_e(_fmt(r.get('sweep_index')))}] {_e(r['state'])}: "
            f"<span class='cause'>{why}</span>{_failure_details(rec)}</li>"
        )
    out.append("</ul>")
    return out


def _record(store: Any, run_id: str) -> RunRecord | None:
    """The run's record (for its failure message and annotations); None when it cannot be
    read (the row still shows what the index holds)."""
    try:
        rec: RunRecord = store.load(run_id)
    except RunrecError:
        return None
    return rec


def _failure_details(rec: RunRecord | None) -> str:
    """The recorded failure message and the latest annotation's verdict and note, as HTML."""
    if rec is None:
        return " <span class='muted'>(record unreadable: see <code>runrec fsck</code>)</span>"
    parts = []
    msg = rec.failure.message.strip() if rec.failure else ""
    if msg:
        cut = msg if len(msg) <= MESSAGE_CAP else msg[:MESSAGE_CAP] + "…"
        parts.append(f"<br><code class='message'>{_e(cut)}</code>")
    if rec.annotations:
        a = rec.annotations[-1]
        by = f" ({_e(a.by)})" if a.by else ""
        note = f": <span class='note'>{_e(a.note)}</span>" if a.note else ""
        parts.append(f"<br><span class='annotation'>annotated {_e(a.verdict)}{by}{note}</span>")
    return "".join(parts)


def _clean(row: dict[str, Any], ints: set[str]) -> dict[str, Any]:
    """pandas values to plain Python (NaN to None, numpy scalars to Python, a whole float in a
    column of ``ints`` to an int)."""
    out = {}
    for k, v in row.items():
        if hasattr(v, "item") and not isinstance(v, list | dict | str):
            try:
                v = v.item()
            except (ValueError, AttributeError):
                pass
        if isinstance(v, float) and math.isnan(v):
            v = None
        elif k in ints and isinstance(v, float) and v.is_integer():
            v = int(v)
        out[k] = v
    return out
