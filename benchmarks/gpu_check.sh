#!/usr/bin/env bash
# What benchbase does on a GPU, within 5 minutes on a machine with one (issue 15, item 5; steps 1-5
# took 144-145 s on one NVIDIA H200 with 16 cores; all seven 328 s, 120 of them a step-5 cell of
# wider networks that ran out of time and has since been made smaller; docs/scaling.md):
#
#   bash benchmarks/gpu_check.sh            # from the repository root, with benchbase importable
#   PYTHON=.venv/bin/python bash benchmarks/gpu_check.sh
#   GPU_CHECK_DEVICE=cpu bash benchmarks/gpu_check.sh   # a rehearsal without a GPU: steps 2-6 on CPU
#
# 1. the NCCL exchange: the communicator's NCCL path (batched send/receive pairs, the group
#    all-reduce) against its default path, bit for bit, on one process per GPU (at least 2 GPUs;
#    with one GPU, a one-process NCCL group checks that NCCL starts and reduces on the device);
# 2. a Diff-A2C ring cell on CUDA, one process per learner (`--learners-per-process 1`);
# 3. the same cell as one learner block on the GPU, then as two blocks of 2 in two processes (they
#    exchange the rows they read: over NCCL with a GPU each, through shared memory on one GPU);
# 4. a block of 256 CartPole learners on the GPU, and the same block on the CPU for comparison;
# 5. a block of 4 Nature-CNN learners on Pong on the GPU, and a block of 64 wide MLPs (hidden 1024),
#    whose GPU memory step 7 sets beside the GPU memory check's estimate;
# 6. a block's checkpoints on the GPU: stopped by Ctrl-C and resumed, the same rows and parameters
#    as a straight run, bit for bit (benchmarks/gpu_resume.py);
# 7. the GPU memory check against this machine's GPUs (benchmarks/gpu_memory.py).
#
# Each cell prints its figures (status, steps/s, wall time, and on a GPU the most memory the
# busiest GPU used while it ran, as nvidia-smi samples it every 200 ms, less what it used before);
# a step that fails prints why and the script goes on, exiting 1 at the end if any failed. Results
# go to a temporary folder (or GPU_CHECK_OUT). Every `bench run` has a time limit, so the whole
# check stays near 5 minutes.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
OUT=${GPU_CHECK_OUT:-$(mktemp -d -t gpu-check-XXXX)}
mkdir -p "$OUT"
failed=0

step() { echo; echo "== $*"; }

DEVICE=${GPU_CHECK_DEVICE:-cuda}

if [ "$DEVICE" = cpu ]; then
  echo "a rehearsal on the CPU: no NCCL step, and every cell runs with --device cpu"
else
"$PYTHON" - <<'EOF' || exit 1
import torch, torch.distributed as dist
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, NCCL available: {dist.is_nccl_available()}")
if not torch.cuda.is_available():
    raise SystemExit("no CUDA device here: this check needs a GPU")
for i in range(torch.cuda.device_count()):
    print(f"cuda:{i}: {torch.cuda.get_device_name(i)}")
EOF

step "1. the NCCL exchange"
timeout 120 "$PYTHON" benchmarks/gpu_nccl.py || { echo "FAILED: the NCCL exchange"; failed=1; }
fi

cell() {  # label, seconds allowed, then bench run options
  local label=$1 limit=$2; shift 2
  local folder="$OUT/$(echo "$label" | tr ' ×' '-x')"
  local started=$SECONDS sampler= before=0
  if [ "$DEVICE" != cpu ]; then
    before=$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits | sort -n | tail -1)
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 200 >"$folder.gpu-memory" &
    sampler=$!
  fi
  # At the limit SIGTERM checkpoints and stops the cell; --kill-after bounds that stop.
  timeout --kill-after=60 "$limit" "$PYTHON" -m benchbase run -a diff-a2c --seeds 1 --evaluations 0 \
      --out "$folder" "$@" >"$folder.log" 2>&1
  local status=$?
  [ -z "$sampler" ] || kill "$sampler" 2>/dev/null
  if [ $status -ne 0 ]; then
    echo "FAILED: $label (see $folder.log):"; tail -5 "$folder.log"; failed=1; return
  fi
  "$PYTHON" - "$folder" "$label" $((SECONDS - started)) "$before" <<'EOF'
import pathlib, sys, pyarrow.parquet as pq
folder, label, process_s, before = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
(row,) = pq.read_table(f"{folder}/cells.parquet").to_pylist()
samples = pathlib.Path(f"{folder}.gpu-memory")
used = [int(line) for line in samples.read_text().split()] if samples.exists() else []
peak = f", GPU memory {max(used) - before:,} MiB at most" if used else ""
print(f"{label}: {row['status']}, {row['steps_per_second']:,.0f} steps/s, cell {row['wall_time_s']:.1f} s, "
      f"start-up {row['startup_s']:.1f} s, transport {row['transport']}, bench run {process_s} s{peak}")
EOF
}

step "2. a ring cell on $DEVICE, one process per learner"
cell "ring 4x8 $DEVICE processes" 120 -e random-cartpole -t ring --learners 4 --envs-per-learner 8 --env-steps 50000 \
  --device "$DEVICE" --learners-per-process 1

step "3. the same cell as one learner block on $DEVICE, then as two blocks of 2"
cell "ring 4x8 $DEVICE block" 90 -e random-cartpole -t ring --learners 4 --envs-per-learner 8 --env-steps 50000 \
  --device "$DEVICE"
cell "ring 4x8 $DEVICE two blocks" 90 -e random-cartpole -t ring --learners 4 --envs-per-learner 8 \
  --env-steps 50000 --device "$DEVICE" --learners-per-process 2

step "4. a block of 256 CartPole learners on $DEVICE, and on the CPU"
cell "ring 256x1 $DEVICE block" 150 -e random-cartpole -t ring --learners 256 --envs-per-learner 1 \
  --env-steps 256000 --device "$DEVICE"
[ "$DEVICE" = cpu ] || cell "ring 256x1 cpu block" 150 -e random-cartpole -t ring --learners 256 --envs-per-learner 1 \
  --env-steps 256000 --device cpu

step "5. a block of 4 Nature-CNN learners on Pong on $DEVICE"
cell "Pong ring 4x4 $DEVICE block" 120 -e PongNoFrameskip-v4 -t ring --learners 4 --envs-per-learner 4 \
  --env-steps 8000 --device "$DEVICE" --learners-per-process 4
[ "$DEVICE" = cpu ] || cell "ring 64x1 hidden 1024 $DEVICE block" 90 -e random-cartpole -t ring --learners 64 --envs-per-learner 1 \
  --env-steps 6400 --device "$DEVICE" --set diff-a2c.hidden=1024 --checkpoint-every 0

step "6. a block's checkpoints on $DEVICE resume exactly"
timeout 240 "$PYTHON" benchmarks/gpu_resume.py --device "$DEVICE" --out "$OUT/resume" || {
  echo "FAILED: resuming on $DEVICE"; failed=1; }

if [ "$DEVICE" != cpu ]; then
  step "7. the GPU memory check against this machine's GPUs"
  timeout 120 "$PYTHON" benchmarks/gpu_memory.py || { echo "FAILED: the GPU memory check"; failed=1; }
fi

echo
echo "results: $OUT"
exit $failed
