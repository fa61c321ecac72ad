"""The HTML report: structure, escaping and self-containment of `render_html`, checked with the
standard library's HTML parser, and the page as drawn by headless Chromium."""

from __future__ import annotations

import json
import math
import re
import shutil
import struct
import subprocess
import zlib
from dataclasses import replace
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
    RunHeader,
    TrainingCurve,
    coincident_profiles,
)

EVIL = "<script>alert(1)</script>"
NAN = Estimate(math.nan, math.nan, math.nan)
ENTRIES = [
    "diff-a2c · ring · none",
    # long enough to need wrapping everywhere: it must never be cut short ("…") or overflow a chart
    "gala · ring · none (lr=0.0015, gamma=0.97, entropy_coef=0.02, rollout_steps=64, max_grad_norm=0.5)",
    f"diff-ppo · isolated · {EVIL}",
]
COMMAND = "bench run -a diff-a2c -a gala -t ring -e random-cartpole --env-steps 100000 --seeds 3 --out results/grid"
HEADERS = [
    RunHeader(
        "results/2024-01-01_grid",
        benchbase_version="0.1.0",
        python_version="3.11.7",
        torch_version="2.3.0",
        written_at="2024-01-01T12:30:00+00:00",
        command=COMMAND,
        env_steps=100_000,
        learners=4,
        envs_per_learner=2,
        evaluations=5,
        eval_episodes=10,
        seeds=(0, 1, 2),
        grid=(("algorithms", ("diff-a2c", "gala")), ("topologies", ("ring",)), ("envs", ("random-cartpole",))),
        host="node-7",
        cpus=64,
        cpu_model="AMD EPYC 7763 64-Core Processor",
        gpus=("NVIDIA H100", "NVIDIA H100"),
    ),
    # written before grid.json kept the command and the machine
    RunHeader(
        "results/<b>other</b>",
        benchbase_version="0.0.9",
        written_at="2023-06-01T08:00:00+00:00",
        env_steps=50_000,
        learners=2,
        envs_per_learner=1,
        seeds=(0, 1, 2, 3, 7),
    ),  # fmt: skip
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
            entry, tau, np.clip(1 - tau ** (1 + i % 2), 0, 1), np.clip(0.9 - tau, 0, 1), np.clip(1.1 - tau, 0, 1)
        )  # fmt: skip
        for i, entry in enumerate(ENTRIES)
    ]  # the third entry's profile equals the first's
    # every ordered pair, as build_report gives for few entries: P(Y > X) = 1 − P(X > Y)
    improvements = [
        Improvement(ENTRIES[0], ENTRIES[1], _est(0.69)),
        Improvement(ENTRIES[1], ENTRIES[0], _est(0.31)),
        Improvement(ENTRIES[0], ENTRIES[2], NAN),
        Improvement(ENTRIES[2], ENTRIES[0], NAN),
        Improvement(ENTRIES[1], ENTRIES[2], _est(0.7, 0.1)),
        Improvement(ENTRIES[2], ENTRIES[1], _est(0.3, 0.1)),
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
        run_headers=list(HEADERS),
        benchbase_version="0.1.0",
    )


