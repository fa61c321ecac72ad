"""`bench report`: read run folders, score every completed cell, aggregate into a `Report`.

Three steps, each usable on its own:

- `load_runs(paths)` (`benchbase.report.load`) reads one or many run folders (or globs) into one
  `Runs`;
- `build_report(runs, …)` scores each completed cell (`benchbase.report.scoring`: final
  evaluation or area under the learning curve, normalised per env family, on one split), groups
  cells into entries (`benchbase.report.entries`: cells that differ in anything but the seed are
  never pooled) and computes the statistics of `benchbase.report.stats` over runs (seeds) × tasks
  (env families), with learning curves per entry and task from the greedy evaluations and from
  the binned training episodes (`benchbase.report.training`), and a header per run folder
  from its grid.json (`benchbase.report.header`: version, date, command, budget, seeds, machine);
- `write_report(report, out_dir)` (`benchbase.report.write`) writes `leaderboard.parquet`,
  `curves.parquet`, `report.md` and `report.html`.

Failed, interrupted, pending and running cells are never scored and never dropped silently: they
are counted per entry and listed in `Report.problems`. An interval from fewer than
`INTERVAL_RUNS` runs is left out (NaN bounds), except a single cell's success rate, which carries
its binomial Wilson interval over its evaluation episodes; fewer than `RELIABLE_RUNS` runs add a
warning to `Report.problems`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from benchbase import __version__
from benchbase.errors import UserError, close_match
from benchbase.report import stats
from benchbase.report.entries import (
    GROUP_FIELDS,
    Entries,
    EntryKey,
    cell_name,
    coverage_problems,
    excluded_line,
    group_entries,
    resolve_baseline,
    score_matrix,
)
from benchbase.report.header import read_run_headers
from benchbase.report.load import Runs, load_runs
from benchbase.report.model import (
    INTERVAL_RUNS,
    Curve,
    Estimate,
    GeneralisationCell,
    Improvement,
    LeaderboardRow,
    Profile,
    Report,
    TrainingCurve,
    runs_warning,
)
from benchbase.report.scoring import (
    NAN,
    NORMALISED,
    RAW,
    SUCCESS,
    CellScores,
    env_registry,
    quiet,
    score_completed_cells,
)
from benchbase.report.training import TrainingBins, bin_training_episodes
from benchbase.report.write import curves_arrow, leaderboard_arrow, write_report

__all__ = [
    "Runs",
    "load_runs",
    "build_report",
    "write_report",
    "leaderboard_arrow",
    "curves_arrow",
    "GROUP_FIELDS",
    "METRICS",
    "env_registry",
]

METRICS: tuple[str, ...] = ("final", "auc")
#: Entries up to which every ordered pair gets a probability of improvement.
PAIRWISE_LIMIT = 8

_NO_ESTIMATE = Estimate(NAN, NAN, NAN)


def build_report(
    runs: Runs,
    *,
    metric: str = "final",
    split: str = "train",
    group_by: Sequence[str] = GROUP_FIELDS,
    baseline: str | None = None,
    repetitions: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
    registry: Any = None,
) -> Report:
    """Score, group and aggregate the runs into a `Report` (see the module docstring).

    `metric`: "final" (the final evaluation) or "auc" (mean score over the evaluations: the
    normalised area under the learning curve), on evaluation split `split`. `group_by`: the
    fields that tell entries apart (a subset of `GROUP_FIELDS`). `baseline`: an entry's label or
    an unambiguous part of it. `registry`: where env families' `score_range` is looked up
    (default: `env_registry()`).
    """
    group_by = tuple(dict.fromkeys(group_by))
    _check_options(metric, group_by, repetitions, confidence)
    options = dict(repetitions=int(repetitions), confidence=confidence, seed=seed)
    problems = list(runs.notes)
    cells = score_completed_cells(runs, registry if registry is not None else env_registry(), problems)
    scored = _entries_on_split(runs, cells, metric, split, group_by, options, problems)
    aggregates = _aggregate(scored, metric)
    ordered = sorted(scored.entries.keys, key=lambda key: _rank(key, scored.entries, aggregates))
    ranked = [key for key in ordered if key in aggregates.matrices]  # those with a score
    baseline_label = _baseline(baseline, scored.entries, ordered, aggregates, problems)
    improvements = _improvements(scored, aggregates, ranked, baseline_label, problems)
    leaderboard = _leaderboard(runs, scored, aggregates, ordered, baseline_label, improvements)
    warning = runs_warning(leaderboard)
    if warning:
        problems.append(warning)
    profiles = _profiles(scored, aggregates, ranked)
    curves = _curves(scored, aggregates, ranked, problems)
    training_curves = _training_curves(
        scored, aggregates, ranked, bin_training_episodes(runs.training, cells), problems
    )
    generalisation = _generalisation(scored, aggregates, ranked)
    score_kinds = _score_kinds(scored, problems)
    return Report(
        sources=list(runs.sources),
        metric=metric,
        split=split,
        score_kinds=score_kinds,
        leaderboard=leaderboard,
        generalisation=generalisation,
        curves=curves,
        training_curves=training_curves,
        profiles=profiles,
        improvements=improvements,
        baseline=baseline_label,
        problems=problems,
        repetitions=options["repetitions"],
        confidence=confidence,
        score_ranges=_score_ranges(scored, score_kinds),
        run_headers=read_run_headers(runs.sources),
        benchbase_version=__version__,
    )


# ============================================================================================
# The steps of build_report


def _check_options(metric: str, group_by: Sequence[str], repetitions: int, confidence: float) -> None:
    if metric not in METRICS:
        suggestion = close_match(metric, METRICS)
        hint = f'; did you mean "{suggestion}"?' if suggestion else ""
        raise UserError(
            f'unknown metric "{metric}"{hint} (choose final: the final evaluation, or auc: the area '
            "under the learning curve)"
        )
    for name in group_by:
        if name not in GROUP_FIELDS:
            suggestion = close_match(name, GROUP_FIELDS)
            hint = f'; did you mean "{suggestion}"?' if suggestion else ""
            raise UserError(f'cannot group by "{name}"{hint} (choose from {", ".join(GROUP_FIELDS)})')
    if isinstance(repetitions, bool) or int(repetitions) != repetitions or repetitions < 1:
        raise UserError(f"repetitions {repetitions}: give a whole number of bootstrap repetitions, at least 1")
    if not 0 < confidence < 1:
        raise UserError(f"confidence {confidence}: give a level strictly between 0 and 1, e.g. 0.95")


@dataclass
class _Scored:
    """The completed cells' scores on the ranked split, grouped into entries."""

    cells: CellScores
    split: int  # index into cells.scores.splits
    value_of: dict[str, float]  # cell id -> its score by the chosen metric (NaN: none)
    auc_of: dict[str, float]  # cell id -> its area under the learning curve
    entries: Entries
    tasks: list[str]  # sorted: the tasks with at least one score
    options: dict[str, Any]  # the bootstrap's repetitions, confidence and seed


