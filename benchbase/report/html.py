"""The HTML report: one self-contained file (inline CSS, charts as inline SVG, no scripts and no
external requests) drawn from a `benchbase.report.model.Report`.

It opens with a header per run folder read (`benchbase.report.header`: versions, date, command,
budget, seeds, grid and machine). Charts are drawn with matplotlib's object API
(`matplotlib.figure.Figure` and the SVG canvas), never pyplot, so rendering touches no global figure
state and needs no display. Text in the SVGs stays text (``svg.fonttype = 'none'``), long curves
are thinned, and entry names are never shortened: beside the score bars they wrap, and the
legends are HTML lists under the charts (the browser wraps them; none is drawn over the curves).
Every entry keeps one colour, dash pattern and marker across all charts, the legends and the
tables' swatches, so curves that coincide stay apart. P(X > Y) is a matrix (an HTML table: row X,
column Y) on a diverging colour scale.
"""

from __future__ import annotations

import io
import math
import re
import textwrap
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from html import escape

import matplotlib
import numpy as np
from matplotlib.backends.backend_svg import FigureCanvasSVG
from matplotlib.colors import hsv_to_rgb, to_hex
from matplotlib.figure import Figure
from matplotlib.ticker import EngFormatter

from benchbase.formatting import DASH, count, duration, finite, size
from benchbase.report.header import (
    NOT_RECORDED,
    budget_text,
    grid_text,
    machine_text,
    seeds_text,
    versions_text,
    written_text,
)
from benchbase.report.model import (
    INTERVAL_RUNS,
    RELIABLE_RUNS,
    Curve,
    Estimate,
    GeneralisationCell,
    Report,
    coincident_profiles,
    fewest_runs,
    ranks,
)

__all__ = ["render_html"]

_MAX_POINTS = 120  # per curve or profile line in a chart; keeps the SVGs small

# Tableau 10, then the lighter Tableau 20 shades; beyond 20 entries, golden-ratio hues.
_PALETTE = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
    "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
    "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5",
    "#c49c94", "#f7b6d2", "#c7c7c7", "#dbdb8d", "#9edae5",
]  # fmt: skip

_METRIC_TEXT = {
    "final": "final evaluation score",
    "auc": "area under the learning curve",
}

_CSS = """
:root { color-scheme: light; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif;
       color: #1b1f24; background: #fff; margin: 0 auto; padding: 1.5rem 2rem 3rem;
       max-width: 1360px; }
h1 { font-size: 1.7rem; margin: 0 0 .3rem; }
h2 { font-size: 1.25rem; margin: 2.2rem 0 .6rem; padding-bottom: .25rem;
     border-bottom: 1px solid #d0d7de; }
p.note, figcaption, .muted { color: #57606a; }
table { border-collapse: collapse; margin: .4rem 0 1rem; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #d0d7de; padding: .3rem .55rem; text-align: right; vertical-align: top; }
td { white-space: nowrap; }
td.entry, td.est { white-space: normal; }
td.entry { min-width: 11rem; }
#leaderboard { font-size: 13px; }
#leaderboard th, #leaderboard td { padding: .3rem .4rem; }
.table-wrap { overflow-x: auto; max-width: 100%; }
th[colspan] { text-align: center; }
th { background: #f6f8fa; font-weight: 600; }
td.text, th.text { text-align: left; }
table.settings th { text-align: left; }
table.settings td { text-align: left; }
tr.baseline td { background: #fffbe6; }
tr.has-excluded td.excluded { background: #ffebe9; color: #a40e26; font-weight: 600; }
td.best { font-weight: 700; }
.ci { color: #57606a; font-size: .85em; white-space: nowrap; }
.runs { display: block; }
.swatch { display: inline-block; width: .8em; height: .8em; border-radius: 2px;
          margin-right: .4em; vertical-align: -.05em; }
.problems { border: 2px solid #cf222e; background: #ffebe9; border-radius: 6px;
            padding: .6rem 1rem; margin: 1rem 0; }
.problems h2 { color: #a40e26; border: 0; margin: 0 0 .3rem; }
.problems ul { margin: .2rem 0; padding-left: 1.3rem; }
.ok { border: 1px solid #2da44e; background: #dafbe1; border-radius: 6px;
      padding: .4rem 1rem; margin: 1rem 0; }
figure { margin: 1rem 0 1.6rem; }
figure svg { max-width: 100%; height: auto; display: block; }
figure svg * { stroke-linejoin: round; stroke-linecap: butt; }
figcaption { font-size: .92em; margin-top: .3rem; max-width: 70rem; }
code { font-family: ui-monospace, "DejaVu Sans Mono", monospace; font-size: .92em; overflow-wrap: anywhere; }
ul.sources { margin: .2rem 0; padding-left: 1.3rem; }
#runs { margin: .4rem 0 1rem; }
#runs p { margin: .2rem 0 .4rem; }
table.run-header { font-size: 13px; margin: .3rem 0 .7rem; max-width: 100%; }
table.run-header th { width: 7rem; }
table.run-header td { white-space: normal; overflow-wrap: anywhere; }
ul.legend { list-style: none; display: flex; flex-wrap: wrap; gap: .2rem 1.4rem; margin: .4rem 0 .2rem;
            padding: 0; font-size: .92em; }
ul.legend li { display: flex; align-items: center; gap: .45rem; min-width: 0; max-width: 100%; }
ul.legend .label { overflow-wrap: anywhere; }
svg.key { flex: none; }
table.matrix { font-size: 12.5px; }
table.matrix th.entry { white-space: normal; font-weight: 400; text-align: left; min-width: 9rem; }
table.matrix th.col { text-align: center; min-width: 3.2rem; }
table.matrix .num { font-weight: 700; margin-right: .2em; }
td.pcell { text-align: center; white-space: normal; min-width: 6rem; }
table.matrix.many td.pcell { min-width: 3.8rem; }
table.matrix.many th.entry { min-width: 7rem; }
td.pcell .ci { display: block; white-space: normal; }
td.pcell.dark { color: #fff; }
td.pcell.dark .ci { color: #fff; opacity: .85; }
td.pcell.diag, td.pcell.none { background: #f6f8fa; color: #8c959f; }
"""


