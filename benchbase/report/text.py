"""A `Report` as text: the rich console leaderboard and the Markdown report."""

from __future__ import annotations

from collections.abc import Iterable

from rich import box
from rich.table import Table
from rich.text import Text

from benchbase.formatting import DASH, count, duration, finite, size
from benchbase.report.header import NOT_RECORDED, budget_text, machine_text, seeds_text, versions_text, written_text
from benchbase.report.model import (
    INTERVAL_RUNS,
    RELIABLE_RUNS,
    Estimate,
    Report,
    RunHeader,
    fewest_runs,
    ranks,
    runs_warning,
)

__all__ = ["leaderboard_table", "render_markdown", "describe_ranking"]

_SPLIT_ORDER = {"train": 0, "D": 1, "R": 2, "E": 3}
#: Where an estimate has no interval (from fewer than `INTERVAL_RUNS` runs).
NO_INTERVAL = "n/a"
_KIND_TEXT = {
    "success rate": "success rate: the fraction of evaluation episodes that met the family's success criterion",
    "normalised return": "normalised return",
    "raw return": "raw return: the family declares neither a success criterion nor a score range, so its "
    "scores are not on the 0–1 scale of the others",
}


# --------------------------------------------------------------------------- formatting


def number(value: float | None) -> str:
    """Scores: 0.82, 12.3, −1,234 (magnitude decides the decimals)."""
    if not finite(value):
        return DASH
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:,.0f}"
    if magnitude >= 100:
        return f"{value:.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def estimate(value: Estimate | None, separator: str = " ") -> str:
    if value is None or not finite(value.value):
        return DASH
    if not (finite(value.low) and finite(value.high)):
        return f"{number(value.value)}{separator}[{NO_INTERVAL}]"
    return f"{number(value.value)}{separator}[{number(value.low)}, {number(value.high)}]"


def _consensus(value: float | None) -> str:
    return f"{value:.2g}" if finite(value) else DASH


def describe_ranking(report: Report) -> str:
    """One sentence: what the scores are and how the intervals were made."""
    what = (
        "final evaluation score"
        if report.metric == "final"
        else "area under the learning curve (mean score over the evaluations)"
    )
    split = "the learners' own tasks (train)" if report.split == "train" else f"split {report.split}"
    return (
        f"Ranked by the IQM of the {what} on {split}, over runs (seeds) × env families; "
        f"{report.confidence * 100:g}% stratified-bootstrap confidence intervals from {report.repetitions:,} "
        f"repetitions. Equal IQMs share a rank (standard competition ranking: 1, 1, 3). An interval needs "
        f"{INTERVAL_RUNS} runs ({NO_INTERVAL} below that) and is unreliable below {RELIABLE_RUNS}."
    )


def _show_auc(report: Report) -> bool:
    return report.metric != "auc"


# --------------------------------------------------------------------------- console


#: The layouts `leaderboard_table` tries, widest first, until one fits the width it is given: every
#: column; without the cost columns; without median and mean too; with each interval under its value.
_COST_COLUMNS = ("Steps/s", "Wall/cell", "Sent/lrn", "Consensus")
_LAYOUTS: tuple[tuple[tuple[str, ...], bool], ...] = (
    ((), False),
    (_COST_COLUMNS, False),
    ((*_COST_COLUMNS, "Median", "Mean"), False),
    ((*_COST_COLUMNS, "Median", "Mean"), True),
)
_ENTRY_MIN_WIDTH = 16
_ENTRY_WIDTH = 30


def leaderboard_table(report: Report, width: int | None = None) -> Table:
    """The leaderboard as a rich table: IQM and P(entry > baseline) with their intervals, median,
    mean, optimality gap and AUC, and the cost columns (the Markdown and HTML reports give every
    interval). Given a `width` (a terminal's columns), the first layout of `_LAYOUTS` whose columns fit
    it, so that no number is cut short; the caption names the columns left out."""
    if width is None:
        return _leaderboard_table(report, (), False)
    from rich.console import Console
    from rich.measure import Measurement

    measuring = Console(width=10_000)
    for left_out, stacked in _LAYOUTS:
        # Measured with the entry's label wrapped at _ENTRY_WIDTH columns (rich measures text by its
        # longest word, so a number's width counts only with the table's widest, unwrapped layout).
        narrow = _leaderboard_table(report, left_out, stacked, entry_width=_ENTRY_WIDTH)
        if Measurement.get(measuring, measuring.options, narrow).maximum <= width:
            break
    return _leaderboard_table(report, left_out, stacked)