def _split_index(splits: list[str], split: str) -> int:
    """Where `split` is in `splits`; a UserError with a close match when it is not there."""
    if split in splits:
        return splits.index(split)
    if not splits:
        raise UserError("the completed cells have no evaluation or episode rows: nothing to score")
    available = _split_order(splits)
    same = [name for name in available if name.lower() == split.lower()]
    suggestion = same[0] if same else close_match(split, available)
    hint = f'; did you mean "{suggestion}"?' if suggestion else ""
    raise UserError(f'no evaluations on split "{split}"{hint} (available: {", ".join(available)})')


def _entries_on_split(
    runs: Runs,
    cells: CellScores,
    metric: str,
    split: str,
    group_by: Sequence[str],
    options: dict[str, Any],
    problems: list[str],
) -> _Scored:
    """Each completed cell's score on `split`, grouped into entries; cells left without a score,
    cells not completed and entries' missing runs go to `problems`."""
    scores = cells.scores
    s = _split_index(scores.splits, split)
    chosen = scores.final if metric == "final" else scores.auc
    value_of = {cid: float(chosen[i, s]) for i, cid in enumerate(cells.cell_ids)}
    auc_of = {cid: float(scores.auc[i, s]) for i, cid in enumerate(cells.cell_ids)}
    without_split = []
    for f, env in enumerate(cells.env_names):
        if np.isnan(chosen[cells.cell_family == f, s]).all():
            without_split.append(env)
            problems.append(f"env family {env} has no evaluations on split {split}: left out of the scores")
    for cell in cells.completed:
        if math.isnan(value_of[cell["cell_id"]]) and cell["env"] not in without_split:
            problems.append(f"completed cell {cell_name(cell)} has no score on split {split}: left out")
    entries = group_entries(runs, cells.cell_ids, value_of, group_by)
    problems += [excluded_line(cell) for cell in runs.cells if cell["status"] != "completed"]
    tasks = sorted({entries.task_of[cid] for cid in cells.cell_ids if not math.isnan(value_of[cid])})
    problems += coverage_problems(entries, tasks)
    return _Scored(cells, s, value_of, auc_of, entries, tasks, options)


