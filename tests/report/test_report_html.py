"""The HTML report: structure, escaping and self-containment of `render_html`, checked with the
standard library's HTML parser, and the page as drawn by headless Chromium."""

from __future__ import annotations

import json
import math
import shutil
import struct
import subprocess
import zlib
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from benchbase.report.html import render_html
from benchbase.report.model import (
    Curve,
    Estimate,
    GeneralisationCell,
    Improvement,
    LeaderboardRow,
    Profile,
    Report,
    TrainingCurve,
)

EVIL = "<script>alert(1)</script>"
NAN = Estimate(math.nan, math.nan, math.nan)
ENTRIES = [
    "diff-a2c · ring · none",
    "gala · ring · none (lr=0.0015)",
    f"diff-ppo · isolated · {EVIL}",
]


def _est(value: float, half: float = 0.05) -> Estimate:
    return Estimate(value, value - half, value + half)


def _row(entry: str, iqm: Estimate, *, excluded: int = 0, poi: Estimate | None = None,
         consensus: float | None = 0.01) -> LeaderboardRow:  # fmt: skip
    algorithm, topology, replay = (part.strip() for part in entry.split("·"))
    return LeaderboardRow(
        entry=entry,
        algorithm=algorithm,
        topology=topology,
        replay=replay,
        variant="",
        runs=6,
        excluded=excluded,
        iqm=iqm,
        median=_est(0.5) if math.isfinite(iqm.value) else NAN,
        mean=_est(0.45) if math.isfinite(iqm.value) else NAN,
        optimality_gap=_est(0.4) if math.isfinite(iqm.value) else NAN,
        auc=_est(0.3) if math.isfinite(iqm.value) else NAN,
        probability_of_improvement=poi,
        steps_per_second=12_345.0,
        wall_time_s=125.0,
        bytes_sent_per_learner=3.5 * 2**20,
        consensus_distance=consensus,
    )


def _report(*, empty: bool = False) -> Report:
    leaderboard = [
        _row(ENTRIES[0], _est(0.82), poi=None),
        _row(ENTRIES[1], _est(0.61), excluded=2, poi=_est(0.31)),
        _row(ENTRIES[2], NAN, poi=NAN, consensus=None),
    ]
    if empty:
        return Report(
            sources=["results/empty"],
            metric="final",
            split="train",
            score_kinds={},
            leaderboard=[],
        )
    families = ["cartpole", "random-cartpole"]
    steps = np.linspace(0, 100_000, 1_000)  # longer than the charts keep
    curves = []
    for i, entry in enumerate(ENTRIES):
        for j, family in enumerate(families):
            mean = (1 - np.exp(-steps / (20_000 * (i + 1 + j)))) * (0.9 - 0.2 * i)
            curves.append(Curve(entry, family, steps, mean, mean - 0.05, mean + 0.05))
    bins = np.linspace(2_000, 98_000, 25)
    training = [
        TrainingCurve(
            curve.entry,
            curve.family,
            bins,
            np.interp(bins, curve.steps, curve.mean) * 0.8,
            np.interp(bins, curve.steps, curve.mean) * 0.8 - 0.04,
            np.interp(bins, curve.steps, curve.mean) * 0.8 + 0.04,
            np.full(25, 3),
            bin_start=bins - 2_000,
            bin_end=bins + 2_000,
            episode_return=np.interp(bins, curve.steps, curve.mean) * 500,
            episodes=np.full(25, 40),
        )
        for curve in curves
    ]
    tau = np.linspace(0, 1, 101)
    profiles = [
        Profile(
            entry, tau, np.clip(1 - tau ** (1 + i), 0, 1), np.clip(0.9 - tau, 0, 1), np.clip(1.1 - tau, 0, 1)
        )  # fmt: skip
        for i, entry in enumerate(ENTRIES)
    ]
    improvements = [
        Improvement(ENTRIES[1], ENTRIES[0], _est(0.31)),
        Improvement(ENTRIES[2], ENTRIES[0], NAN),
        Improvement(ENTRIES[1], ENTRIES[2], _est(0.7, 0.1)),
    ]
    generalisation = [
        GeneralisationCell(entry, family, split, _est(0.7 - 0.1 * i - 0.05 * k), runs=3)
        for i, entry in enumerate(ENTRIES[:2])
        for family, splits in (("cartpole", ["train"]), ("random-cartpole", ["train", "D", "R", "E"]))
        for k, split in enumerate(splits)
    ] + [GeneralisationCell(ENTRIES[2], "random-cartpole", "train", NAN, runs=0)]
    return Report(
        sources=["results/2024-01-01_grid", "results/<b>other</b>"],
        metric="final",
        split="train",
        score_kinds={"cartpole": "success rate", "random-cartpole": "normalised return"},
        leaderboard=leaderboard,
        generalisation=generalisation,
        curves=curves,
        training_curves=training,
        profiles=profiles,
        improvements=improvements,
        baseline=ENTRIES[0],
        problems=[f"2 cells of {ENTRIES[1]} failed (seed 1, 2): excluded", f"no runs scored for {EVIL}"],
        repetitions=2000,
        confidence=0.95,
        score_ranges={"random-cartpole": (9.4, 500.0)},
    )