def _leaderboard_table(
    report: Report, left_out: tuple[str, ...], stacked: bool, entry_width: int | None = None
) -> Table:
    """The leaderboard without the columns `left_out`; `stacked`: each interval on a line under its value;
    `entry_width`: the most columns the entry's label takes."""
    caption = Text(
        f"[low, high]: {report.confidence * 100:g}% CI, stratified bootstrap, {report.repetitions:,} repetitions; "
        f"{NO_INTERVAL}: fewer than {INTERVAL_RUNS} runs; #: equal scores share a rank"
        + (f"; {len(report.problems)} problem(s): see below" if report.problems else ""),
        style="dim",
    )
    if left_out:
        caption.append(f"\nnot shown, to fit: {', '.join(left_out)} (in report.md and report.html)", style="dim")
    fewest = fewest_runs(report.leaderboard)
    if runs_warning(report.leaderboard) and fewest is not None:
        caption.append(f"\nintervals from {fewest} run{'' if fewest == 1 else 's'} are unreliable", style="yellow")
        caption.append(f" (fewer than {RELIABLE_RUNS} seeds): do not read a difference into them", style="yellow")
    what = "final score" if report.metric == "final" else "area under the learning curve"
    table = Table(
        title=f"Leaderboard: {what} on {report.split}",
        title_style="bold",
        caption=caption,
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        collapse_padding=True,
    )
    columns: list[tuple[str, list[Text | str]]] = []  # (header, its cells): filtered by `left_out` below

    def column(header: str, values: list[Text | str]) -> None:
        if header not in left_out:
            columns.append((header, values))

    rows = report.leaderboard
    column("#", [_rank(rank) for rank in ranks(rows)])
    column("Entry", [Text(row.entry, style="bold" if rank == 1 else "") for rank, row in zip(ranks(rows), rows)])
    column("Runs", [_runs_text(row.runs, row.excluded) for row in rows])
    column("IQM", [_estimate_text(row.iqm, stacked) for row in rows])
    column("Median", [number(row.median.value) for row in rows])
    column("Mean", [number(row.mean.value) for row in rows])
    column("Opt. gap", [number(row.optimality_gap.value) for row in rows])
    if _show_auc(report):
        column("AUC", [number(row.auc.value) for row in rows])
    if report.baseline is not None:
        column(
            "P(>base)",
            [
                Text("baseline", style="dim")
                if row.entry == report.baseline
                else _estimate_text(row.probability_of_improvement, stacked)
                for row in rows
            ],
        )
    column("Steps/s", [count(row.steps_per_second) for row in rows])
    column("Wall/cell", [duration(row.wall_time_s) for row in rows])
    column("Sent/lrn", [size(row.bytes_sent_per_learner) for row in rows])
    column("Consensus", [_consensus(row.consensus_distance) for row in rows])
    for header, _ in columns:
        # Numbers are never cut short ("0.…"): the entry's label wraps instead.
        if header == "Entry":
            table.add_column(header, min_width=_ENTRY_MIN_WIDTH, max_width=entry_width)
        else:
            table.add_column(header, justify="right", no_wrap=not stacked, overflow="fold")
    for cells in zip(*(values for _, values in columns)):
        table.add_row(*cells)
    return table


def _runs_text(runs: int, excluded: int) -> Text:
    text = Text(str(runs))
    if excluded:
        text.append(f" +{excluded} excl.", style="red")
    return text


def _estimate_text(value: Estimate | None, stacked: bool = False) -> Text:
    if value is None or not finite(value.value):
        return Text(DASH, style="dim")
    text = Text(number(value.value))
    separator = "\n" if stacked else " "
    if finite(value.low) and finite(value.high):
        text.append(f"{separator}[{number(value.low)}, {number(value.high)}]", style="dim")
    else:
        text.append(f"{separator}[{NO_INTERVAL}]", style="dim")
    return text


