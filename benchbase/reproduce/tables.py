"""What `bench reproduce` writes: `comparison.parquet` (one row per quantity) and `reproduction.md`
(ours and theirs side by side, with the commands, seeds, versions and machine), and the console table.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
from rich.table import Table

from benchbase.reproduce.catalogue import Claim, Quantity
from benchbase.reproduce.measure import Measured, agrees
from benchbase.results import write_atomic, write_json, write_table

COMPARISON_SCHEMA = pa.schema(
    [
        ("claim", pa.string()),
        ("quantity", pa.string()),
        ("label", pa.string()),
        ("source", pa.string()),
        ("published", pa.float64()),
        ("published_low", pa.float64()),
        ("published_high", pa.float64()),
        ("ours", pa.float64()),
        ("ours_low", pa.float64()),
        ("ours_high", pa.float64()),
        ("runs", pa.int64()),
        ("agrees", pa.bool_()),
        ("rule", pa.string()),
        ("expected", pa.bool_()),  # should agree at this scale (a disagreement then fails the command)
        ("scale", pa.string()),
        ("env_steps", pa.int64()),
        ("published_env_steps", pa.int64()),
        ("note", pa.string()),
    ]
)


@dataclass
class GridRecord:
    """One grid of a claim as it ran: its file, folder, values and the command that reruns it."""

    name: str
    file: Path
    folder: Path
    values: dict[str, Any]
    same_as: str = ""  # the grid that ran in its place (identical at this scale)

    @property
    def command(self) -> str:
        return f"bench run --grid {self.file} --out {self.folder}"


@dataclass
class ClaimResult:
    claim: Claim
    grids: dict[str, GridRecord]
    measured: list[tuple[Quantity, Measured]]
    run_code: int


def _why(quantity: Quantity, ours: Measured, verdict: bool | None, env_steps: int | None) -> str:
    """The note of a row: why it cannot be decided, why it may disagree, and the quantity's own note."""
    parts = []
    if verdict is None:
        if quantity.band is None:
            parts.append("no published figure available to compare with")
        elif ours.problem:
            parts.append(f"not measured: {ours.problem}")
        else:
            parts.append(f"{ours.runs} run(s): too few to decide agreement")
    budget, band = quantity.published_budget, quantity.band
    below = band is not None and ours.value < band[0]  # a smaller budget explains falling short, not exceeding
    if verdict is False and below and budget and env_steps and env_steps < budget:
        parts.append(f"budget: {env_steps:,} env steps here, {budget:,} in the source")
    elif verdict is False:
        parts.append("ours is " + ("below" if below else "above") + " the published band")
    if quantity.note:
        parts.append(quantity.note)
    return "; ".join(parts)


def comparison_rows(results: Sequence[ClaimResult], scale: str) -> list[dict[str, Any]]:
    rows = []
    for result in results:
        expected = set(result.claim.scales[scale].expect)
        for quantity, ours in result.measured:
            verdict = agrees(quantity, ours)
            band = quantity.band
            env_steps = result.grids[quantity.cells.grid].values.get("env_steps")
            rows.append(
                {
                    "claim": result.claim.name,
                    "quantity": quantity.name,
                    "label": quantity.label,
                    "source": result.claim.sources.get(quantity.source, {}).get("cite", ""),
                    "published": quantity.published,
                    "published_low": band[0] if band else None,
                    "published_high": band[1] if band else None,
                    "ours": None if math.isnan(ours.value) else ours.value,
                    "ours_low": None if math.isnan(ours.low) else ours.low,
                    "ours_high": None if math.isnan(ours.high) else ours.high,
                    "runs": ours.runs,
                    "agrees": verdict,
                    "rule": quantity.rule,
                    "expected": quantity.name in expected,
                    "scale": scale,
                    "env_steps": env_steps,
                    "published_env_steps": quantity.published_budget,
                    "note": _why(quantity, ours, verdict, env_steps),
                }
            )
    return rows


def write_comparison(rows: list[dict[str, Any]], out: Path) -> Path:
    path = out / "comparison.parquet"
    write_table(path, pa.Table.from_pylist(rows, schema=COMPARISON_SCHEMA))  # atomic, as every results table
    return path


# -- text -------------------------------------------------------------------------------------


def _number(value: float | None, kind: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.2f}" if kind == "improvement" else f"{value:.1f}"


def published_text(row: dict[str, Any], kind: str) -> str:
    if row["published"] is None:
        return "—"
    if row["rule"] in ("at-least", "at-most"):  # a bound, not a band
        return ("≥ " if row["rule"] == "at-least" else "≤ ") + _number(row["published"], kind)
    spread = row["published_high"] - row["published"]
    return _number(row["published"], kind) + (f" ± {_number(spread, kind)}" if spread or kind != "improvement" else "")