@dataclass
class _Aggregates:
    """Per scored entry: its tasks and [runs, tasks] score matrix; per entry: its estimates."""

    matrices: dict[EntryKey, tuple[list[str], np.ndarray]]
    estimates: dict[EntryKey, dict[str, Estimate]]  # iqm, median, mean, optimality_gap
    auc: dict[EntryKey, Estimate]  # IQM of the area under the learning curve


def _aggregate(scored: _Scored, metric: str) -> _Aggregates:
    aggregates = _Aggregates({}, {}, {})
    for key in scored.entries.keys:
        members = scored.entries.members[key]
        own = [task for task in scored.tasks if members.get(task)]
        if not own:
            aggregates.estimates[key] = {name: _NO_ESTIMATE for name in ("iqm", "median", "mean", "optimality_gap")}
            aggregates.auc[key] = _NO_ESTIMATE
            continue
        matrix = score_matrix(members, scored.value_of, own)
        aggregates.matrices[key] = (own, matrix)
        estimates = stats.aggregate_estimates(matrix, **scored.options)
        if metric == "auc":
            auc = estimates["iqm"]
        else:
            auc_matrix = score_matrix(members, scored.auc_of, own)
            auc = stats.aggregate_estimates(auc_matrix, aggregates=("iqm",), **scored.options)["iqm"]
        if scored.entries.runs(key) < INTERVAL_RUNS:  # one seed: every resample is the data itself
            estimates = {name: _point_only(estimate) for name, estimate in estimates.items()}
            auc = _point_only(auc)
        aggregates.estimates[key], aggregates.auc[key] = estimates, auc
    return aggregates


def _point_only(estimate: Estimate) -> Estimate:
    """The point estimate without its interval (too few runs to give one)."""
    return Estimate(estimate.value, NAN, NAN)


def _rank(key: EntryKey, entries: Entries, aggregates: _Aggregates) -> tuple:
    """Sort key: best IQM first, entries without a score last. Entries with equal IQM share a rank
    (`benchbase.report.model.ranks`); the mean, then the label, only fix the order they are listed in."""
    value, mean = aggregates.estimates[key]["iqm"].value, aggregates.estimates[key]["mean"].value
    return (
        math.isnan(value),
        -value if not math.isnan(value) else 0.0,
        -mean if not math.isnan(mean) else 0.0,
        entries.labels[key],
    )


def _baseline(
    baseline: str | None, entries: Entries, ordered: list[EntryKey], aggregates: _Aggregates, problems: list[str]
) -> str | None:
    """The label of the entry `baseline` names (None without one)."""
    if baseline is None:
        return None
    label = resolve_baseline(baseline, [entries.labels[key] for key in ordered])
    if _key_of_label(entries, label) not in aggregates.matrices:
        problems.append(f"baseline {label} has no scored run: no probability of improvement against it")
    return label


def _key_of_label(entries: Entries, label: str) -> EntryKey:
    return {entries.labels[key]: key for key in entries.keys}[label]


