"""How long `bench report` takes over a large results folder.

    python benchmarks/report_speed.py                 # 100 cells, 200,000 episode rows
    python benchmarks/report_speed.py --cells 200 --episodes 400000 --keep /tmp/big

Writes a synthetic run folder with the real schemas and writers: 5 algorithm variants × 2
topologies × 2 env families (random-cartpole: success, splits D/R/E; Pendulum-v1: normalised
return, train split only) × 5 seeds = 100 cells of 4 learners each, with `--episodes` training
episode rows in all, 5 evaluations of 10 episodes per split and learner, and 100 metric points of
15 metrics per learner (consensus distance among them), as a real run writes them. Then times:

1. in this process: `load_runs`, `build_report` (2,000 bootstrap repetitions), and writing
   leaderboard.parquet + report.md, then report.html;
2. the command, end to end in a fresh interpreter: `python -m benchbase report DIR`;
3. the same folder with the evaluations removed, so that every cell is scored from its training
   episodes: the path that reads all the episode rows.

Target: under 5 s for the command over 100 cells and 200,000 episode rows.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchbase.report.build import build_report, env_registry, load_runs, write_report  # noqa: E402
from benchbase.results import (  # noqa: E402
    EPISODES_SCHEMA,
    EVALUATIONS_SCHEMA,
    METRICS_SCHEMA,
    RunFolder,
    write_table,
)

LEARNERS = 4
EVALUATIONS = 5
EVAL_EPISODES = 10
METRIC_POINTS = 100
METRIC_NAMES = (
    "loss",
    "policy_loss",
    "value_loss",
    "entropy",
    "grad_norm",
    "bytes_sent",
    "messages_sent",
    "messages_received",
    "publishes_skipped",
    "mix_wait_s",
    "steps_per_second",
    "recent_return",
    "consensus_distance",
    "staleness_mean",
    "staleness_max",
)
FAMILIES = {"random-cartpole": ("train", "D", "R", "E"), "Pendulum-v1": ("train",)}
BUDGET = 200_000


def _cells(count: int) -> list[dict]:
    algorithms = [
        ("diff-a2c", ""),
        ("diff-a2c", "diff-a2c.lr=0.002"),
        ("diff-ppo", ""),
        ("gala-a2c", ""),
        ("gala-a2c", "gala-a2c.num_peers=2"),
    ]
    cells = []
    index = 0
    while len(cells) < count:
        for algorithm, variant in algorithms:
            for topology in ("ring", "isolated"):
                for env in FAMILIES:
                    if len(cells) < count:
                        key = f"{algorithm}|{variant}|{topology}|{env}|{index}"
                        cells.append(
                            {
                                "algorithm": algorithm,
                                "variant": variant,
                                "topology": topology,
                                "env": env,
                                "seed": index,
                                "cell_id": hashlib.sha256(key.encode()).hexdigest()[:12],
                            }
                        )
        index += 1
    return cells


def _table(schema: pa.Schema, columns: dict) -> pa.Table:
    return pa.Table.from_pydict(columns, schema=schema)


def write_folder(root: Path, cells: int, episodes: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    folder = RunFolder(root)
    rows = []
    specs = _cells(cells)
    per_learner = max(1, episodes // (len(specs) * LEARNERS))
    for spec in specs:
        cell_id, env = spec["cell_id"], spec["env"]
        skill = rng.uniform(0.2, 1.0)
        success_family = env == "random-cartpole"
        rows.append(
            {
                "cell_id": cell_id,
                "algorithm": spec["algorithm"],
                "topology": spec["topology"],
                "env": env,
                "replay": "none",
                "variant": spec["variant"],
                "seed": spec["seed"],
                "learners": LEARNERS,
                "status": "completed",
                "error": None,
                "wall_time_s": float(rng.uniform(50, 100)),
                "startup_s": 0.1,
                "env_steps": BUDGET,
                "steps_per_second": float(rng.uniform(2000, 4000)),
                "final_return": None,
                "final_success": None,
                "bytes_sent_per_learner": 0.0 if spec["topology"] == "isolated" else 1e8,
                "transport": "shm",
                "config": f'{{"env_steps": {BUDGET}}}',
            }
        )
        for learner in range(LEARNERS):
            # Training episodes.
            steps = np.sort(rng.integers(1, BUDGET // LEARNERS, per_learner))
            progress = steps / (BUDGET / LEARNERS)
            if success_family:
                success = rng.random(per_learner) < skill * progress
                returns = np.where(success, 500.0, rng.uniform(10, 200, per_learner))
            else:
                success = None
                returns = -1222.0 + (1072.0 * skill * progress) + rng.normal(0, 50, per_learner)
            write_table(
                folder.learner_path("episodes", cell_id, learner),
                _table(
                    EPISODES_SCHEMA,
                    {
                        "cell_id": [cell_id] * per_learner,
                        "learner": [learner] * per_learner,
                        "simulator": rng.integers(0, 8, per_learner).tolist(),
                        "task_id": [f"R-{learner}"] * per_learner,
                        "task_params": [[("length", 0.5), ("masspole", 0.1)]] * per_learner,
                        "env_step": steps.tolist(),
                        "cell_env_step": (steps * LEARNERS).tolist(),
                        "episode_return": returns.tolist(),
                        "episode_length": rng.integers(10, 500, per_learner).tolist(),
                        "success": success.tolist() if success is not None else [None] * per_learner,
                        "wall_time_s": (steps / 3000.0).tolist(),
                    },
                ),
            )
            # Evaluations: every split, EVAL_EPISODES episodes each.
            columns: dict[str, list] = {name: [] for name in EVALUATIONS_SCHEMA.names}
            for k in range(1, EVALUATIONS + 1):
                for split in FAMILIES[env]:
                    n = EVAL_EPISODES
                    level = skill * k / EVALUATIONS
                    ok = (rng.random(n) < level) if success_family else None
                    ret = (
                        np.where(ok, 500.0, 50.0) if ok is not None else -1222.0 + 1072.0 * level + rng.normal(0, 30, n)
                    )
                    step = BUDGET * k // EVALUATIONS
                    columns["cell_id"] += [cell_id] * n
                    columns["learner"] += [learner] * n
                    columns["evaluation"] += [k] * n
                    columns["final"] += [k == EVALUATIONS] * n
                    columns["env_step"] += [step // LEARNERS] * n
                    columns["cell_env_step"] += [step] * n
                    columns["split"] += [split] * n
                    columns["task_id"] += [f"{split}-eval-{i}" for i in range(n)]
                    columns["task_params"] += [[("length", 0.5)]] * n
                    columns["episode_return"] += ret.tolist()
                    columns["episode_length"] += [200] * n
                    columns["success"] += ok.tolist() if ok is not None else [None] * n
                    columns["wall_time_s"] += [1.0] * n
            write_table(folder.learner_path("evaluations", cell_id, learner), _table(EVALUATIONS_SCHEMA, columns))
            # Metrics, long format.
            points = np.arange(1, METRIC_POINTS + 1)
            m = len(METRIC_NAMES)
            write_table(
                folder.learner_path("metrics", cell_id, learner),
                _table(
                    METRICS_SCHEMA,
                    {
                        "cell_id": [cell_id] * (METRIC_POINTS * m),
                        "learner": [learner] * (METRIC_POINTS * m),
                        "iteration": np.repeat(points, m).tolist(),
                        "env_step": np.repeat(points * 100, m).tolist(),
                        "cell_env_step": np.repeat(points * 400, m).tolist(),
                        "wall_time_s": np.repeat(points * 0.5, m).tolist(),
                        "metric": list(METRIC_NAMES) * METRIC_POINTS,
                        "value": rng.random(METRIC_POINTS * m).tolist(),
                    },
                ),
            )
    folder.write_cells(rows)
    return root


def _time(label: str, function, *args, **kwargs):
    started = time.perf_counter()
    result = function(*args, **kwargs)
    print(f"  {label:<44} {time.perf_counter() - started:6.2f} s", flush=True)
    return result


def measure(root: Path, out: Path, repetitions: int) -> None:
    started = time.perf_counter()
    registry = _time("env registry", env_registry)
    runs = _time("load_runs", load_runs, [str(root)])
    report = _time(
        f"build_report ({repetitions:,} repetitions)", build_report, runs, repetitions=repetitions, registry=registry
    )
    _time("write leaderboard.parquet + report.md", write_report, report, out, html=False)
    _time("write report.html as well", write_report, report, out)
    print(f"  {'in-process total':<44} {time.perf_counter() - started:6.2f} s")
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "benchbase", "report", str(root), "--out", str(out), "--repetitions", str(repetitions)],
        capture_output=True,
        text=True,
    )
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(result.stderr)
    print(f"  {'bench report (fresh interpreter, HTML too)':<44} {elapsed:6.2f} s")
    for problem in report.problems:
        print(f"  problem: {problem}")
    print(
        f"  entries {len(report.leaderboard)}, problems {len(report.problems)}, "
        f"evaluation rows {runs.evaluations.num_rows:,}, episode rows read {runs.episodes.num_rows:,}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=100)
    parser.add_argument("--episodes", type=int, default=200_000)
    parser.add_argument("--repetitions", type=int, default=2000)
    parser.add_argument("--keep", type=Path, default=None, help="write the folder here and keep it")
    args = parser.parse_args()
    base = args.keep or Path(tempfile.mkdtemp(prefix="report-speed-"))
    root = base / "run"
    try:
        if root.exists():
            shutil.rmtree(root)
        started = time.perf_counter()
        write_folder(root, args.cells, args.episodes)
        print(
            f"wrote {args.cells} cells × {LEARNERS} learners, {args.episodes:,} episode rows to {root} "
            f"in {time.perf_counter() - started:.1f} s"
        )
        print("with evaluations:")
        measure(root, base / "report", args.repetitions)
        shutil.rmtree(root / "evaluations")
        print(
            "without evaluations (every cell scored from its 200k-row training episodes):"
            if args.episodes == 200_000
            else "without evaluations (scored from training episodes):"
        )
        measure(root, base / "report-episodes", args.repetitions)
    finally:
        if args.keep is None:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