# --------------------------------------------------------------------------- formatting


def _num(x: float | None) -> str:
    """A score-like number: 3 decimals for small magnitudes, fewer for large ones."""
    if not finite(x):
        return DASH
    x = float(x)
    if abs(x) < 10:
        return f"{x:.3f}"
    if abs(x) < 10_000:
        return f"{x:.1f}"
    return f"{x:.3g}"


def _estimate_html(est: Estimate | None, fmt=_num) -> str:
    """``value [low, high]`` with the interval in a muted span (``[n/a]`` without one: too few
    runs); an em dash where there is no value."""
    if est is None or not finite(est.value):
        return DASH
    value = escape(fmt(est.value))
    if finite(est.low) and finite(est.high):
        ci = f"[{escape(fmt(est.low))}, {escape(fmt(est.high))}]"
        return f'{value} <span class="ci">{ci}</span>'
    return f'{value} <span class="ci">[n/a]</span>'


def _estimate_text(est: Estimate | None) -> str:
    """Plain-text form of an estimate, for captions and chart labels."""
    if est is None or not finite(est.value):
        return DASH
    if finite(est.low) and finite(est.high):
        return f"{_num(est.value)} [{_num(est.low)}, {_num(est.high)}]"
    return f"{_num(est.value)} [n/a]"


def _few_runs(report: Report) -> int | None:
    """The fewest runs of a scored entry when below `RELIABLE_RUNS` (then no text reads a
    difference into the intervals), else None."""
    fewest = fewest_runs(report.leaderboard)
    return fewest if fewest is not None and fewest < RELIABLE_RUNS else None


def _chart_text(text: str, width: int | None = None) -> str:
    """An entry or family name as chart text: never shortened, wrapped onto lines of at most ``width``
    characters when given, and without mathtext (``$`` escaped)."""
    text = str(text)
    if width is not None and len(text) > width:
        text = "\n".join(textwrap.wrap(text, width, break_on_hyphens=False)) or text
    return text.replace("$", r"\$")


# --------------------------------------------------------------------------- colours and line styles


@dataclass(frozen=True)
class _Style:
    """How an entry is drawn in every chart: colour, dash pattern and marker, so that curves lying
    on top of each other stay apart (a dashed line over a solid one, markers at other points)."""

    colour: str
    dash: tuple[float, ...]  # on/off lengths in line widths; () is a solid line
    marker: str  # a matplotlib marker, drawn alike in the HTML legend's key


# Five dash patterns and six markers: the first 30 entries all differ in the pair.
_DASHES: tuple[tuple[float, ...], ...] = ((), (4.0, 1.6), (1.0, 1.4), (5.0, 1.5, 1.0, 1.5), (2.2, 1.4))
_MARKERS = ("o", "s", "^", "D", "v", "p")


def _colour(i: int) -> str:
    if i < len(_PALETTE):
        return _PALETTE[i]
    hue = (0.11 + 0.618_033_988_75 * i) % 1.0
    return to_hex(hsv_to_rgb((hue, 0.65, 0.8)))


def _entry_styles(report: Report) -> dict[str, _Style]:
    """One style per entry, in leaderboard order, then entries seen only in other parts."""
    names: list[str] = []
    seen: set[str] = set()

    def add(names_iter: Iterable[str]) -> None:
        for name in names_iter:
            if name not in seen:
                seen.add(name)
                names.append(name)

    add(row.entry for row in report.leaderboard)
    add(c.entry for c in report.curves)
    add(c.entry for c in report.training_curves)
    add(p.entry for p in report.profiles)
    add(cell.entry for cell in report.generalisation)
    for imp in report.improvements:
        add((imp.better, imp.worse))
    return {
        name: _Style(_colour(i), _DASHES[i % len(_DASHES)], _MARKERS[i % len(_MARKERS)]) for i, name in enumerate(names)
    }