def _rank(rank: int | None) -> str:
    return DASH if rank is None else str(rank)


# --------------------------------------------------------------------------- Markdown


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _table(header: list[str], rows: Iterable[list[str]], align: list[str] | None = None) -> list[str]:
    align = align or ["---"] * len(header)
    lines = ["| " + " | ".join(_cell(h) for h in header) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return lines


def _leaderboard_markdown(report: Report) -> list[str]:
    header = ["#", "Entry", "Runs", "Excluded", "IQM", "Median", "Mean", "Optimality gap"]
    if _show_auc(report):
        header.append("AUC (IQM)")
    if report.baseline is not None:
        header.append("P(> baseline)")
    header += ["Steps/s", "Wall time / cell", "Bytes sent / learner", "Consensus distance"]
    rows = []
    for rank, row in zip(ranks(report.leaderboard), report.leaderboard):
        cells = [
            _rank(rank),
            row.entry,
            str(row.runs),
            str(row.excluded),
            estimate(row.iqm),
            estimate(row.median),
            estimate(row.mean),
            estimate(row.optimality_gap),
        ]
        if _show_auc(report):
            cells.append(estimate(row.auc))
        if report.baseline is not None:
            cells.append("baseline" if row.entry == report.baseline else estimate(row.probability_of_improvement))
        cells += [
            count(row.steps_per_second),
            duration(row.wall_time_s),
            size(row.bytes_sent_per_learner),
            _consensus(row.consensus_distance),
        ]
        rows.append(cells)
    align = ["--:", "---"] + ["--:"] * (len(header) - 2)
    return _table(header, rows, align)


def _generalisation_markdown(report: Report) -> list[str]:
    if not report.generalisation:
        return ["No evaluations."]
    splits = sorted({c.split for c in report.generalisation}, key=lambda s: (_SPLIT_ORDER.get(s, 4), s))
    order = {row.entry: i for i, row in enumerate(report.leaderboard)}
    by_row: dict[tuple[str, str], dict[str, str]] = {}
    for c in report.generalisation:
        by_row.setdefault((c.entry, c.family), {})[c.split] = estimate(c.score) + _runs_note(c.runs, c.episodes)
    ordered = sorted(by_row.items(), key=lambda item: (item[0][1], order.get(item[0][0], 1 << 30)))
    rows = [[entry, family] + [values.get(s, DASH) for s in splits] for (entry, family), values in ordered]
    header = ["Entry", "Family"] + [_split_name(s) for s in splits]
    return _table(header, rows, ["---", "---"] + ["--:"] * len(splits))


def _runs_note(runs: int, episodes: int) -> str:
    """The runs behind a generalisation score, "(n=3)"; a single cell's success rate says that its
    interval is a Wilson interval over its episodes."""
    if not runs:
        return ""
    return f" (n={runs}, Wilson over {episodes} episodes)" if episodes else f" (n={runs})"


def _split_name(split: str) -> str:
    names = {"train": "train (own tasks)", "D": "D (default)", "R": "R (interpolation)", "E": "E (extrapolation)"}
    return names.get(split, split)


def _run_line(header: RunHeader) -> str:
    """One run folder's header as one Markdown line: versions, date, command, budget, seeds, machine."""
    if header.note:
        return f"`{header.folder}`: {header.note}: {NOT_RECORDED}"
    command = f"`{header.command}`" if header.command else NOT_RECORDED
    return _cell(
        f"`{header.folder}`: {versions_text(header)}, written {written_text(header)}; command {command}; "
        f"budget {budget_text(header)}; seeds {seeds_text(header)}; machine {machine_text(header)}"
    )


def _improvements_markdown(report: Report) -> list[str]:
    if not report.improvements:
        return ["Fewer than two scored entries: nothing to compare."]
    return _improvement_lines(report) + _few_runs_caveat(report)


def _few_runs_caveat(report: Report) -> list[str]:
    fewest = fewest_runs(report.leaderboard)
    if fewest is None or fewest >= RELIABLE_RUNS:
        return []
    return [
        "",
        f"These probabilities come from as few as {fewest} run{'' if fewest == 1 else 's'} per entry and family "
        f"(fewer than {RELIABLE_RUNS}): their intervals are unreliable, and one that excludes 0.5 does not show a "
        "difference.",
    ]


def _improvement_lines(report: Report) -> list[str]:
    pairs = {(i.better, i.worse): i.probability for i in report.improvements}
    entries = [row.entry for row in report.leaderboard if any(row.entry in pair for pair in pairs)]
    complete = all((x, y) in pairs for x in entries for y in entries if x != y)
    if complete:
        lines = [
            "P(row > column): the probability that a random run of the row's entry scores above a random run "
            "of the column's on the same family.",
            "",
        ]
        header = ["X \\ Y"] + [f"{j + 1}" for j in range(len(entries))]
        rows = []
        for i, x in enumerate(entries):
            rows.append([f"{i + 1}. {x}"] + [DASH if x == y else estimate(pairs.get((x, y))) for y in entries])
        return lines + _table(header, rows, ["---"] + ["--:"] * len(entries))
    lines = ["P(X > Y): the probability that a random run of X scores above a random run of Y on the same family.", ""]
    rows = [[imp.better, imp.worse, estimate(imp.probability)] for imp in report.improvements]
    return lines + _table(["X", "Y", "P(X > Y)"], rows, ["---", "---", "--:"])


def _normalisation_markdown(report: Report) -> list[str]:
    lines = []
    ranges = report.score_ranges
    for family, kind in sorted(report.score_kinds.items()):
        if kind == "normalised return" and family in ranges:
            random, reference = ranges[family]
            text = (
                f"normalised return: (R − {number(random)}) / ({number(reference)} − {number(random)}), "
                "0 = a random policy, 1 = the reference score"
            )
        else:
            text = _KIND_TEXT.get(kind, kind)
        lines.append(f"- **{family}**: {text}")
    final = (
        "Final score of a run (cell): the mean over its learners' episodes of the final evaluation; area under "
        "the learning curve (AUC): the mean score over its evaluations, i.e. the normalised area under its "
        "learning curve."
    )
    pooling = "Entries pool their runs over env families (tasks); the bootstrap resamples runs within each family."
    return lines + ["", final, pooling]


def render_markdown(report: Report) -> str:
    """The whole report as Markdown: leaderboard, generalisation, probability of improvement,
    problems and how the scores were normalised."""
    lines = ["# benchbase report", ""]
    lines.append("Sources: " + ", ".join(f"`{source}`" for source in report.sources))
    lines.append("")
    if report.run_headers:
        lines += [f"- {_run_line(header)}" for header in report.run_headers] + [""]
    lines.append(describe_ranking(report) + (f" Baseline: **{report.baseline}**." if report.baseline else ""))
    lines += ["", "## Leaderboard", ""]
    lines += _leaderboard_markdown(report)
    lines += [
        "",
        "#: standard competition ranking of the IQM (equal scores share a rank: 1, 1, 3). Runs: independent seeds "
        f"per env family (the fewest over the entry's families); {NO_INTERVAL}: no interval from fewer than "
        f"{INTERVAL_RUNS} runs.",
    ]
    warning = runs_warning(report.leaderboard)
    if warning:
        lines += ["", f"**Warning: {_cell(warning)}.**"]
    lines += [
        "",
        "Costs are means over an entry's completed cells; consensus distance is each cell's last recorded "
        "value (sqrt(mean ‖θ_i − θ̄‖²)/‖θ̄‖), where recorded.",
    ]
    lines += [
        "",
        "## Generalisation",
        "",
        "Final score on each evaluation split (mean over runs, with its interval), after Packer et al. (2018).",
        "",
    ]
    lines += _generalisation_markdown(report)
    lines += ["", "## Probability of improvement", ""]
    lines += _improvements_markdown(report)
    lines += ["", "## Problems", ""]
    lines += [f"- {_cell(problem)}" for problem in report.problems] or ["None: every cell was scored."]
    lines += ["", "## How scores were normalised", ""]
    lines += _normalisation_markdown(report)
    return "\n".join(lines) + "\n"
