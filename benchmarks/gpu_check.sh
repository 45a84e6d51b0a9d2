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
# The same script on the CPU, to check it before a GPU is at hand (the GPU tier then skips):
#   DEVICE=cpu PY=.venv/bin/python DATA=DIR EMB=FILE.parquet bash benchmarks/gpu_check.sh 0.1M
set -uo pipefail
OUT=${OUT:-$PWD/gpu-out}
SIZES=${1:-0.1M,1M,4M,20M}
DEVICE=${DEVICE:-cuda}
PY=${PY:-python3}
DATA=${DATA:-.device/ml100k}
EMB=${EMB:-.device/ml100k-emb.parquet}
mkdir -p "$OUT"
if [ "$DEVICE" = cuda ]; then
  # shellcheck disable=SC1091
  source .device/env.sh || exit 3
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
fi
start=$(date +%s)
stamp() { echo "[$(( $(date +%s) - start ))s] $*"; }

stamp "GPU tier"
timeout 150 "$PY" -m pytest -m gpu -rs -q -p no:cacheprovider tests/test_gpu.py 2>&1 | tail -15 | tee "$OUT/gpu_tier.txt"

stamp "ML-100K on $DEVICE, default config, then bf16 autocast"
timeout 240 "$PY" benchmarks/epoch_time.py --data "$DATA" --embeddings "$EMB" \
  --device "$DEVICE" --json "$OUT/ml100k_$DEVICE.json" 2>&1 | tail -2
timeout 240 "$PY" benchmarks/epoch_time.py --data "$DATA" --embeddings "$EMB" \
  --device "$DEVICE" --set train.amp=true --json "$OUT/ml100k_${DEVICE}_amp.json" 2>&1 | tail -2

stamp "scale on $DEVICE: $SIZES (one full epoch each; 4M profiled)"
left=$(( 470 - ($(date +%s) - start) )); [ "$left" -lt 60 ] && left=60
timeout "$left" "$PY" benchmarks/scale.py --device "$DEVICE" --sizes "$SIZES" \
  --profile 4M --out "$OUT/RESULTS.md" 2>&1 | grep -v "^20[0-9][0-9]-" | tail -40
stamp "done"