def _line_kwargs(style: _Style, index: int, entries: int, points: int) -> dict:
    """matplotlib keywords for an entry's line: its colour and dashes, and markers at every point
    of a short line, else at about 8 points, shifted per entry so that coinciding lines put
    their markers at different places."""
    kwargs: dict = dict(color=style.colour, linewidth=1.8, marker=style.marker, markersize=4.5)
    kwargs["linestyle"] = (0, style.dash) if style.dash else "-"
    if points > 12:
        step = max(1, points // 8)
        kwargs["markevery"] = ((index * step) // max(1, entries) % step, step)
    return kwargs


# --------------------------------------------------------------------------- HTML legends


def _key_svg(style: _Style) -> str:
    """A small picture of an entry's line (colour, dashes, marker) for an HTML legend."""
    dash = ""
    if style.dash:
        dash = f' stroke-dasharray="{",".join(f"{2 * d:g}" for d in style.dash)}"'
    shapes = {
        "o": '<circle cx="17" cy="7" r="3.4"/>',
        "s": '<rect x="13.8" y="3.8" width="6.4" height="6.4"/>',
        "^": '<polygon points="17,3 21,10.5 13,10.5"/>',
        "D": '<polygon points="17,2.6 21.2,7 17,11.4 12.8,7"/>',
        "v": '<polygon points="13,3.5 21,3.5 17,11"/>',
        "p": '<polygon points="17,3 21,6 19.5,10.8 14.5,10.8 13,6"/>',
    }
    return (
        f'<svg class="key" width="34" height="14" viewBox="0 0 34 14" aria-hidden="true">'
        f'<line x1="1" y1="7" x2="33" y2="7" stroke="{style.colour}" stroke-width="2"{dash}/>'
        f'<g fill="{style.colour}">{shapes.get(style.marker, shapes["o"])}</g></svg>'
    )


def _legend_html(entries: Sequence[str], styles: dict[str, _Style], notes: dict[str, str] | None = None) -> str:
    """The legend as an HTML list under the chart: every entry's full name, wrapped by the browser
    (never shortened, never drawn over the curves), after a key of its line."""
    items = []
    for entry in entries:
        note = (notes or {}).get(entry)
        extra = f' <span class="muted">({escape(note)})</span>' if note else ""
        items.append(f'<li>{_key_svg(styles[entry])}<span class="label">{escape(entry)}{extra}</span></li>')
    return f'<ul class="legend">{"".join(items)}</ul>'


# --------------------------------------------------------------------------- SVG


_GID_RE = re.compile(r'\sid="[A-Za-z][A-Za-z0-9_.\-]*_\d+"')
_PATH_RE = re.compile(r'\sd="[^"]*"')
_FLOAT_RE = re.compile(r"-?\d+\.\d{3,}")


def _svg(fig: Figure, salt: str) -> str:
    """The figure as an inline ``<svg>`` element (no XML prolog, DOCTYPE or metadata).

    ``salt`` seeds the ids matplotlib gives clip paths and markers, so several SVGs can share one
    HTML document without clashing ids, and the same report renders to the same bytes.
    """
    FigureCanvasSVG(fig)
    buf = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": f"benchbase-{salt}"}):
        fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None, "Format": None, "Type": None})
    svg = buf.getvalue()
    start = svg.find("<svg")
    svg = svg[start:] if start >= 0 else svg
    svg = re.sub(r"<metadata>.*?</metadata>\s*", "", svg, flags=re.S)
    svg = re.sub(r"<style[^>]*>.*?</style>\s*", "", svg, flags=re.S)  # moved into the page CSS
    # matplotlib's per-artist group ids ("figure_1", "axes_1", …) repeat in every SVG and nothing
    # refers to them; drop them so the document's ids stay unique.
    svg = _GID_RE.sub("", svg)
    # Path coordinates are in points: two decimals are far below a pixel and halve the size.
    svg = _PATH_RE.sub(lambda m: _FLOAT_RE.sub(_round2, m.group(0)), svg)
    return svg.strip()


def _round2(match: re.Match) -> str:
    text = f"{float(match.group(0)):.2f}".rstrip("0").rstrip(".")
    return "0" if text == "-0" else text


def _thin(*arrays: np.ndarray, limit: int = _MAX_POINTS) -> list[np.ndarray]:
    """The arrays restricted to at most ``limit`` evenly spaced indices (first and last kept)."""
    arrays = [np.asarray(a, dtype=float).ravel() for a in arrays]
    n = min((len(a) for a in arrays), default=0)
    arrays = [a[:n] for a in arrays]
    if n <= limit:
        return arrays
    idx = np.unique(np.linspace(0, n - 1, limit).round().astype(int))
    return [a[idx] for a in arrays]


def _style_axes(ax) -> None:
    ax.spines["top"].set_visible(False)
    ax.spines["right"].set_visible(False)
    ax.tick_params(labelsize=9)
    ax.grid(True, color="#e5e5e5", linewidth=0.7)
    ax.set_axisbelow(True)


def _figure(figure_id: str, body: str, caption: str, legend: str = "") -> str:
    """A chart (an inline SVG or a table) with its HTML legend under it, then its caption."""
    return f'<figure id="{escape(figure_id)}">\n{body}\n{legend}<figcaption>{caption}</figcaption>\n</figure>'


# --------------------------------------------------------------------------- charts


_SCORE_PANELS = (
    ("iqm", "IQM"),
    ("median", "Median"),
    ("mean", "Mean"),
    ("optimality_gap", "Optimality gap"),
)

_LABEL_WIDTH = 30  # characters per line of an entry's name beside the score bars


