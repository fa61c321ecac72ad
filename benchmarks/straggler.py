"""Straggler test: one learner of a cell runs at a third of the speed of the others.

    python benchmarks/straggler.py                       # 4 learners, CartPole-v1, slowdown 3
    python benchmarks/straggler.py --learners 2 --env-steps 60000 --pace relative --spin

GALA's headline property: learners that gossip asynchronously do not wait for a slow peer, so
the others keep (nearly) their speed, while synchronous diffusion (Diff-A2C) runs every learner
at the straggler's pace. Cases: GALA (asynchronous, its default) on `directed-ring` and on
`ring`, Diff-A2C (synchronous) on `ring`. For each, a baseline cell (nobody slowed) and a cell
with learner `--slow-learner` slowed; the table gives each learner's env steps/s over its own
training loop, and for the unslowed learners the ratio slowed run / baseline.

The slowing is a local plugin, `benchmarks/straggler_plugin.py` (algorithms `slowed-gala-a2c`
and `slowed-diff-a2c`: the wrapped algorithm with one learner paused after each iteration), so
nothing in the core changes. By default (`--pace absolute`) the straggler is paced to the
baseline speed of the unslowed learners / slowdown; `--pace relative` makes it pause
(slowdown − 1) × its own work instead. Cells run through the launcher in this process, as in
`learner_throughput.py`, with no evaluations.

On a machine with fewer cores than learners the learners share cores, so a straggler that
sleeps hands CPU time to the others (they may get *faster* than in the baseline); `--spin` makes
it busy-wait instead and keep its share. Timings move with whatever else the machine is running.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # before the forkserver starts: learners import the plugin

import pyarrow.compute as pc  # noqa: E402
import pyarrow.dataset as ds  # noqa: E402

from benchbase.api.registry import load_registry  # noqa: E402
from benchbase.grid.expand import expand
from benchbase.grid.spec import make_spec, parse_axis_entry  # noqa: E402
from benchbase.learner.settings import ExecutionSettings  # noqa: E402
from benchbase.run.local import run_cell, warm_up  # noqa: E402

PLUGIN = "benchmarks.straggler_plugin"
CASES = (  # (label, algorithm, topology)
    ("GALA (async)", "gala-a2c", "directed-ring"),
    ("GALA (async)", "gala-a2c", "ring"),
    ("Diff-A2C (sync)", "diff-a2c", "ring"),
)


def run(registry, algorithm: str, topology: str, args: argparse.Namespace, **straggler) -> dict:
    """One cell of `slowed-<algorithm>`; per-learner env steps/s over each learner's training loop."""
    options = ",".join(f"{key}={value}" for key, value in straggler.items())
    entry = f"slowed-{algorithm}" + (f":{options}" if options else "")
    spec = make_spec(
        {},
        {
            "algorithms": [parse_axis_entry(entry, "-a")],
            "topologies": [parse_axis_entry(topology, "-t")],
            "envs": [parse_axis_entry(args.env, "-e")],
            "learners": args.learners,
            "envs_per_learner": args.envs_per_learner,
            "env_steps": args.env_steps,
            "evaluations": 0,
            "seeds": 1,
        },
    )
    (cell,) = expand(spec, registry).cells
    with tempfile.TemporaryDirectory() as out:
        outcome = run_cell(cell, out, lambda event: None, ExecutionSettings(plugins_extra=(PLUGIN,)))
        if outcome.status != "completed":
            raise SystemExit(f"{entry} on {topology} {outcome.status}:\n{outcome.error}")
        # Time spent in the core's mix (waiting for neighbours included), cumulative: the last row.
        in_mix: dict[int, tuple[int, float]] = {}
        for row in ds.dataset(Path(out) / "metrics").to_table(filter=pc.field("metric") == "mix_wait_s").to_pylist():
            if row["iteration"] >= in_mix.get(row["learner"], (-1, 0.0))[0]:
                in_mix[row["learner"]] = (row["iteration"], row["value"])
    train = [s["train_time_s"] for s in outcome.summaries]
    return {
        "rates": [s["env_steps"] / t for s, t in zip(outcome.summaries, train)],
        "mix_share": [in_mix.get(rank, (0, 0.0))[1] / t for rank, t in enumerate(train)],
        "wall_s": outcome.wall_time_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--learners", type=int, default=4)
    parser.add_argument("--envs-per-learner", type=int, default=8)
    parser.add_argument("--env", default="CartPole-v1")
    parser.add_argument("--env-steps", type=int, default=100_000, help="budget of each cell (all learners)")
    parser.add_argument("--slowdown", type=float, default=3.0)
    parser.add_argument("--slow-learner", type=int, default=0)
    parser.add_argument(
        "--pace",
        choices=("absolute", "relative"),
        default="absolute",
        help="absolute: the straggler runs at the others' baseline steps/s / slowdown; "
        "relative: it pauses (slowdown - 1) x its own work after each iteration",
    )
    parser.add_argument("--spin", action="store_true", help="the straggler busy-waits instead of sleeping")
    args = parser.parse_args()
    if args.learners < 2:
        parser.error("--learners must be at least 2: one straggler and the others")
    if not 0 <= args.slow_learner < args.learners:
        parser.error("--slow-learner must be a learner rank")
    warm_up()
    registry = load_registry(extra=(PLUGIN,))
    registry.check()
    if registry.errors:
        raise SystemExit("\n".join(registry.errors))

    cores = len(os.sched_getaffinity(0))
    slow = args.slow_learner
    print(
        f"{args.learners} learners × {args.envs_per_learner} simulators, {args.env}, {args.env_steps:,} env steps "
        f"per cell; learner {slow} slowed {args.slowdown:g}× ({args.pace} pace, "
        f"{'busy-waiting' if args.spin else 'sleeping'}); {cores} CPU cores, {os.cpu_count()} on the machine"
    )
    if cores < args.learners:
        if args.spin:
            what = "busy-waits keeps its share of the CPU"
        else:
            what = "sleeps hands its CPU time to the others, which may then run faster than in the baseline"
        print(f"note: {args.learners} learners share {cores} cores: a straggler that {what}.")
    print()

    rows = []
    for label, algorithm, topology in CASES:
        started = time.perf_counter()
        base = run(registry, algorithm, topology, args)
        others = [r for rank, r in enumerate(base["rates"]) if rank != slow]
        straggler = {"slow_learner": slow, "slowdown": args.slowdown, "spin": str(args.spin).lower()}
        if args.pace == "absolute":
            straggler["max_steps_per_s"] = round(statistics.mean(others) / args.slowdown, 1)
        slowed = run(registry, algorithm, topology, args, **straggler)
        ratios = [slowed["rates"][rank] / base["rates"][rank] for rank in range(args.learners) if rank != slow]
        slowed_others = [r for rank, r in enumerate(slowed["rates"]) if rank != slow]
        rows.append((label, topology, base, slowed, ratios, statistics.mean(others), slowed_others))
        print(
            f"{label} on {topology}, steps/s of learners 0…{args.learners - 1}: "
            f"baseline {' '.join(f'{r:,.0f}' for r in base['rates'])}, "
            f"slowed {' '.join(f'{r:,.0f}' for r in slowed['rates'])} "
            f"(cells {base['wall_s']:.1f} s + {slowed['wall_s']:.1f} s, "
            f"{time.perf_counter() - started:.0f} s in all)"
        )

    print()
    header = (
        f"{'algorithm':<16} {'topology':<14} {'baseline':>9} {'straggler':>10} {'straggler/':>11} "
        f"{'others':>9} {'others slowed/baseline':>23} {'others in mix':>14}"
    )
    print(header)
    print(
        f"{'':<16} {'':<14} {'others':>9} {'steps/s':>10} {'others base':>11} {'slowed':>9} {'mean (min)':>23} "
        f"{'base → slowed':>14}"
    )
    print("-" * len(header))
    for label, topology, base, slowed, ratios, base_others, slowed_others in rows:
        in_mix = [
            statistics.mean(v for rank, v in enumerate(cell["mix_share"]) if rank != slow) for cell in (base, slowed)
        ]
        ratio_text = f"{statistics.mean(ratios):.2f} ({min(ratios):.2f})"
        mix_text = f"{in_mix[0]:.0%} → {in_mix[1]:.0%}"
        print(
            f"{label:<16} {topology:<14} {base_others:>9,.0f} {slowed['rates'][slow]:>10,.0f} "
            f"{slowed['rates'][slow] / base_others:>11.2f} {statistics.mean(slowed_others):>9,.0f} "
            f"{ratio_text:>23} {mix_text:>14}"
        )
    print()
    print(
        "steps/s: a learner's env steps over its own training loop (start-up excluded); 'others': the unslowed "
        "learners, mean;\n'in mix': share of the others' training loop spent in the core's mixing step, waiting "
        "for neighbours included.\nGALA keeps its speed when the others' ratio stays ≥ 0.80; synchronous Diff-A2C "
        "falls to about the straggler's speed."
    )


if __name__ == "__main__":
    main()