class _Page(HTMLParser):
    """Collects what the tests look at: tables (rows of cell texts), figures, svgs, links."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tables: dict[str, list[list[str]]] = {}
        self.figures: dict[str, str] = {}  # id -> caption text
        self.svgs = 0
        self.scripts = 0
        self.resources: list[str] = []  # src/href attribute values
        self.ids: list[str] = []
        self._table: str | None = None
        self._row: list[str] | None = None
        self._cell: list[str] | None = None
        self._figure: str | None = None
        self._caption: list[str] | None = None
        self._stack: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if attrs.get("id"):
            self.ids.append(attrs["id"])
        for key in ("src", "href", "xlink:href", "action", "data"):
            if key in attrs and attrs[key] is not None:
                self.resources.append(attrs[key])
        if tag == "script":
            self.scripts += 1
        elif tag == "svg":
            self.svgs += 1
        elif tag == "table" and attrs.get("id"):
            self._table = attrs["id"]
            self.tables[self._table] = []
        elif tag == "tr" and self._table:
            self._row = []
        elif tag in ("td", "th") and self._row is not None:
            self._cell = []
        elif tag == "figure":
            self._figure = attrs.get("id", "")
        elif tag == "figcaption":
            self._caption = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None and self._row is not None:
            self._row.append(" ".join("".join(self._cell).split()))
            self._cell = None
        elif tag == "tr" and self._row is not None and self._table:
            self.tables[self._table].append(self._row)
            self._row = None
        elif tag == "table":
            self._table = None
        elif tag == "figcaption" and self._caption is not None:
            self.figures[self._figure or ""] = "".join(self._caption)
            self._caption = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)
        if self._caption is not None:
            self._caption.append(data)


def _parse(html: str) -> _Page:
    page = _Page()
    page.feed(html)
    page.close()
    return page


@pytest.fixture(scope="module")
def html() -> str:
    return render_html(_report())


def test_leaderboard_rows_best_first_with_nan_as_dash(html):
    table = _parse(html).tables["leaderboard"]
    header, rows = table[0], table[1:]
    assert [r[1].removesuffix(" (baseline)") for r in rows] == ENTRIES
    assert "Excluded" in header and any(h.startswith("P(improvement") for h in header)
    assert "Consensus distance" in header
    iqm = header.index("IQM [95% CI]")
    assert rows[0][iqm] == "0.820 [0.770, 0.870]"
    assert rows[2][iqm] == "—"  # the NaN estimate
    assert rows[1][header.index("Excluded")] == "2"
    assert rows[0][header.index("Steps/s")] == "12.3k"
    assert rows[0][header.index("Wall time")] == "2m 05s"
    assert rows[0][header.index("Bytes sent / learner")] == "3.5 MiB"
    assert rows[2][header.index("Consensus distance")] == "—"
    poi = [h for h in header if h.startswith("P(improvement")][0]
    assert rows[1][header.index(poi)] == "0.310 [0.260, 0.360]"
    assert rows[0][header.index(poi)] == "—"


def test_generalisation_and_improvement_tables(html):
    page = _parse(html)
    gen = page.tables["generalisation"]
    assert gen[0] == ["Entry", "cartpole", "random-cartpole"]
    assert gen[1] == ["train", "train", "D", "R", "E"]
    assert [r[0] for r in gen[2:]] == ENTRIES
    assert gen[2][1] == "0.700 [0.650, 0.750] n=3"
    assert gen[4][1] == "—" and gen[4][2] == "— n=0"
    imp = page.tables["improvement"]
    assert len(imp) == 1 + 3
    assert imp[1] == [ENTRIES[1], ENTRIES[0], "0.310 [0.260, 0.360]"]
    assert imp[2][2] == "—"
    kinds = page.tables["score-kinds"]
    assert ["cartpole", "success rate", "—"] in kinds
    assert ["random-cartpole", "normalised return", "9.4 → 500"] in kinds


def test_charts_are_inline_svg_figures_with_captions(html):
    page = _parse(html)
    assert page.svgs == 5
    assert set(page.figures) == {
        "scores-chart",
        "curves-chart",
        "training-curves-chart",
        "profiles-chart",
        "improvement-chart",
    }
    assert all(caption.strip() for caption in page.figures.values())
    assert "cartpole, random-cartpole" in page.figures["curves-chart"]
    # the two kinds of curve are told apart, in the captions and the charts' own titles
    assert "Greedy evaluations" in page.figures["curves-chart"]
    assert "Training episodes (stochastic policy)" in page.figures["training-curves-chart"]
    assert (
        html.index('id="curves-chart"') < html.index('id="training-curves-chart"') < html.index('id="profiles-chart"')
    )
    training_svg = html[html.index('id="training-curves-chart"') : html.index('id="profiles-chart"')]
    assert ">Training episodes (stochastic policy)</text>" in training_svg
    assert (
        ">Greedy evaluations</text>" in html[html.index('id="curves-chart"') : html.index('id="training-curves-chart"')]
    )
    assert len(page.ids) == len(set(page.ids)), "element ids must be unique across the inlined SVGs"
    # text stays text, and the long curves were thinned
    assert "<text" in html and "<path" in html
    assert len(html) < 600_000


def test_self_contained_and_escaped(html):
    page = _parse(html)
    assert page.scripts == 0
    assert not [r for r in page.resources if not r.startswith("#")], page.resources
    for match in ("http://", "https://"):
        stripped = html.replace('xmlns="http://www.w3.org/2000/svg"', "").replace(
            'xmlns:xlink="http://www.w3.org/1999/xlink"', ""
        )
        assert match not in stripped
    assert EVIL not in html and "<b>other</b>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    # the problems are shown, prominently, before the leaderboard
    assert html.index('id="problems"') < html.index('id="leaderboard"')
    assert "Problems (2)" in html and "seed 1, 2" in html


def test_empty_report_has_sentences_instead_of_charts():
    html = render_html(_report(empty=True))
    page = _parse(html)
    assert page.svgs == 0
    assert "leaderboard" not in page.tables
    for section in ("leaderboard-empty", "curves-empty", "profiles-empty", "improvement-empty",
                    "generalisation-empty"):  # fmt: skip
        assert f'id="{section}"' in html
    assert 'id="problems"' in html and "No problems" in html


def test_a_report_without_training_episodes_says_so_under_the_evaluation_curves():
    report = _report()
    report.training_curves = []
    html = render_html(report)
    page = _parse(html)
    assert "curves-chart" in page.figures and "training-curves-chart" not in page.figures
    assert 'id="training-curves-empty"' in html and "no training curves" in html


def test_evaluation_and_training_panels_of_a_family_share_their_y_range():
    from benchbase.report.html import _curve_limits

    limits = _curve_limits(_report())
    (left, right), (low, high) = limits["cartpole"]
    highest = max(float(np.nanmax(c.high)) for c in _report().curves if c.family == "cartpole")
    assert low < 0 < highest < high  # bands start at -0.05 (evaluation) and -0.04 (training)
    assert (left, right) == (0.0, 100_000.0)  # the last evaluation, and the last training bin's end


def test_deterministic_and_leaves_matplotlib_settings_alone(html):
    import matplotlib

    before = dict(matplotlib.rcParams)
    assert render_html(_report()) == html
    assert dict(matplotlib.rcParams) == before


# --------------------------------------------------------------------------- headless browser


def _browser() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("no Chromium: install Debian's chromium package to run this test")


def _run_browser(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    browser = _browser()
    command = [
        browser,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-extensions",
        "--hide-scrollbars",
        f"--user-data-dir={tmp_path / 'profile'}",
        *args,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=tmp_path)


def _png_rows(data: bytes) -> tuple[int, int, list[bytes]]:
    """Width, height and the (filtered) scanlines of a non-interlaced 8-bit PNG."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, header = 8, [], None
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        chunk = data[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", chunk)
        elif kind == b"IDAT":
            idat.append(chunk)
        elif kind == b"IEND":
            break
    assert header is not None
    width, height, depth, colour, _, _, interlace = header
    assert depth == 8 and interlace == 0
    channels = {0: 1, 2: 3, 4: 2, 6: 4}[colour]
    raw = zlib.decompress(b"".join(idat))
    stride = 1 + width * channels
    assert len(raw) == stride * height
    return width, height, [raw[i * stride : (i + 1) * stride] for i in range(height)]


def test_headless_chromium_renders_tables_and_charts(tmp_path):
    _browser()
    page = tmp_path / "report.html"
    page.write_text(render_html(_report()), encoding="utf-8")
    shot = tmp_path / "shot.png"
    result = _run_browser(tmp_path, f"--screenshot={shot}", "--window-size=1400,3000", page.as_uri())
    assert shot.exists(), f"no screenshot (rc {result.returncode}): {result.stderr[-2000:]}"
    width, height, rows = _png_rows(shot.read_bytes())
    assert (width, height) == (1400, 3000)
    # A blank page is one scanline repeated; tables, text and charts make thousands of them.
    assert len(set(rows)) > 500, f"screenshot looks blank ({len(set(rows))} distinct rows)"
    assert len(set(b"".join(rows[::50]))) > 100


_PROBE = """<script>
addEventListener("load", () => {
  const box = el => {
    const r = el.getBoundingClientRect();
    return [Math.round(r.width), Math.round(r.height)];
  };
  const tables = [...document.querySelectorAll("table[id]")];
  const out = {
    tables: Object.fromEntries(tables.map(t => [t.id, [t.rows.length, ...box(t)]])),
    svgs: [...document.querySelectorAll("figure svg")].map(box),
    texts: document.querySelectorAll("figure svg text").length,
  };
  const pre = document.createElement("pre");
  pre.id = "probe";
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>"""


def test_headless_chromium_lays_out_every_table_and_svg(tmp_path):
    """The DOM after Chromium laid the page out: every table and chart has a real size."""
    _browser()
    page = tmp_path / "report.html"
    # the report itself has no script; this copy adds one that measures the rendered page
    page.write_text(render_html(_report()).replace("</body>", _PROBE + "</body>"), encoding="utf-8")
    result = _run_browser(tmp_path, "--dump-dom", "--virtual-time-budget=5000", page.as_uri())
    assert result.returncode == 0, result.stderr[-2000:]
    start = result.stdout.find('<pre id="probe">')
    assert start >= 0, f"the page did not finish loading: {result.stdout[:500]} {result.stderr[-2000:]}"
    probe = json.loads(
        result.stdout[start + len('<pre id="probe">') : result.stdout.index("</pre>", start)]
        .replace("&quot;", '"').replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
    )  # fmt: skip
    assert probe["tables"]["leaderboard"][0] == 1 + 3
    assert probe["tables"]["improvement"][0] == 1 + 3
    assert probe["tables"]["generalisation"][0] == 2 + 3
    for name, (_, width, height) in probe["tables"].items():
        assert width > 100 and height > 30, (name, width, height)
    assert len(probe["svgs"]) == 5
    for width, height in probe["svgs"]:
        assert width > 300 and height > 100
    assert probe["texts"] > 50


def test_many_entries_keep_distinct_colours_and_odd_curves_do_not_break():
    import re

    names = [f"algo-{i} · ring · none" for i in range(23)]
    steps = np.arange(5.0)
    report = Report(
        sources=["results/x"],
        metric="auc",
        split="R",
        score_kinds={"f0": "raw return"},
        leaderboard=[_row(n, _est(1 - i / 30)) for i, n in enumerate(names)],
        curves=[Curve(n, f"f{i % 5}", steps, steps / 4, steps / 5, steps / 3) for i, n in enumerate(names)]
        + [Curve(names[0], "f0", np.array([]), np.array([]), np.array([]), np.array([]))],
        profiles=[
            Profile(
                names[1],
                np.array([0.0, 1.0]),
                np.array([1.0, 0.0]),
                np.array([math.nan, 0.0]),
                np.array([1.0, math.nan]),
            )
        ],  # fmt: skip
    )
    html = render_html(report)
    page = _parse(html)
    assert page.svgs == 3  # scores, curves, profiles; no improvements
    assert len(page.tables["leaderboard"]) == 1 + 23
    colours = re.findall(r'class="swatch" style="background:(#[0-9a-f]{6})"', html)
    assert len(set(colours)) == 23
    assert "raw return" in html and "not normalised" in html
    assert 'id="improvement-empty"' in html and 'id="generalisation-empty"' in html
    assert not any(h.startswith("P(improvement") for h in page.tables["leaderboard"][0])  # no baseline
