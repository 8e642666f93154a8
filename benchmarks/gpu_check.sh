#!/usr/bin/env bash
# One prepared check for a lent GPU machine (at most 10 minutes): the CUDA tests, the fast
# recipes' time to accuracy over 5 seeds each (fast, fast-muon, fast-sgd, fast95; fast96, the
# longest, over 3: its goal's count; cifarlab experiment), the tutorial network's training
# images/s, and a 1-GPU NCCL torchrun smoke run.
# Prints every figure with the card's name.
#
# The data: CIFAR-10 is 176 MB and a call carries at most 64 MiB, so bring it in three
# parts on back-to-back calls (files git ignores stay on a warm machine between calls):
#   here:   python benchmarks/split_data.py data/parts      # three folders of <= 62 MB
#   call 1: carry data/parts/1    call 2: carry data/parts/2    call 3: carry data/parts/3 and run
#           bash benchmarks/gpu_check.sh data/parts
# The script joins the parts into one data root and checks every file against the official
# md5s (`cifarlab download --verify`) before using it. Without data it runs what needs none.
set -uo pipefail
cd "$(dirname "$0")/.."
parts="${1:-}"
seeds="${SEEDS:-5}"
started=$(date +%s)

echo "== machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 -m venv .venv-gpu && . .venv-gpu/bin/activate
python -c "import torch" 2>/dev/null || pip install -q torch
pip install -q -e '.[dev]'
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))"

echo "== CUDA tests (and everything else the suite runs quickly)"
python -m pytest -q -x -m "not slow" 2>&1 | tail -3

if [ -n "$parts" ]; then
  export CIFARLAB_DATA="$PWD/data/root"
  mkdir -p "$CIFARLAB_DATA/cifar-10-batches-bin"
  cp "$parts"/*/* "$CIFARLAB_DATA/cifar-10-batches-bin/"
  cifarlab download --verify | head -3 || { echo "data failed its check"; exit 1; }

  quiet=(--device cuda --set checkpoint_every=100000 --set summary_every=100000 --set log_every=100000)
  echo "== an untimed warm-up run (CUDA start-up, kernel selection)"
  cifarlab experiment run runs/gpu-warmup --recipe fast --seeds 0 --max-steps 20 "${quiet[@]}" | tail -1
  for recipe in fast fast-muon fast-sgd fast95 fast96; do
    n=$seeds
    if [ "$recipe" = fast96 ] && [ "$n" -gt 3 ]; then n=3; fi
    echo "== $recipe: time to accuracy, $n seeds"
    cifarlab experiment run "runs/gpu-$recipe" --recipe "$recipe" --seeds "0-$((n - 1))" "${quiet[@]}" >/dev/null
    cifarlab experiment show "runs/gpu-$recipe" --json | tail -$((n + 5))
  done
fi

echo "== tutorial network: training and evaluation images/s on the GPU (random data, real step)"
cifarlab bench train --recipe tutorial --device cuda --steps 200 --repeats 3 | tail -1
cifarlab bench eval --recipe tutorial --device cuda --repeats 3 | tail -1

echo "== torchrun with NCCL, 1 process (synthetic data), then that run evaluated and read on the GPU"
torchrun --standalone --nproc-per-node=1 -m cifarlab train --synthetic --device cuda \
  --run-dir runs/gpu-nccl --max-steps 50 --no-progress | tail -2
cifarlab eval runs/gpu-nccl --device cuda --tta | head -2
python - <<'PY'
from PIL import Image
import numpy as np
Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)).save("runs/gpu-image.png")
PY
cifarlab predict runs/gpu-nccl runs/gpu-image.png --device cuda | tail -2

echo "== fast on the GPU: bfloat16 autocast, data on the device (synthetic data, 20 steps)"
cifarlab train --recipe fast --synthetic --device cuda --run-dir runs/gpu-bf16 --max-steps 20 \
  --batch-size 500 --no-progress | tail -1

echo "== the GPU errors: each must be one line, exit 1 (expected failures)"
gpus=$(python -c "import torch; print(torch.cuda.device_count())")
cifarlab train --synthetic --device "cuda:$gpus" --run-dir runs/gpu-err1 --max-steps 1 2>&1 | tail -1
torchrun --standalone --nproc-per-node=$((gpus + 1)) -m cifarlab train --synthetic --device cuda \
  --run-dir runs/gpu-err2 --max-steps 1 --no-progress 2>&1 | grep -m1 "CUDA device(s)" || echo "MISSING: the too-few-GPUs error"

echo "== done in $(( $(date +%s) - started )) s"