def _scores_chart(report: Report, styles: dict[str, _Style]) -> str:
    rows = report.leaderboard
    n = len(rows)
    labels = [_chart_text(r.entry, _LABEL_WIDTH) for r in rows]
    lines = max((label.count("\n") + 1 for label in labels), default=1)
    row_height = max(0.38, 0.17 * lines + 0.12)  # a wrapped name needs the room of its lines
    fig = Figure(figsize=(11, 1.2 + row_height * n), layout="constrained")
    axes = fig.subplots(1, len(_SCORE_PANELS), sharey=True)
    y = np.arange(n)[::-1]  # best first = top
    for k, (ax, (attr, title)) in enumerate(zip(axes, _SCORE_PANELS)):
        _style_axes(ax)
        ax.grid(False, axis="y")
        for yi, row in zip(y, rows):
            est: Estimate = getattr(row, attr)
            colour = styles[row.entry].colour
            if not finite(est.value):
                ax.text(
                    0.02, yi, DASH, va="center", ha="left", fontsize=9, color="#888", transform=ax.get_yaxis_transform()
                )
                continue
            ax.barh(yi, est.value, height=0.6, color=colour, alpha=0.35, edgecolor=colour, linewidth=1)
            if finite(est.low) and finite(est.high):
                ax.errorbar(
                    est.value,
                    yi,
                    xerr=[[max(0.0, est.value - est.low)], [max(0.0, est.high - est.value)]],
                    fmt="o",
                    color=colour,
                    markersize=4,
                    capsize=3,
                    elinewidth=1.5,
                )
            else:
                ax.plot([est.value], [yi], "o", color=colour, markersize=4)
        ax.set_title(title, fontsize=11)
        ax.set_yticks(y)
        if k == 0:
            ax.set_yticklabels(labels, fontsize=9)
        ax.set_ylim(-0.6, n - 0.4)
        ax.set_xlabel("normalised score", fontsize=9)
    return _svg(fig, "scores")


def _curve_limits(report: Report) -> dict[str, tuple[tuple[float, float], tuple[float, float]]]:
    """Per family: one x range (from 0 env steps) and one y range for its evaluation and training
    panels, so that they read one above the other."""
    found: dict[str, tuple[float, float, float]] = {}  # family -> (most steps, lowest, highest)
    for c in [*report.curves, *report.training_curves]:
        steps = np.asarray(getattr(c, "bin_end", c.steps), dtype=float)
        values = np.concatenate([np.asarray(a, dtype=float).ravel() for a in (c.mean, c.low, c.high)])
        steps, values = steps[np.isfinite(steps)], values[np.isfinite(values)]
        if len(values) and len(steps):
            most, low, high = found.get(c.family, (0.0, math.inf, -math.inf))
            found[c.family] = (
                max(most, float(steps.max())),
                min(low, float(values.min())),
                max(high, float(values.max())),
            )
    limits = {}
    for family, (most, low, high) in found.items():
        margin = 0.05 * (high - low) if high > low else 0.05 * max(abs(high), 1.0)
        limits[family] = ((0.0, most if most > 0 else 1.0), (low - margin, high + margin))
    return limits


def _curves_chart(
    report: Report, styles: dict[str, _Style], curves: Sequence[Curve], salt: str, title: str
) -> tuple[str, list[str]]:
    """The curves, one panel per family, and the entries drawn (for the legend under the chart)."""
    by_family: dict[str, list[Curve]] = {}
    for c in curves:
        by_family.setdefault(c.family, []).append(c)
    families = sorted(by_family)
    limits = _curve_limits(report)
    ncols = min(3, len(families))
    nrows = math.ceil(len(families) / ncols)
    entries = [e for e in styles if any(c.entry == e for c in curves)]
    width = max(7.5, 4.2 * ncols + 0.6)
    fig = Figure(figsize=(width, 3.0 * nrows + 0.5), layout="constrained")
    fig.suptitle(title, fontsize=12)
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    steps_fmt = EngFormatter(sep="")
    for ax, family in zip(axes, families):
        _style_axes(ax)
        for c in by_family[family]:
            style = styles[c.entry]
            steps, mean, low, high = _thin(c.steps, c.mean, c.low, c.high)
            if len(steps) == 0:
                continue
            ax.fill_between(steps, low, high, color=style.colour, alpha=0.12, linewidth=0)
            ax.plot(steps, mean, **_line_kwargs(style, entries.index(c.entry), len(entries), len(steps)))
        ax.set_title(_chart_text(family, 40), fontsize=11)
        ax.xaxis.set_major_formatter(steps_fmt)
        if family in limits:
            ax.set_xlim(*limits[family][0])
            ax.set_ylim(*limits[family][1])
        ax.set_xlabel("env steps (all learners)", fontsize=9)
        ax.set_ylabel(_chart_text(report.score_kinds.get(family, "score"), 30), fontsize=9)
    for ax in axes[len(families) :]:
        ax.set_visible(False)
    return _svg(fig, salt), entries


def _profiles_chart(report: Report, styles: dict[str, _Style]) -> str:
    fig = Figure(figsize=(7.5, 4.2), layout="constrained")
    ax = fig.subplots()
    _style_axes(ax)
    entries = [p.entry for p in report.profiles]
    for index, p in enumerate(report.profiles):
        style = styles[p.entry]
        tau, frac, low, high = _thin(p.thresholds, p.fraction, p.low, p.high)
        if len(tau) == 0:
            continue
        ax.fill_between(tau, low, high, color=style.colour, alpha=0.1, linewidth=0)
        # Later entries are drawn over earlier ones: a coinciding profile shows as dashes over a line.
        ax.plot(tau, frac, **_line_kwargs(style, index, len(entries), len(tau)))
    ax.set_xlabel("normalised score τ", fontsize=10)
    ax.set_ylabel("fraction of runs with score > τ", fontsize=10)
    ax.set_ylim(-0.02, 1.02)
    return _svg(fig, "profiles")