def _improvement(scored: _Scored, aggregates: _Aggregates, x: EntryKey, y: EntryKey) -> Estimate | None:
    """P(X > Y) on the tasks both entries have runs on; None when they share none."""
    if x not in aggregates.matrices or y not in aggregates.matrices:
        return None
    common = [task for task in aggregates.matrices[x][0] if task in aggregates.matrices[y][0]]
    if not common:
        return None
    members = scored.entries.members
    estimate = stats.probability_of_improvement(
        score_matrix(members[x], scored.value_of, common),
        score_matrix(members[y], scored.value_of, common),
        **scored.options,
    )
    few = min(scored.entries.seeds(members[z][task]) for z in (x, y) for task in common)
    return _point_only(estimate) if few < INTERVAL_RUNS else estimate


def _improvements(
    scored: _Scored, aggregates: _Aggregates, ranked: list[EntryKey], baseline_label: str | None, problems: list[str]
) -> list[Improvement]:
    """Every ordered pair of scored entries when there are few; else each against the baseline
    (or the leader)."""
    labels = scored.entries.labels
    improvements: list[Improvement] = []
    if len(ranked) <= PAIRWISE_LIMIT:
        for i, x in enumerate(ranked):
            for y in ranked[i + 1 :]:
                estimate = _improvement(scored, aggregates, x, y)
                if estimate is None:
                    problems.append(f"{labels[x]} and {labels[y]} share no env family: no probability of improvement")
                    continue
                improvements.append(Improvement(labels[x], labels[y], estimate))
                # P(Y > X) = 1 − P(X > Y) on the very same bootstrap samples (ties count one half).
                improvements.append(
                    Improvement(labels[y], labels[x], Estimate(1 - estimate.value, 1 - estimate.high, 1 - estimate.low))
                )
    elif ranked:
        reference = _key_of_label(scored.entries, baseline_label) if baseline_label is not None else ranked[0]
        for x in ranked:
            estimate = _improvement(scored, aggregates, x, reference) if x != reference else None
            if estimate is not None:
                improvements.append(Improvement(labels[x], labels[reference], estimate))
    return improvements


def _leaderboard(
    runs: Runs,
    scored: _Scored,
    aggregates: _Aggregates,
    ordered: list[EntryKey],
    baseline_label: str | None,
    improvements: list[Improvement],
) -> list[LeaderboardRow]:
    """One row per entry, best first, with its costs (means over its completed cells)."""
    entries = scored.entries
    found = {(imp.better, imp.worse): imp.probability for imp in improvements}
    completed_of: dict[EntryKey, list[dict[str, Any]]] = {}
    for cell in scored.cells.completed:
        completed_of.setdefault(entries.key_of[cell["cell_id"]], []).append(cell)
    rows: list[LeaderboardRow] = []
    for key in ordered:
        label, cells, estimates = entries.labels[key], completed_of.get(key, []), aggregates.estimates[key]
        p_baseline = None
        if baseline_label is not None and label != baseline_label:
            p_baseline = found.get((label, baseline_label))
            if p_baseline is None:
                p_baseline = _improvement(scored, aggregates, key, _key_of_label(entries, baseline_label))
        recorded = [runs.consensus[c["cell_id"]] for c in cells if runs.consensus.get(c["cell_id"]) is not None]
        algorithm, variant, topology, replay, setting = key
        rows.append(
            LeaderboardRow(
                entry=label,
                algorithm=algorithm,
                topology=topology,
                replay=replay,
                variant=variant,
                runs=entries.runs(key),
                excluded=entries.excluded.get(key, 0),
                iqm=estimates["iqm"],
                median=estimates["median"],
                mean=estimates["mean"],
                optimality_gap=estimates["optimality_gap"],
                auc=aggregates.auc[key],
                probability_of_improvement=p_baseline,
                steps_per_second=_mean(c.get("steps_per_second") for c in cells),
                wall_time_s=_mean(c.get("wall_time_s") for c in cells),
                bytes_sent_per_learner=_mean(c.get("bytes_sent_per_learner") for c in cells),
                consensus_distance=_mean(recorded) if recorded else None,
                setting=setting,
            )
        )
    return rows


