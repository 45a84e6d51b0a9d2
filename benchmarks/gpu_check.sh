#!/usr/bin/env bash
# Everything issue 31 measures on a GPU, in one run of under 8 minutes (an H200 with the recipe in
# ../shared/tools/device/). Results go to $OUT (the device tool's output folder) or ./gpu-out.
#
# Prepare on the build machine (once; .device/ is git-ignored and carried to the GPU machine):
#   bash ../shared/tools/device/prepare.sh
#   .venv/bin/sora data fetch movielens-100k --dest .device/ml100k
#   .venv/bin/sora embed --data .device/ml100k --out .device/ml100k-emb.parquet
# On the GPU machine, from the project root:
#   bash benchmarks/gpu_check.sh [SIZES]          # SIZES default 0.1M,1M,4M,20M
set -uo pipefail
OUT=${OUT:-$PWD/gpu-out}
SIZES=${1:-0.1M,1M,4M,20M}
mkdir -p "$OUT"
# shellcheck disable=SC1091
source .device/env.sh || exit 3
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
start=$(date +%s)
stamp() { echo "[$(( $(date +%s) - start ))s] $*"; }

stamp "GPU tier"
timeout 150 python3 -m pytest -m gpu -rs -q -p no:cacheprovider tests/test_gpu.py 2>&1 | tail -15 | tee "$OUT/gpu_tier.txt"

stamp "ML-100K on CUDA, default config, then bf16 autocast"
timeout 120 python3 benchmarks/epoch_time.py --data .device/ml100k --embeddings .device/ml100k-emb.parquet \
  --device cuda --json "$OUT/ml100k_cuda.json" 2>&1 | tail -2
timeout 90 python3 benchmarks/epoch_time.py --data .device/ml100k --embeddings .device/ml100k-emb.parquet \
  --device cuda --set train.amp=true --json "$OUT/ml100k_cuda_amp.json" 2>&1 | tail -2

stamp "scale on CUDA: $SIZES (one full epoch each; 4M profiled)"
timeout $(( 470 - ($(date +%s) - start) )) python3 benchmarks/scale.py --device cuda --sizes "$SIZES" \
  --profile 4M --out "$OUT/RESULTS.md" 2>&1 | grep -v "^20[0-9][0-9]-" | tail -40
stamp "done"