def _improvement_colour(probability: float) -> tuple[str, bool]:
    """A diverging background for P(X > Y): blue where X tends to win, red where it tends to lose,
    white at 0.5; and whether the colour is dark enough to want light text."""
    shade = matplotlib.colormaps["RdBu"](0.5 + (min(max(probability, 0.0), 1.0) - 0.5) * 0.85)
    return to_hex(shade), abs(probability - 0.5) > 0.3


def _improvement_matrix(report: Report, colours: dict[str, str]) -> str:
    """P(X > Y) as a matrix: a row per X, a column per Y (numbered as the rows, which name them),
    each cell the estimate with its interval on a diverging colour; every pair when there were few
    entries, else each entry against the one reference."""
    pairs = {(imp.better, imp.worse): imp.probability for imp in report.improvements}
    order = list(dict.fromkeys([*(row.entry for row in report.leaderboard), *(e for pair in pairs for e in pair)]))
    rows = [e for e in order if any(x == e for x, _ in pairs)]
    columns = [e for e in order if any(y == e for _, y in pairs)]
    if set(columns) <= set(rows) or set(rows) <= set(columns):  # every pair: one square matrix
        rows = columns = [e for e in order if e in set(rows) | set(columns)]
    number = {entry: i + 1 for i, entry in enumerate(rows)}
    head = ['<th class="text corner">X \\ Y</th>']
    for entry in columns:
        if entry in number:
            head.append(f'<th class="col" title="{escape(entry)}">{number[entry]}</th>')
        else:  # the reference entry, not a row: named in full
            head.append(f'<th class="col text">{_swatch(entry, colours)}{escape(entry)}</th>')
    body = []
    for x in rows:
        cells = [f'<th class="text entry"><span class="num">{number[x]}</span> {_swatch(x, colours)}{escape(x)}</th>']
        for y in columns:
            estimate = pairs.get((x, y))
            if x == y:
                cells.append(f'<td class="pcell diag">{DASH}</td>')
            elif estimate is None or not finite(estimate.value):
                cells.append(f'<td class="pcell none">{DASH}</td>')
            else:
                background, dark = _improvement_colour(estimate.value)
                interval = (
                    f"[{_num(estimate.low)}, {_num(estimate.high)}]"
                    if finite(estimate.low) and finite(estimate.high)
                    else "[n/a]"
                )
                cells.append(
                    f'<td class="pcell{" dark" if dark else ""}" style="background:{background}">'
                    f'{escape(_num(estimate.value))} <span class="ci">{escape(interval)}</span></td>'
                )
        body.append(f"<tr>{''.join(cells)}</tr>")
    # Up to 5 columns an interval keeps to one line; more must wrap to fit a narrow window.
    table_class = "matrix many" if len(columns) > 5 else "matrix"
    return (
        f'<div class="table-wrap"><table id="improvement" class="{table_class}"><thead><tr>{"".join(head)}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table></div>"
    )


# --------------------------------------------------------------------------- HTML sections


def _swatch(entry: str, colours: dict[str, str]) -> str:
    colour = colours.get(entry)
    if not colour:
        return ""
    return f'<span class="swatch" style="background:{colour}"></span>'


def _settings_section(report: Report, colours: dict[str, str]) -> str:
    sources = "".join(f"<li><code>{escape(str(s))}</code></li>" for s in report.sources)
    sources_html = f'<ul class="sources">{sources}</ul>' if sources else '<span class="muted">none</span>'
    metric = escape(str(report.metric))
    metric_text = _METRIC_TEXT.get(report.metric)
    if metric_text:
        metric += f' <span class="muted">({escape(metric_text)})</span>'
    baseline = (
        f"{_swatch(report.baseline, colours)}{escape(report.baseline)}"
        if report.baseline
        else '<span class="muted">none (no probability of improvement against a baseline)</span>'
    )
    confidence = f"{report.confidence * 100:g}%" if finite(report.confidence) else DASH
    repetitions = f"{report.repetitions:,}" if report.repetitions else DASH
    rows = [
        ("Sources", sources_html),
        ("Metric", metric),
        ("Split ranked on", escape(str(report.split))),
        ("Bootstrap repetitions", escape(repetitions)),
        ("Confidence", escape(confidence)),
        ("Baseline", baseline),
    ]
    body = "".join(f"<tr><th>{escape(k)}</th><td>{v}</td></tr>" for k, v in rows)
    parts = [f'<table class="settings" id="settings">{body}</table>']
    parts.append("<h3>Score normalisation per family</h3>")
    parts += _normalisation(report)
    return "\n".join(parts)


