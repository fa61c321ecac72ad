"""A learner block's checkpoints on a GPU resume exactly (step 6 of benchmarks/gpu_check.sh).

Each cell runs twice with `--device DEVICE`: straight through, and stopped by Ctrl-C (SIGINT)
once every learner has written its first periodic checkpoint, then run again, which resumes each
learner from its checkpoint. The two runs must write the same rows (timings aside) and end with the
same parameters, bit for bit, as they do on the CPU in tests/learner/test_blocks.py. A block on
CUDA keeps its parameters, optimiser state and replay on the GPU; its checkpoints hold them as
host tensors (format 3), so this checks the copy both ways.

    python benchmarks/gpu_resume.py [--device cuda] [--out FOLDER]
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import torch

from benchbase.checkpoints import checkpoint

CELLS = {
    "diff-a2c ring 4x4 block": [
        *("-a", "diff-a2c", "-t", "ring", "-e", "random-cartpole", "--learners", "4", "--envs-per-learner", "4"),
        *("--env-steps", "48000", "--checkpoint-every", "9600", "--evaluations", "2", "--eval-episodes", "2"),
    ],
    "vtrace ring 2x4 block, replay": [
        *("-a", "vtrace", "-t", "ring", "-e", "random-cartpole", "-r", "uniform:min_fill=16"),
        *("--learners", "2", "--envs-per-learner", "4", "--env-steps", "24000", "--checkpoint-every", "4800"),
        *("--checkpoint-replay", "--evaluations", "2", "--eval-episodes", "2"),
    ],
}


def bench(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "benchbase", "run", *args], capture_output=True, text=True, timeout=timeout
    )


def interrupted(args: list[str], out: Path, learners: int) -> float:
    """Run `args` into `out`, Ctrl-C once every learner has a checkpoint; the env steps reached."""
    process = subprocess.Popen(
        [sys.executable, "-m", "benchbase", "run", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        deadline = time.time() + 180
        while len(list(out.glob("checkpoints/*/learner-*/step-*.json"))) < learners:
            if time.time() > deadline or process.poll() is not None:
                raise SystemExit(f"no checkpoint of every learner in {out} within 180 s, or the run ended first")
            time.sleep(0.05)
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=120)
    finally:
        process.kill()
    if process.returncode != 130:
        raise SystemExit(f"the interrupted run exited {process.returncode}, not 130:\n{output[-2000:]}")
    sidecars = [json.loads(path.read_text()) for path in out.glob("checkpoints/*/learner-*/step-*.json")]
    if {sidecar["format"] for sidecar in sidecars} != {checkpoint.FORMAT_VERSION}:
        raise SystemExit(f"checkpoint formats {sorted({sidecar['format'] for sidecar in sidecars})}")
    return max(sidecar["env_steps"] for sidecar in sidecars)


def learner_rows(out: Path) -> dict[str, list[dict]]:
    """Each learner's rows of each table in the order written, the timings' values left out."""
    found = {}
    for table in ("episodes", "evaluations", "metrics"):
        for path in sorted(out.glob(f"{table}/*/learner-*.parquet")):
            rows = pq.read_table(path).drop(["wall_time_s"]).to_pylist()
            for row in rows:
                if table == "metrics" and (row["metric"].endswith("_s") or row["metric"] == "steps_per_second"):
                    row["value"] = None
            found[f"{table}/{path.stem}"] = rows
    return found


def final_parameters(out: Path) -> dict[str, torch.Tensor]:
    found = {}
    for folder in sorted(out.glob("checkpoints/*/learner-*")):
        latest, _ = checkpoint.latest_good(folder)
        found[folder.name] = latest.state["learner"]["parameters"]
    return found


def check(label: str, args: list[str], out: Path) -> bool:
    learners = int(args[args.index("--learners") + 1])
    started = time.perf_counter()
    straight = bench(*args, "--out", str(out / "straight"))
    if straight.returncode != 0:
        print(f"FAILED: {label}: the straight run exited {straight.returncode}:\n{straight.stderr[-2000:]}")
        return False
    stopped_at = interrupted(args + ["--out", str(out / "resumed")], out / "resumed", learners)
    resumed = bench(*args, "--out", str(out / "resumed"))
    if resumed.returncode != 0 or "resuming from its checkpoint" not in resumed.stdout:
        print(f"FAILED: {label}: the resumed run exited {resumed.returncode}:\n{resumed.stdout[-2000:]}")
        return False
    expected, got = learner_rows(out / "straight"), learner_rows(out / "resumed")
    different = sorted(name for name in expected if got.get(name) != expected[name])
    if sorted(got) != sorted(expected):
        different.append(f"tables {sorted(set(got) ^ set(expected))}")
    before, after = final_parameters(out / "straight"), final_parameters(out / "resumed")
    unequal = sorted(name for name in before if not torch.equal(before[name], after.get(name, torch.empty(0))))
    rows = sum(len(rows) for rows in expected.values())
    verdict = "the same" if not different and not unequal else "DIFFERENT"
    print(
        f"{label}: stopped at {stopped_at:,} env steps, resumed; {rows:,} rows of {len(expected)} tables and "
        f"{len(before)} learners' final parameters {verdict}"
        + (f": {different + unequal}" if verdict != "the same" else "")
        + f" ({time.perf_counter() - started:.0f} s)"
    )
    return verdict == "the same"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--out", type=Path, default=None)
    options = parser.parse_args()
    out = options.out or Path(tempfile.mkdtemp(prefix="gpu-resume-"))
    if out.exists() and any(out.iterdir()):  # runs there would resume earlier ones, not start afresh
        parser.error(f"--out {out}: give a new or empty folder")
    common = ["--seeds", "1", "--device", options.device]
    passed = [check(label, args + common, out / str(index)) for index, (label, args) in enumerate(CELLS.items())]
    return 0 if all(passed) else 1


if __name__ == "__main__":
    sys.exit(main())