def _profiles(scored: _Scored, aggregates: _Aggregates, ranked: list[EntryKey]) -> list[Profile]:
    """Performance profiles over 0..1 (and beyond, where scores are); raw returns over the data's range."""
    values = np.array([v for v in scored.value_of.values() if not math.isnan(v)])
    kinds = {scored.cells.families[scored.entries.env_of_task[task]].kind for task in scored.tasks}
    if kinds == {RAW}:  # raw returns: the data's own range
        low, high = (float(values.min()), float(values.max())) if len(values) else (0.0, 1.0)
        high = high if high > low else low + 1.0
    else:
        low = min(0.0, float(values.min())) if len(values) else 0.0
        high = max(1.0, float(values.max())) if len(values) else 1.0
    thresholds = np.linspace(low, high, 101)
    profiles = []
    for key in ranked:
        fraction, f_low, f_high = stats.performance_profile(aggregates.matrices[key][1], thresholds, **scored.options)
        if scored.entries.runs(key) < INTERVAL_RUNS:
            f_low, f_high = np.full_like(fraction, NAN), np.full_like(fraction, NAN)
        profiles.append(Profile(scored.entries.labels[key], thresholds, fraction, f_low, f_high))
    return profiles


def _curves(scored: _Scored, aggregates: _Aggregates, ranked: list[EntryKey], problems: list[str]) -> list[Curve]:
    """Per scored entry and task: the mean learning curve over the evaluations every run has."""
    scores, s = scored.cells.scores, scored.split
    index_of = {cid: i for i, cid in enumerate(scored.cells.cell_ids)}
    curves: list[Curve] = []
    ragged: list[str] = []
    for key in ranked:
        label = scored.entries.labels[key]
        for task in aggregates.matrices[key][0]:
            rows_of = [index_of[cid] for cid in scored.entries.members[key][task]]
            curve = scores.curve[rows_of, s, :]
            present = ~np.isnan(curve)
            points = np.flatnonzero(present.all(axis=0))
            if len(points) < np.count_nonzero(present.any(axis=0)):
                ragged.append(f"{label} on {task}")
            if len(points):
                mean, low, high = stats.mean_with_interval(curve[:, points], **scored.options)
                seeds = scored.entries.seeds(scored.entries.members[key][task])
                if seeds < INTERVAL_RUNS:
                    low, high = np.full_like(mean, NAN), np.full_like(mean, NAN)
                with quiet():
                    steps = np.nanmean(scores.steps[rows_of, s][:, points], axis=0)
                curves.append(Curve(label, task, steps, mean, low, high, np.full(len(points), seeds)))
    if ragged:
        problems.append(
            f"learning curves keep only the evaluations that every run has ({'; '.join(ragged[:3])}"
            f"{'; …' if len(ragged) > 3 else ''}): its runs were evaluated a different number of times"
        )
    return curves


def _training_curves(
    scored: _Scored, aggregates: _Aggregates, ranked: list[EntryKey], binned: TrainingBins, problems: list[str]
) -> list[TrainingCurve]:
    """Per scored entry and task (those with evaluation curves): the mean over runs of each bin's
    training score, at the bins some run has episodes in; no interval at a bin fewer than
    `INTERVAL_RUNS` runs (seeds) have a score in."""
    index_of = {cid: i for i, cid in enumerate(scored.cells.cell_ids)}
    curves: list[TrainingCurve] = []
    without: list[str] = []
    for key in ranked:
        label = scored.entries.labels[key]
        for task in aggregates.matrices[key][0]:
            cell_ids = scored.entries.members[key][task]
            rows_of = [index_of[cid] for cid in cell_ids]
            without += [cid for cid, row in zip(cell_ids, rows_of) if not binned.episodes[row].any()]
            episodes = binned.episodes[rows_of]
            points = np.flatnonzero(episodes.sum(axis=0) > 0)
            if not len(points):
                continue
            score = binned.score[rows_of][:, points]
            mean, low, high = stats.mean_with_interval(score, **scored.options)
            observed = ~np.isnan(score)
            runs = np.array(
                [scored.entries.seeds([c for c, seen in zip(cell_ids, column) if seen]) for column in observed.T]
            )
            low, high = np.where(runs < INTERVAL_RUNS, NAN, low), np.where(runs < INTERVAL_RUNS, NAN, high)
            start, end = binned.edges(rows_of)
            with quiet():
                returns = np.nanmean(binned.episode_return[rows_of][:, points], axis=0)
            curves.append(
                TrainingCurve(
                    label,
                    task,
                    (start[points] + end[points]) / 2,
                    mean,
                    low,
                    high,
                    runs,
                    bin_start=start[points],
                    bin_end=end[points],
                    episode_return=returns,
                    episodes=episodes[:, points].sum(axis=0),
                )
            )
    if without:
        names = {cell["cell_id"]: cell for cell in scored.cells.completed}
        problems.append(
            f"{len(without)} scored cell(s) have no training episodes (e.g. {cell_name(names[without[0]])}: an older "
            "run without episode files, or no episode finished): no training curve from them"
        )
    return curves