def _normalisation(report: Report) -> list[str]:
    """How each family was scored: its kind and the return range behind normalised returns."""
    if not report.score_kinds:
        parts = ['<p class="note">No families were scored.</p>']
    else:
        kinds = []
        for family, kind in sorted(report.score_kinds.items()):
            span = report.score_ranges.get(family)
            if span is not None and len(span) == 2 and all(finite(v) for v in span):
                span_text = f"{float(span[0]):.4g} → {float(span[1]):.4g}"
            else:
                span_text = DASH
            kinds.append(
                f'<tr><td class="text">{escape(str(family))}</td><td class="text">{escape(str(kind))}'
                f'</td><td class="text">{escape(span_text)}</td></tr>'
            )
        parts = [
            '<table id="score-kinds"><thead><tr><th class="text">Family</th>'
            '<th class="text">Score</th><th class="text">Return range (random → reference)</th>'
            f"</tr></thead><tbody>{''.join(kinds)}</tbody></table>"
        ]
        if any(k == "raw return" for k in report.score_kinds.values()):
            parts.append(
                '<p class="note">Families scored by <strong>raw return</strong> declare neither '
                "success nor a score range: their scores are not normalised, so pooling them with "
                "other families mixes scales.</p>"
            )
    parts.append(
        '<p class="note">Scores are normalised per family so they can be pooled: the success rate '
        "where the family defines success, otherwise (R − random) / (reference − random) with the "
        "family's declared score range, otherwise the raw return.</p>"
    )
    return parts


def _problems_section(report: Report) -> str:
    if not report.problems:
        return '<div class="ok" id="problems">No problems: every cell was scored.</div>'
    items = "".join(f"<li>{escape(str(p))}</li>" for p in report.problems)
    return (
        f'<section class="problems" id="problems"><h2>Problems ({len(report.problems)})</h2><ul>{items}</ul></section>'
    )


def _leaderboard_table(report: Report, colours: dict[str, str]) -> str:
    rows = report.leaderboard
    show_poi = report.baseline is not None or any(r.probability_of_improvement is not None for r in rows)
    show_consensus = any(r.consensus_distance is not None for r in rows)
    level = f"{report.confidence * 100:g}%" if finite(report.confidence) else "CI"
    headers = ["#", "Entry", "Runs", "Excluded", f"IQM [{level} CI]", "Median", "Mean",
               "Optimality gap", "AUC"]  # fmt: skip
    if show_poi:
        headers.append("P(improvement vs baseline)")
    headers += ["Steps/s", "Wall time", "Bytes sent / learner"]
    if show_consensus:
        headers.append("Consensus distance")
    head = "".join(f'<th class="text">{escape(h)}</th>' if h == "Entry" else f"<th>{escape(h)}</th>" for h in headers)
    body = []
    for rank, r in zip(ranks(rows), rows):
        classes = []
        if report.baseline is not None and r.entry == report.baseline:
            classes.append("baseline")
        if r.excluded:
            classes.append("has-excluded")
        cls = f' class="{" ".join(classes)}"' if classes else ""
        entry = f"{_swatch(r.entry, colours)}{escape(r.entry)}"
        if "baseline" in classes:
            entry += ' <span class="muted">(baseline)</span>'
        cells = [
            f"<td>{DASH if rank is None else rank}</td>",
            f'<td class="text entry">{entry}</td>',
            f"<td>{r.runs}</td>",
            f'<td class="excluded">{r.excluded}</td>',
            f'<td class="est">{_estimate_html(r.iqm)}</td>',
            f'<td class="est">{_estimate_html(r.median)}</td>',
            f'<td class="est">{_estimate_html(r.mean)}</td>',
            f'<td class="est">{_estimate_html(r.optimality_gap)}</td>',
            f'<td class="est">{_estimate_html(r.auc)}</td>',
        ]
        if show_poi:
            cells.append(f'<td class="est">{_estimate_html(r.probability_of_improvement)}</td>')
        cells += [
            f"<td>{escape(count(r.steps_per_second))}</td>",
            f"<td>{escape(duration(r.wall_time_s))}</td>",
            f"<td>{escape(size(r.bytes_sent_per_learner))}</td>",
        ]
        if show_consensus:
            cd = r.consensus_distance
            cells.append(f"<td>{escape(f'{cd:.3g}' if finite(cd) else DASH)}</td>")
        body.append(f"<tr{cls}>{''.join(cells)}</tr>")
    return (
        f'<div class="table-wrap"><table id="leaderboard"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table></div>"
    )