def ours_text(row: dict[str, Any], kind: str) -> str:
    text = _number(row["ours"], kind)
    if row["ours_low"] is not None:
        text += f" [{_number(row['ours_low'], kind)}, {_number(row['ours_high'], kind)}]"
    return text


def agrees_text(row: dict[str, Any]) -> str:
    word = {True: "yes", False: "**no**", None: "n/a"}[row["agrees"]]
    return word + (" (expected)" if row["expected"] else "")


def console_table(rows: list[dict[str, Any]], kinds: dict[tuple[str, str], str]) -> Table:
    table = Table(title="bench reproduce: published vs ours")
    for column in ("claim", "quantity", "published", "ours [95% interval]", "runs", "agrees", "note"):
        table.add_column(column, overflow="fold")
    for row in rows:
        kind = kinds[row["claim"], row["quantity"]]
        agreed = agrees_text(row).replace("**", "")
        table.add_row(
            row["claim"],
            row["label"],
            published_text(row, kind),
            ours_text(row, kind),
            str(row["runs"]),
            agreed,
            row["note"],
        )
    return table


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _claim_markdown(result: ClaimResult, rows: list[dict[str, Any]], scale: str) -> list[str]:
    claim = result.claim
    lines = [f"## {claim.name}: {claim.title}", ""]
    lines += [
        f"- source `{key}`: {source['cite']}" + (f" <{source['url']}>" if source["url"] else "")
        for key, source in claim.sources.items()
    ]
    lines += [f"- agrees: {claim.agrees}"]
    expect = claim.scales[scale].expect
    lines += [f"- should agree at {scale} scale: {', '.join(expect) if expect else 'nothing (reported, not enforced)'}"]
    lines += [f"- note: {note}" for note in claim.notes]
    lines += ["", "| grid | env steps | seeds | learners × simulators each | command |", "|---|---|---|---|---|"]
    for record in result.grids.values():
        values = record.values
        seeds = values.get("seeds", 1)
        seed_text = ", ".join(map(str, seeds)) if isinstance(seeds, list) else ", ".join(map(str, range(seeds)))
        command = f"same as {record.same_as}" if record.same_as else f"`{record.command}`"
        lines.append(
            f"| {record.name} | {values.get('env_steps', 'default'):,} | {seed_text} | "
            f"{values.get('learners', 'default')} × {values.get('envs_per_learner', 'default')} | {command} |"
        )
    lines += ["", "| quantity | published (source) | ours [95% interval] | runs | agrees | note |"]
    lines += ["|---|---|---|---|---|---|"]
    quantities = {quantity.name: quantity for quantity, _ in result.measured}
    for row in rows:
        quantity = quantities[row["quantity"]]
        kind = quantity.kind
        source = ", ".join(
            part
            for part in (
                quantity.source,
                f"{quantity.published_budget:,} env steps" if quantity.published_budget else "",
            )
            if part
        )
        source = f" ({source})" if source and row["published"] is not None else ""
        lines.append(
            f"| {_cell(row['label'])} | {_cell(published_text(row, kind) + source)} | {ours_text(row, kind)} | "
            f"{row['runs']} | {agrees_text(row)} | {_cell(row['note'])} |"
        )
    if result.run_code:
        lines += ["", f"Some cells did not complete (exit code {result.run_code}): see the grids' cells.parquet."]
    return lines + [""]


def reproduction_markdown(
    results: Sequence[ClaimResult], rows: list[dict[str, Any]], scale: str, context: dict[str, Any]
) -> str:
    lines = [
        "# bench reproduce: published figures and ours",
        "",
        f"- date: {context['date']}",
        f"- command: `{context['command']}`",
        f"- scale: {scale}",
        f"- machine: {context['machine']}",
        "- versions: " + ", ".join(f"{name} {version}" for name, version in context["versions"].items()),
        "",
        "Ours is the mean over runs (seeds) of each run's final greedy evaluation, with a 95% percentile "
        "bootstrap interval over runs (none from fewer than 2 runs, except one run's success rate: its Wilson "
        "interval over evaluation episodes). Success rates are in percent. The published band is the published "
        "mean ± its spread (standard deviation, or the claim's tolerance where the source gives none). Rules: "
        "*overlap*: our interval overlaps the published band; *at-least* (*at-most*): our point estimate is at "
        "least (at most) the published figure. A row that cannot be decided says n/a and why; a row that "
        "disagrees says so and why.",
        "",
    ]
    for result in results:
        lines += _claim_markdown(result, [row for row in rows if row["claim"] == result.claim.name], scale)
    return "\n".join(lines)


def write_reproduction(text: str, out: Path, context: dict[str, Any]) -> Path:
    path = out / "reproduction.md"
    write_atomic(path, lambda temporary: Path(temporary).write_text(text))
    write_json(out / "reproduction.json", context)
    return path