def _generalisation(scored: _Scored, aggregates: _Aggregates, ranked: list[EntryKey]) -> list[GeneralisationCell]:
    """Per scored entry, task and split: the mean final score over its runs (Packer et al.'s table);
    a single cell's success rate carries its Wilson interval instead of a bootstrap one."""
    scores = scored.cells.scores
    index_of = {cid: i for i, cid in enumerate(scored.cells.cell_ids)}
    split_columns = _split_order(scores.splits)
    columns = [scores.splits.index(name) for name in split_columns]
    table: list[GeneralisationCell] = []
    for key in ranked:
        label = scored.entries.labels[key]
        for task in aggregates.matrices[key][0]:
            cell_ids = scored.entries.members[key][task]
            rows_of = [index_of[cid] for cid in cell_ids]
            finals = scores.final[rows_of][:, columns]
            observed = ~np.isnan(finals).all(axis=0)
            if not observed.any():
                continue
            mean, low, high = stats.mean_with_interval(finals[:, observed], **scored.options)
            success = scored.cells.families[scored.entries.env_of_task[task]].kind == SUCCESS
            for j, name in enumerate(np.array(split_columns)[observed]):
                present = [cid for cid, value in zip(cell_ids, finals[:, observed][:, j]) if not np.isnan(value)]
                runs = scored.entries.seeds(present)
                estimate, episodes = Estimate(float(mean[j]), float(low[j]), float(high[j])), 0
                if len(present) == 1 and success:
                    episodes = int(scores.final_episodes[index_of[present[0]], scores.splits.index(str(name))])
                    estimate, episodes = _wilson(estimate.value, episodes, scored.options["confidence"])
                elif runs < INTERVAL_RUNS:
                    estimate = _point_only(estimate)
                table.append(GeneralisationCell(label, task, str(name), estimate, runs, episodes))
    return table


def _wilson(rate: float, episodes: int, confidence: float) -> tuple[Estimate, int]:
    """A single cell's success rate with its Wilson interval over its episodes (none without)."""
    if episodes <= 0:
        return Estimate(rate, NAN, NAN), 0
    low, high = stats.wilson_interval(round(rate * episodes), episodes, confidence)
    return Estimate(rate, low, high), episodes


def _score_kinds(scored: _Scored, problems: list[str]) -> dict[str, str]:
    """Task -> how it is scored (success rate, normalised or raw return)."""
    score_kinds = {task: scored.cells.families[scored.entries.env_of_task[task]].kind for task in scored.tasks}
    if RAW in score_kinds.values() and len(set(score_kinds.values())) > 1:
        problems.append(
            "raw returns are pooled with normalised scores: compare entries within one family, or declare score_range"
        )
    return score_kinds


def _score_ranges(scored: _Scored, score_kinds: dict[str, str]) -> dict[str, tuple[float, float]]:
    """Task -> (random, reference) of the tasks normalised by one range for their whole family."""
    ranges = {}
    for task, kind in score_kinds.items():
        family = scored.cells.families[scored.entries.env_of_task[task]]
        if kind == NORMALISED and not family.per_task:
            ranges[task] = (family.low, family.high)
    return ranges


def _split_order(splits: Sequence[str]) -> list[str]:
    order = {"train": 0, "D": 1, "R": 2, "E": 3}
    return sorted(splits, key=lambda s: (order.get(s, 4), s))


def _mean(values: Iterable[Any]) -> float:
    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return sum(finite) / len(finite) if finite else NAN