class _Page(HTMLParser):
    """Collects what the tests look at: tables (rows of cell texts), figures, their legends, svgs, links."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tables: dict[str, list[list[str]]] = {}
        self.figures: dict[str, str] = {}  # id -> caption text
        self.legends: dict[str, list[str]] = {}  # figure id -> its legend's entries, as read
        self.svgs = 0  # charts
        self.keys = 0  # the little line pictures in the legends
        self._legend_item: list[str] | None = None
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
        elif tag == "svg" and attrs.get("class") == "key":
            self.keys += 1
        elif tag == "svg":
            self.svgs += 1
        elif tag == "ul" and attrs.get("class") == "legend":
            self.legends[self._figure or ""] = []
        elif tag == "li" and self._figure in self.legends:
            self._legend_item = []
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
        elif tag == "figure":
            self._figure = None
        elif tag == "li" and self._legend_item is not None:
            self.legends[self._figure or ""].append(" ".join("".join(self._legend_item).split()))
            self._legend_item = None
        elif tag == "figcaption" and self._caption is not None:
            self.figures[self._figure or ""] = "".join(self._caption)
            self._caption = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)
        if self._caption is not None:
            self._caption.append(data)
        if self._legend_item is not None:
            self._legend_item.append(data)


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


def test_generalisation_table_and_the_improvement_matrix(html):
    page = _parse(html)
    gen = page.tables["generalisation"]
    assert gen[0] == ["Entry", "cartpole", "random-cartpole"]
    assert gen[1] == ["train", "train", "D", "R", "E"]
    assert [r[0] for r in gen[2:]] == ENTRIES
    assert gen[2][1] == "0.700 [0.650, 0.750] n=3"
    assert gen[4][1] == "—" and gen[4][2] == "— n=0"
    # P(X > Y): rows X and columns Y in leaderboard order, the columns numbered as the rows
    matrix = page.tables["improvement"]
    assert matrix[0] == ["X \\ Y", "1", "2", "3"]
    assert [r[0] for r in matrix[1:]] == [f"{i + 1} {entry}" for i, entry in enumerate(ENTRIES)]
    assert matrix[1][1:] == ["—", "0.690 [0.640, 0.740]", "—"]  # itself; P(1 > 2); no data against 3
    assert matrix[2][1:] == ["0.310 [0.260, 0.360]", "—", "0.700 [0.600, 0.800]"]
    assert matrix[3][1:] == ["—", "0.300 [0.200, 0.400]", "—"]
    # a diverging colour: blue above 0.5, red below, and light text only on the dark ends
    cells = re.findall(r'<td class="pcell( dark)?" style="background:(#[0-9a-f]{6})">([0-9.]+)', html)
    shades = {value: (colour, bool(dark)) for dark, colour, value in cells}
    red, green, blue = (int(shades["0.690"][0][k : k + 2], 16) for k in (1, 3, 5))
    assert blue > red
    red, green, blue = (int(shades["0.310"][0][k : k + 2], 16) for k in (1, 3, 5))
    assert red > blue
    assert not shades["0.690"][1]
    assert "improvement-chart" not in page.figures  # the bar chart of ordered pairs is gone
    kinds = page.tables["score-kinds"]
    assert ["cartpole", "success rate", "—"] in kinds
    assert ["random-cartpole", "normalised return", "9.4 → 500"] in kinds


def test_the_improvement_matrix_against_a_baseline_is_one_column():
    report = _report()
    report.improvements = [Improvement(ENTRIES[1], ENTRIES[0], _est(0.31)), Improvement(ENTRIES[2], ENTRIES[0], NAN)]
    matrix = _parse(render_html(report)).tables["improvement"]
    assert matrix[0] == ["X \\ Y", ENTRIES[0]]  # the reference is not a row: named in full
    assert matrix[1:] == [[f"1 {ENTRIES[1]}", "0.310 [0.260, 0.360]"], [f"2 {ENTRIES[2]}", "—"]]


def test_few_runs_keep_the_caveat_over_the_matrix():
    report = _report()
    report.leaderboard = [replace(row, runs=2) for row in report.leaderboard]
    html = render_html(report)
    assert "as few as 2 runs per entry (fewer than 5): they are unreliable" in html
    assert "statistically meaningful" not in html
    assert "statistically meaningful" in render_html(_report())  # 6 runs


def test_the_header_says_how_each_run_was_made(html):
    page = _parse(html)
    new, old = page.tables["run-header-1"], page.tables["run-header-2"]
    assert dict(map(tuple, new)) == {
        "Run folder": "results/2024-01-01_grid",
        "Versions": "benchbase 0.1.0 (torch 2.3.0, Python 3.11.7)",
        "Written": "2024-01-01 12:30 UTC",
        "Command": COMMAND,
        "Budget": "100,000 env steps per cell · 4 learners × 2 simulators · 5 evaluations of 10 episodes",
        "Seeds": "3: 0–2",
        "Grid": "algorithms diff-a2c, gala; topologies ring; envs random-cartpole",
        "Machine": "node-7: 64 CPUs (AMD EPYC 7763 64-Core Processor), GPUs: 2 × NVIDIA H100",
    }
    old = dict(map(tuple, old))
    assert old["Run folder"] == "results/<b>other</b>"  # escaped: text, not markup
    assert old["Command"] == old["Machine"] == old["Grid"] == "not recorded"
    assert old["Seeds"] == "5: 0–3, 7" and old["Versions"] == "benchbase 0.0.9"
    assert old["Budget"] == "50,000 env steps per cell · 2 learners × 1 simulator"
    assert "Written by benchbase 0.1.0 from 2 run folders" in html
    # before everything else
    assert html.index('id="runs"') < html.index('id="problems"') < html.index('id="leaderboard"')


def test_charts_are_inline_svg_figures_with_captions(html):
    page = _parse(html)
    assert all(caption.strip() for caption in page.figures.values())
    # the two kinds of curve are told apart, in the captions and the charts' own titles
    assert "Greedy evaluations" in page.figures["curves-chart"]
    assert "Training episodes (stochastic policy)" in page.figures["training-curves-chart"]
    assert html.index('id="curves-chart"') < html.index('id="training-curves-chart"')
    training_svg = html[html.index('id="training-curves-chart"') : html.index('id="profiles-chart"')]
    assert ">Training episodes (stochastic policy)</text>" in training_svg
    assert len(page.ids) == len(set(page.ids)), "element ids must be unique across the inlined SVGs"
    # text stays text, and the long curves were thinned
    assert "<text" in html and "<path" in html
    assert len(html) < 600_000


def test_legends_are_html_lists_with_every_full_name(html):
    page = _parse(html)
    assert set(page.legends) == {"curves-chart", "training-curves-chart", "profiles-chart"}
    for figure in ("curves-chart", "training-curves-chart"):
        assert page.legends[figure] == ENTRIES
    assert page.legends["profiles-chart"] == [ENTRIES[0], ENTRIES[1], f"{ENTRIES[2]} (same profile as {ENTRIES[0]})"]
    assert page.keys == 3 * 3
    assert "…" not in html  # no name is ever shortened
    # the long name wraps beside the score bars instead, on lines of at most 30 characters
    scores = html[html.index('id="scores-chart"') : html.index('id="curves-chart"')]
    assert ">gala · ring · none (lr=0.0015,</text>" in scores


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
    result = _run_browser(tmp_path, f"--screenshot={shot}", "--window-size=900,3000", page.as_uri())
    assert shot.exists(), f"no screenshot (rc {result.returncode}): {result.stderr[-2000:]}"
    width, height, rows = _png_rows(shot.read_bytes())
    assert (width, height) == (900, 3000)
    # A blank page is one scanline repeated; tables, text and charts make thousands of them.
    assert len(set(rows)) > 500, f"screenshot looks blank ({len(set(rows))} distinct rows)"
    assert len(set(b"".join(rows[::50]))) > 100


_PROBE = """<script>
addEventListener("load", () => {
  const box = el => {
    const r = el.getBoundingClientRect();
    return [Math.round(r.width), Math.round(r.height)];
  };
  const outside = (inner, outer) => inner.left < outer.left - 1 || inner.right > outer.right + 1
    || inner.top < outer.top - 1 || inner.bottom > outer.bottom + 1;
  const tables = [...document.querySelectorAll("table[id]")];
  const charts = [...document.querySelectorAll("figure > svg")];
  const overflowing = [];
  for (const svg of charts) {
    const frame = svg.getBoundingClientRect();
    for (const text of svg.querySelectorAll("text")) {
      if (text.textContent.trim() && outside(text.getBoundingClientRect(), frame)) {
        overflowing.push(svg.parentElement.id + ": " + text.textContent);
      }
    }
  }
  const legends = {};
  for (const list of document.querySelectorAll("figure ul.legend")) {
    const figure = list.closest("figure").getBoundingClientRect();
    legends[list.closest("figure").id] = [...list.querySelectorAll("li")].map(item => [
      item.querySelector(".label").textContent,
      outside(item.getBoundingClientRect(), figure),
    ]);
  }
  const runs = document.querySelector("#runs");
  const out = {
    tables: Object.fromEntries(tables.map(t => [t.id, [t.rows.length, ...box(t)]])),
    svgs: charts.map(box),
    texts: document.querySelectorAll("figure svg text").length,
    overflowing,
    legends,
    matrix: [document.querySelectorAll("#improvement tbody tr").length,
             document.querySelectorAll("#improvement td.pcell").length],
    scroll_width: document.documentElement.scrollWidth,
    inner_width: innerWidth,
    header: runs ? runs.innerText : "",
  };
  const pre = document.createElement("pre");
  pre.id = "probe";
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>"""


def _probe(tmp_path: Path, html: str, width: int) -> dict:
    """Lay the page out in headless Chromium in a window ``width`` pixels wide and measure it."""
    page = tmp_path / "report.html"
    # the report itself has no script; this copy adds one that measures the rendered page
    page.write_text(html.replace("</body>", _PROBE + "</body>"), encoding="utf-8")
    result = _run_browser(
        tmp_path, "--dump-dom", "--virtual-time-budget=5000", f"--window-size={width},2000", page.as_uri()
    )
    assert result.returncode == 0, result.stderr[-2000:]
    start = result.stdout.find('<pre id="probe">')
    assert start >= 0, f"the page did not finish loading: {result.stdout[:500]} {result.stderr[-2000:]}"
    return json.loads(
        result.stdout[start + len('<pre id="probe">') : result.stdout.index("</pre>", start)]
        .replace("&quot;", '"').replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
    )  # fmt: skip


@pytest.mark.parametrize("width", [900, 1400])
def test_headless_chromium_lays_out_every_table_and_svg(tmp_path, width):
    """The DOM after Chromium laid the page out in a narrow and a wide window: every table and chart
    has a real size, no chart text leaves its SVG, nothing makes the page scroll sideways, the
    legends name every entry in full, the P(X > Y) matrix is N × N and the header is there."""
    _browser()
    probe = _probe(tmp_path, render_html(_report()), width)
    assert probe["inner_width"] == width
    assert probe["scroll_width"] <= probe["inner_width"], "the page scrolls sideways"
    assert probe["tables"]["leaderboard"][0] == 1 + 3
    assert probe["tables"]["improvement"][0] == 1 + 3
    assert probe["matrix"] == [3, 3 * 3]
    assert probe["tables"]["generalisation"][0] == 2 + 3
    for name, (_, table_width, height) in probe["tables"].items():
        assert table_width > 100 and height > 30, (name, table_width, height)
    assert len(probe["svgs"]) == 4
    for svg_width, height in probe["svgs"]:
        assert svg_width > 300 and height > 100
    assert probe["texts"] > 50
    assert probe["overflowing"] == []
    assert set(probe["legends"]) == {"curves-chart", "training-curves-chart", "profiles-chart"}
    for figure, items in probe["legends"].items():
        assert [label.split(" (same profile as ")[0] for label, _ in items] == ENTRIES, figure
        assert not any(out for _, out in items), f"a legend entry leaves its figure: {figure}"
    assert COMMAND in probe["header"]
    assert "node-7: 64 CPUs (AMD EPYC 7763 64-Core Processor), GPUs: 2 × NVIDIA H100" in probe["header"]
    assert "not recorded" in probe["header"]


def test_many_entries_keep_distinct_colours_and_odd_curves_do_not_break():
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


def _lines_and_markers(svg: str) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """Per colour: the dash patterns of its lines, and the x positions of its markers, in one chart."""
    dashes: dict[str, set[str]] = {}
    for style in re.findall(r'<path d="[^"]*"[^>]*style="(fill: none;[^"]*)"', svg):
        colour = re.search(r"stroke: (#[0-9a-f]{6})", style)
        if colour and "stroke-width: 1.8" in style:  # the entries' lines, not the grid or the axes
            found = re.search(r"stroke-dasharray: ([0-9.,]+)", style)
            dashes.setdefault(colour.group(1), set()).add(found.group(1) if found else "solid")
    markers: dict[str, set[str]] = {}
    for x, style in re.findall(r'<use xlink:href="#[^"]+" x="([^"]+)" y="[^"]+" style="([^"]+)"', svg):
        colour = re.search(r"fill: (#[0-9a-f]{6})", style)
        if colour:
            markers.setdefault(colour.group(1), set()).add(x)
    return dashes, markers


def test_coinciding_profiles_are_drawn_apart_and_named():
    tau = np.linspace(0, 1, 101)
    same = np.clip(1 - tau, 0, 1)
    names = ["diff-a2c · ring · none", "diff-ppo · ring · none", "gala · ring · none"]
    report = Report(
        sources=["results/x"],
        metric="final",
        split="train",
        score_kinds={"cartpole": "success rate"},
        leaderboard=[_row(n, _est(0.5)) for n in names],
        profiles=[
            Profile(names[0], tau, same, same - 0.1, same + 0.1),
            Profile(names[1], tau, same.copy(), same - 0.1, same + 0.1),  # the very same profile
            Profile(names[2], tau, same**2, same - 0.1, same + 0.1),
        ],
    )
    assert coincident_profiles(report.profiles) == {names[1]: names[0]}
    html = render_html(report)
    svg = html[html.index('id="profiles-chart"') : html.index("</svg>", html.index('id="profiles-chart"'))]
    dashes, markers = _lines_and_markers(svg)
    first, second = "#1f77b4", "#ff7f0e"  # the first two entries' colours
    assert dashes[first] == {"solid"} and dashes[second] != {"solid"}  # a dashed line over a solid one
    assert markers[first] and markers[second] and not markers[first] & markers[second]  # markers elsewhere
    assert len(set(re.findall(r'<path id="(m[0-9a-f]+)"', svg))) >= 3  # three marker shapes
    legend = _parse(html).legends["profiles-chart"]
    assert legend == [names[0], f"{names[1]} (same profile as {names[0]})", names[2]]
    assert "1 profile equals an earlier one" in _parse(html).figures["profiles-chart"]
    # a profile that differs anywhere is not called the same
    bumped = same.copy()
    bumped[50] += 0.01
    assert coincident_profiles([report.profiles[0], Profile(names[1], tau, bumped, same, same)]) == {}


def test_headless_chromium_fits_a_matrix_of_eight_entries_in_a_narrow_window(tmp_path):
    """Eight entries (every pair still compared) make an 8 × 8 matrix that fits 900 pixels."""
    _browser()
    names = [f"algo-{i} · ring · none (lr=0.00{i}5)" for i in range(8)]
    report = Report(
        sources=["results/x"],
        metric="final",
        split="train",
        score_kinds={"cartpole": "success rate"},
        leaderboard=[_row(n, _est(1 - i / 10)) for i, n in enumerate(names)],
        improvements=[
            Improvement(x, y, _est(0.5 + 0.05 * (j - i), 0.1))
            for i, x in enumerate(names)
            for j, y in enumerate(names)
            if x != y
        ],
    )
    probe = _probe(tmp_path, render_html(report), 900)
    assert probe["matrix"] == [8, 8 * 8]
    assert probe["scroll_width"] <= 900
    assert probe["tables"]["improvement"][1] <= 900 - 2 * 32  # within the page's margins: no inner scrolling