def _generalisation_table(report: Report, colours: dict[str, str]) -> str:
    cells: dict[tuple[str, str, str], GeneralisationCell] = {}
    for c in report.generalisation:
        cells[(c.entry, c.family, c.split)] = c
    families = sorted({c.family for c in report.generalisation})
    # "train" first, then the family's own splits in order of appearance.
    splits: dict[str, list[str]] = {f: [] for f in families}
    for c in report.generalisation:
        if c.split not in splits[c.family]:
            splits[c.family].append(c.split)
    for f in families:
        splits[f].sort(key=lambda s: (s != "train",))
    columns = [(f, s) for f in families for s in splits[f]]
    entries = [e for e in colours if any(c.entry == e for c in report.generalisation)]
    best: dict[tuple[str, str], float] = {}
    for (_, f, s), c in cells.items():
        if finite(c.score.value):
            best[(f, s)] = max(best.get((f, s), -math.inf), c.score.value)

    head1 = '<th class="text" rowspan="2">Entry</th>' + "".join(
        f'<th colspan="{len(splits[f])}">{escape(f)}</th>' for f in families
    )
    head2 = "".join(f"<th>{escape(s)}</th>" for _, s in columns)
    body = []
    for e in entries:
        tds = [f'<td class="text entry">{_swatch(e, colours)}{escape(e)}</td>']
        for f, s in columns:
            c = cells.get((e, f, s))
            if c is None:
                tds.append(f"<td>{DASH}</td>")
                continue
            is_best = finite(c.score.value) and c.score.value == best.get((f, s))
            wilson = f" · Wilson, {c.episodes} episodes" if c.episodes else ""
            runs = f' <span class="ci runs">n={c.runs}{wilson}</span>'
            tds.append(f'<td class="est{" best" if is_best else ""}">{_estimate_html(c.score)}{runs}</td>')
        body.append(f"<tr>{''.join(tds)}</tr>")
    return (
        f'<div class="table-wrap"><table id="generalisation"><thead><tr>{head1}</tr><tr>{head2}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table></div>"
    )


# --------------------------------------------------------------------------- page


def render_html(report: Report) -> str:
    """The whole report as one self-contained HTML document."""
    styles = _entry_styles(report)
    colours = {name: style.colour for name, style in styles.items()}
    level = f"{report.confidence * 100:g}%" if finite(report.confidence) else "confidence"
    out = _head(report, colours, level)
    out += _leaderboard_section(report, styles, level)
    out += _curves_section(report, styles, level)
    out += _profiles_section(report, styles, level)
    out += _improvement_section(report, colours, level)
    out += _generalisation_section(report, colours)
    out += ["</body>", "</html>", ""]
    return "\n".join(out)


def _head(report: Report, colours: dict[str, str], level: str) -> list[str]:
    """From the doctype to the settings: title, how the runs were made, what was ranked, the problems
    and the settings."""
    reps = f"{report.repetitions:,} bootstrap repetitions" if report.repetitions else "bootstrap"
    title = "benchbase report"
    return [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{escape(title)}</title>",
        f"<style>{_CSS}</style>",
        "</head>",
        "<body>",
        f"<h1>{escape(title)}</h1>",
        _runs_header(report),
        '<p class="muted">'
        f"{len(report.leaderboard)} entries ranked by {escape(str(report.metric))} score on the "
        f"<strong>{escape(str(report.split))}</strong> split; intervals are {escape(level)} "
        f"stratified-bootstrap confidence intervals ({escape(reps)}); n/a: no interval from fewer than "
        f"{INTERVAL_RUNS} runs (seeds). Equal scores share a rank (1, 1, 3).</p>",
        _problems_section(report),
        "<h2>Settings</h2>",
        _settings_section(report, colours),
    ]


def _runs_header(report: Report) -> str:
    """How each run folder read was made: versions, date, command, budget, seeds, grid and machine."""
    written_by = f"Written by benchbase {escape(report.benchbase_version)}" if report.benchbase_version else ""
    folders = len(report.run_headers)
    intro = f"{written_by}{' from ' if written_by else 'From '}{folders} run folder{'' if folders == 1 else 's'}:"
    if not report.run_headers:
        intro = f"{written_by}." if written_by else ""
    tables = []
    for i, header in enumerate(report.run_headers):
        rows = [("Run folder", f"<code>{escape(header.folder)}</code>")]
        if header.note:
            rows.append(("Recorded", f'<span class="muted">{escape(header.note)}: {NOT_RECORDED}</span>'))
        else:
            command = (
                f'<code class="command">{escape(header.command)}</code>'
                if header.command
                else f'<span class="muted">{NOT_RECORDED}</span>'
            )
            for name, text in (("Versions", versions_text(header)), ("Written", written_text(header))):
                rows.append((name, _recorded(text)))
            rows.append(("Command", command))
            for name, text in (
                ("Budget", budget_text(header)),
                ("Seeds", seeds_text(header)),
                ("Grid", grid_text(header)),
                ("Machine", machine_text(header)),
            ):
                rows.append((name, _recorded(text)))
        body = "".join(f"<tr><th>{escape(k)}</th><td>{v}</td></tr>" for k, v in rows)
        tables.append(f'<table class="settings run-header" id="run-header-{i + 1}">{body}</table>')
    return f'<section id="runs">{f"<p class=muted>{intro}</p>" if intro else ""}{"".join(tables)}</section>'


def _recorded(text: str) -> str:
    return f'<span class="muted">{escape(text)}</span>' if text == NOT_RECORDED else escape(text)


def _leaderboard_section(report: Report, styles: dict[str, _Style], level: str) -> list[str]:
    colours = {name: style.colour for name, style in styles.items()}
    out = ["<h2>Leaderboard</h2>"]
    if not report.leaderboard:
        return out + ['<p class="note" id="leaderboard-empty">No entries were scored.</p>']
    out.append(
        '<p class="note">Best first. IQM is the interquartile mean of the normalised scores of '
        "all scored runs; the optimality gap is how far runs fall short of a score of 1 "
        "(lower is better); AUC is the IQM of the normalised area under the learning curve. "
        "Runs are independent seeds per env family (the fewest over an entry's families); excluded runs "
        "(failed or interrupted cells) are left out of every score.</p>"
    )
    out.append(_leaderboard_table(report, colours))
    caption = (
        f"Aggregate normalised scores per entry with {escape(level)} confidence intervals "
        "(whiskers): interquartile mean, median, mean and optimality gap (lower is better). "
        "An em dash marks an estimate without data."
    )
    out.append(_figure("scores-chart", _scores_chart(report, styles), caption))
    return out


