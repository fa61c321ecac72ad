"""Steps/s of many small learners against one centralised learner, each cell a `bench run` of its own.

    python benchmarks/learner_blocks.py                             # 200,000 env steps per cell
    python benchmarks/learner_blocks.py --quick --no-64             # 50,000, without the 64-learner ring
    python benchmarks/learner_blocks.py --learners-per-process 4    # blocks of 4 where they divide a cell
    python benchmarks/learner_blocks.py --extra "--transport p2p"   # more `bench run` options, for every cell
    python benchmarks/learner_blocks.py --algorithm vtrace          # V-trace (uniform replay) instead
    python benchmarks/learner_blocks.py --rounds 3 --no-64          # every cell 3 times, medians of the ratios

Diff-A2C (or `--algorithm`) on random-cartpole, one seed, no evaluations, the same total env-step budget (and so the
same data) in every cell, 16 simulators in all except the 64-learner ring:

    centralised   1 learner × 16 simulators (topology isolated): the reference
    isolated      4 × 4     ring 4 × 4     ring 16 × 1     isolated 16 × 1     ring 64 × 1

Each cell runs as its own `python -m benchbase run` into a temporary folder, one after another, so
each pays its own start-up; the table comes from each folder's cells.parquet (steps_per_second is
the cell's env steps over its slowest learner's training time; start-up is separate). Issue 15's
targets, as ratios to the centralised cell's steps/s: ring 4 × 4 ≥ 0.8×, ring 16 × 1 ≥ 0.7×, and
ring 64 × 1 completes its budget. `--learners-per-process K` is passed to the `bench run` of each
cell whose learners K divides (1 learner: the centralised cell never takes it); unset, `bench run`
chooses (one block of every learner where the cell allows it). On a machine whose speed drifts
between runs minutes apart, one round's ratios move by a fifth: `--rounds R` runs the list R times
over and prints each cell's ratio to the same round's centralised cell, their median and range,
and in how many rounds a target was met.
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Cell:
    label: str
    topology: str
    learners: int
    simulators_per_learner: int
    target_ratio: float | None = None  # steps/s ≥ this × the centralised cell's
    must_complete: bool = False


CENTRALISED = Cell("centralised", "isolated", 1, 16)
CELLS = (
    CENTRALISED,
    Cell("isolated 4×4", "isolated", 4, 4),
    Cell("ring 4×4", "ring", 4, 4, target_ratio=0.8),
    Cell("ring 16×1", "ring", 16, 1, target_ratio=0.7),
    Cell("isolated 16×1", "isolated", 16, 1),
    Cell("ring 64×1", "ring", 64, 1, must_complete=True),
)


def learners_per_process(value: str) -> int:
    if value.isdigit() and int(value) > 0:
        return int(value)
    raise argparse.ArgumentTypeError(f"{value!r}: expected a positive integer")


ALGORITHMS = {"diff-a2c": [], "diff-ppo": [], "vtrace": ["-r", "uniform"]}  # V-trace learns from replay


def bench_command(
    cell: Cell, env_steps: int, out: Path, blocks: int | None, extra: list[str], algorithm: str = "diff-a2c"
) -> list[str]:
    command = [sys.executable, "-m", "benchbase", "run", "-a", algorithm, "-t", cell.topology, "-e", "random-cartpole"]
    command += ALGORITHMS[algorithm]
    command += ["--learners", str(cell.learners), "--envs-per-learner", str(cell.simulators_per_learner)]
    command += ["--env-steps", str(env_steps), "--seeds", "1", "--evaluations", "0", "--out", str(out)]
    if blocks is not None and blocks <= cell.learners and cell.learners % blocks == 0:
        command += ["--learners-per-process", str(blocks)]
    return command + extra


def run_cell(cell: Cell, env_steps: int, out: Path, blocks: int | None, extra: list[str], algorithm: str) -> dict:
    """Run one cell through the CLI; its cells.parquet row, with the process's exit status, total
    time and last line of output (the error, when it failed before writing the row)."""
    command = bench_command(cell, env_steps, out, blocks, extra, algorithm)
    start = time.perf_counter()
    # From the repository root, which `python -m` puts first on the path: this checkout's benchbase.
    finished = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    outcome = {"returncode": finished.returncode, "process_s": time.perf_counter() - start, "command": command}
    lines = (finished.stderr.strip() or finished.stdout.strip()).splitlines()
    outcome["last_line"] = lines[-1] if lines else ""
    cells_file = out / "cells.parquet"
    if cells_file.exists():
        rows = pq.read_table(cells_file).to_pylist()
        if rows:
            outcome.update(rows[0])
    return outcome


def verdict(cell: Cell, outcome: dict, env_steps: int, ratio: float | None) -> tuple[str, str]:
    """(the target in words, whether it is met) for cells that have one."""
    if cell.target_ratio is not None:
        met = ratio is not None and ratio >= cell.target_ratio
        return f"≥ {cell.target_ratio:.1f}×", "yes" if met else "no"
    if cell.must_complete:
        met = outcome.get("status") == "completed" and (outcome.get("env_steps") or 0) >= env_steps
        return "completes", "yes" if met else "no"
    return "", ""


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def number(value: float | None, pattern: str) -> str:
    return "—" if value is None else format(value, pattern)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--env-steps", type=int, help="env steps per cell, all learners together (default 200,000)")
    parser.add_argument("--quick", action="store_true", help="50,000 env steps per cell unless --env-steps is given")
    parser.add_argument("--no-64", action="store_true", help="skip the 64-learner ring")
    parser.add_argument(
        "--learners-per-process",
        type=learners_per_process,
        metavar="K",
        help="passed to `bench run` as --learners-per-process for each cell whose learners K divides",
    )
    parser.add_argument("--algorithm", choices=sorted(ALGORITHMS), default="diff-a2c", help="the cells' algorithm")
    parser.add_argument("--extra", default="", metavar="ARGS", help='more `bench run` options, e.g. "--transport p2p"')
    parser.add_argument("--keep", type=Path, help="keep each cell's results folder under this new folder")
    parser.add_argument("--rounds", type=int, default=1, help="run every cell this many times over (default 1)")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    env_steps = args.env_steps if args.env_steps is not None else (50_000 if args.quick else 200_000)
    if env_steps < 64 * 5:
        parser.error("--env-steps must be at least 320 (one rollout of every learner of the 64-learner ring)")
    try:
        extra = shlex.split(args.extra)
    except ValueError as error:
        parser.error(f"--extra: {error}")
    if args.keep is not None and args.keep.exists() and any(args.keep.iterdir()):
        # `bench run` into a used folder resumes its cells: the figures would be the old run's.
        parser.error(f"--keep: {args.keep} is not empty; give a new or empty folder")
    cells = [cell for cell in CELLS if not (args.no_64 and cell.learners == 64)]

    print(f"load average (1, 5, 15 min) before: {load_average()}   cores: {os.cpu_count()}")
    blocks = f", --learners-per-process {args.learners_per_process}" if args.learners_per_process else ""
    print(f"{args.algorithm} on random-cartpole, {env_steps:,} env steps per cell, 1 seed, no evaluations{blocks}")
    with tempfile.TemporaryDirectory(prefix="learner-blocks-") as temporary:
        root = args.keep or Path(temporary)
        rounds = []
        for round_number in range(1, args.rounds + 1):
            if args.rounds > 1:
                print(f"round {round_number} of {args.rounds}")
            folder = root if args.rounds == 1 else root / f"round-{round_number}"
            rounds.append(run_round(cells, env_steps, folder, args, extra))
    if args.rounds == 1:
        print_round(rounds[0], env_steps)
    else:
        print_rounds(cells, rounds, env_steps)
    print(f"load average (1, 5, 15 min) after:  {load_average()}")


def run_round(cells: list[Cell], env_steps: int, root: Path, args: argparse.Namespace, extra: list[str]) -> list:
    """Every cell once, in order: [(cell, outcome)]; exits when `bench run` wrote no result."""
    outcomes = []
    for cell in cells:
        out = root / cell.label.replace(" ", "-").replace("×", "x")
        outcome = run_cell(cell, env_steps, out, args.learners_per_process, extra, args.algorithm)
        if "status" not in outcome:
            exited = f"`bench run` exited {outcome['returncode']} without a result"
            print(f"{cell.label}: {exited}: {outcome['last_line']}")
            print("command:", shlex.join(outcome["command"]))
            raise SystemExit(1)
        status = outcome["status"]
        print(f"{cell.label}: {status} in {outcome['process_s']:.1f} s (the whole `bench run` process)")
        if status != "completed":
            print(f"  {outcome.get('error') or outcome['last_line']}")
        outcomes.append((cell, outcome))
    return outcomes


def rates_and_ratios(outcomes: list) -> list[tuple[float | None, float | None]]:
    """Each cell's steps/s (None unless completed) and its ratio to the round's centralised cell."""
    rates = [o.get("steps_per_second") if o.get("status") == "completed" else None for _, o in outcomes]
    reference = rates[0]
    return [(rate, rate / reference if rate is not None and reference else None) for rate in rates]


def print_round(outcomes: list, env_steps: int) -> None:
    header = f"{'cell':<14} {'status':<10} {'steps/s':>9} {'ratio':>6} {'wall s':>7} {'start-up s':>10}  target     met"
    print(header)
    print("-" * len(header))
    for (cell, outcome), (rate, ratio) in zip(outcomes, rates_and_ratios(outcomes)):
        target, met = verdict(cell, outcome, env_steps, ratio)
        print(
            f"{cell.label:<14} {outcome['status']:<10} {number(rate, ',.0f'):>9} {number(ratio, '.3f'):>6} "
            f"{number(outcome.get('wall_time_s'), '.1f'):>7} {number(outcome.get('startup_s'), '.1f'):>10}  "
            f"{target:<10} {met}"
        )


def print_rounds(cells: list[Cell], rounds: list[list], env_steps: int) -> None:
    """Per cell over the rounds: median steps/s, the median and range of its ratios, and in how
    many rounds its target was met (a ratio target judged on the median ratio)."""
    count = len(rounds)
    header = (
        f"{'cell':<14} {'completed':>9} {'median steps/s':>14} {'median ratio':>12} {'ratios':>13}  "
        f"target     met (rounds)"
    )
    print(f"{count} rounds; each ratio is to the centralised cell of the same round")
    print(header)
    print("-" * len(header))
    per_round = [rates_and_ratios(outcomes) for outcomes in rounds]
    for index, cell in enumerate(cells):
        cell_outcomes = [round_outcomes[index][1] for round_outcomes in rounds]
        rates = [figures[index][0] for figures in per_round if figures[index][0] is not None]
        ratios = [figures[index][1] for figures in per_round if figures[index][1] is not None]
        median_ratio = statistics.median(ratios) if ratios else None
        rounds_met = sum(
            verdict(cell, o, env_steps, figures[index][1])[1] == "yes" for o, figures in zip(cell_outcomes, per_round)
        )
        target, met = verdict(cell, cell_outcomes[0], env_steps, median_ratio)  # a ratio target: on the median
        if cell.must_complete:
            met = "yes" if rounds_met == count else "no"
        spread = f"{min(ratios):.2f}–{max(ratios):.2f}" if ratios else "—"
        completed = sum(o.get("status") == "completed" for o in cell_outcomes)
        median_rate = statistics.median(rates) if rates else None
        print(
            f"{cell.label:<14} {f'{completed}/{count}':>9} {number(median_rate, ',.0f'):>14} "
            f"{number(median_ratio, '.3f'):>12} {spread:>13}  {target:<10} {met}"
            + (f" ({rounds_met} of {count})" if target else "")
        )


if __name__ == "__main__":
    main()