def _curves_section(report: Report, styles: dict[str, _Style], level: str) -> list[str]:
    out = ["<h2>Learning curves</h2>"]
    if not report.curves and not report.training_curves:
        return out + ['<p class="note" id="curves-empty">No learning curves were recorded.</p>']
    band = (
        f"lines are the mean over runs (seeds), shaded bands the {escape(level)} confidence interval "
        f"(none from fewer than {INTERVAL_RUNS} runs); each entry keeps its colour, dashes and marker in every chart"
    )
    if report.curves:
        families = sorted({c.family for c in report.curves})
        caption = (
            "<strong>Greedy evaluations</strong>: normalised score of the evaluation episodes (the greedy "
            f"policy) against the cell's environment steps, one panel per env family ({escape(', '.join(families))}"
            f"), a marker at each evaluation; {band}. A cell run without evaluations is drawn from its training "
            "episodes here, as the problems say."
        )
        svg, entries = _curves_chart(report, styles, report.curves, "curves", "Greedy evaluations")
        out.append(_figure("curves-chart", svg, caption, _legend_html(entries, styles)))
    else:
        out.append('<p class="note" id="curves-empty">No evaluation curves were recorded.</p>')
    if report.training_curves:
        title = "Training episodes (stochastic policy)"
        caption = (
            f"<strong>{title}</strong>: mean normalised score (scaled as the evaluations are) of the training "
            "episodes that finished in each equal bin of a cell's env-step budget, drawn at the bin's middle; "
            f"{band}, over the runs with episodes in the bin. The learners explore while they train, so this "
            "is the exploring policy, not the greedy one. Every point is in <code>curves.parquet</code>."
        )
        svg, entries = _curves_chart(report, styles, report.training_curves, "training-curves", title)
        out.append(_figure("training-curves-chart", svg, caption, _legend_html(entries, styles)))
    else:
        out.append(
            '<p class="note" id="training-curves-empty">No training episodes were recorded for the scored cells '
            "(runs written before episodes were kept, or no episode finished): no training curves.</p>"
        )
    return out


def _profiles_section(report: Report, styles: dict[str, _Style], level: str) -> list[str]:
    out = ["<h2>Performance profiles</h2>"]
    if not report.profiles:
        return out + ['<p class="note" id="profiles-empty">No performance profiles were computed.</p>']
    few = _few_runs(report)
    reading = (
        "A curve above another dominates it."
        if few is None
        else f"With as few as {few} runs per entry the bands are unreliable: do not read dominance into them."
    )
    same_as = coincident_profiles(report.profiles)
    notes = {entry: f"same profile as {other}" for entry, other in same_as.items()}
    coinciding = (
        f" {len(same_as)} profile{' equals' if len(same_as) == 1 else 's equal'} an earlier one (the legend says "
        "which): drawn over it, told apart by dashes and markers at other thresholds."
        if same_as
        else ""
    )
    caption = (
        "Performance profiles: the fraction of runs whose normalised score exceeds each "
        f"threshold τ, with {escape(level)} confidence bands. {escape(reading)}{escape(coinciding)}"
    )
    legend = _legend_html([p.entry for p in report.profiles], styles, notes)
    return out + [_figure("profiles-chart", _profiles_chart(report, styles), caption, legend)]


def _improvement_section(report: Report, colours: dict[str, str], level: str) -> list[str]:
    out = ["<h2>Probability of improvement</h2>"]
    if not report.improvements:
        return out + ['<p class="note" id="improvement-empty">No pairwise comparisons were computed.</p>']
    few = _few_runs(report)
    reading = (
        "An interval that excludes 0.5 is a statistically meaningful difference."
        if few is None
        else f"These intervals come from as few as {few} run{'' if few == 1 else 's'} per entry (fewer than "
        f"{RELIABLE_RUNS}): they are unreliable, and an interval that excludes 0.5 does not show a difference."
    )
    out.append(
        '<p class="note">P(X &gt; Y) is the probability that a random run of X scores above a '
        f"random run of Y; 0.5 means no difference. {escape(reading)}</p>"
    )
    caption = (
        f"P(X &gt; Y) with its {escape(level)} confidence interval: row X against column Y (columns are "
        "numbered as the rows). Blue: X tends to score above Y, red: below, white: 0.5 (no difference); "
        "an em dash: the entry itself, or no comparison."
    )
    return out + [_figure("improvement-matrix", _improvement_matrix(report, colours), caption)]


def _generalisation_section(report: Report, colours: dict[str, str]) -> list[str]:
    out = ["<h2>Generalisation</h2>"]
    if not report.generalisation:
        return out + ['<p class="note" id="generalisation-empty">No generalisation splits were evaluated.</p>']
    out.append(
        '<p class="note">Score of each entry on each family\'s evaluation splits '
        "(<em>train</em>: the learners' own tasks), with the number of runs; the best score "
        "per column is bold.</p>"
    )
    return out + [_generalisation_table(report, colours)]
