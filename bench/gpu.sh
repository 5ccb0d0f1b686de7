#!/usr/bin/env bash
# GPU workers, measured: the model alone, the in-process pipeline and a one-process Celery
# sweep on the same photos, with decode core-ms per photo and the GPU's utilisation; then
# JPEG decoding on the CPU's cores against nvJPEG (torchvision's decode_jpeg on CUDA).
#
#   bash bench/gpu.sh MODEL PHOTOS_DIR [LIMIT] [BATCH]
#
# On a machine without an NVIDIA GPU it runs the same table on the CPU (a smoke test).
# Needs Redis on 127.0.0.1:6379 (it uses database 14 and flushes only that one).
set -euo pipefail
cd "$(dirname "$0")/.."
model=${1:?usage: bash bench/gpu.sh MODEL PHOTOS_DIR [LIMIT] [BATCH]}
photos=${2:?usage: bash bench/gpu.sh MODEL PHOTOS_DIR [LIMIT] [BATCH]}
limit=${3:-20000}
batch=${4:-256}
repeat=3
python=${PYTHON:-python}

if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then
  device=cuda
  nvidia-smi -L
  out=$(mktemp -d)
  # GPU utilisation and memory every 200 ms while the table runs.
  nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv,noheader,nounits \
    -lms 200 >"$out/gpu.csv" &
  smi=$!
  trap 'kill $smi 2>/dev/null || true' EXIT
else
  device=cpu
  echo "no NVIDIA GPU here: running on the CPU as a smoke test"
  limit=${3:-200}
  batch=${4:-32}
  repeat=1
fi

# One Celery process per GPU (CUDA does not survive fork): --processes 1 with the solo pool.
"$python" bench/throughput.py table --model "$model" --data "$photos" --limit "$limit" \
  --batch-size "$batch" --device "$device" --processes 1 --pool solo --skip local \
  --repeat "$repeat" --json "${OUT:-.}/bench-gpu.json"
# The model alone and the in-process limit again with torch.compile (where the time allows).
if [ "$device" = cuda ]; then
  "$python" bench/throughput.py table --model "$model" --data "$photos" --limit "$limit" \
    --batch-size "$batch" --device "$device" --skip local,celery --compile \
    --json "${OUT:-.}/bench-gpu-compiled.json"
fi

if [ "$device" = cuda ]; then
  kill $smi 2>/dev/null || true
  awk -F', ' '{n++; s+=$2; if ($2>m) m=$2; if ($3>mem) mem=$3}
    END {printf "GPU utilisation while measuring: mean %.0f%%, max %d%%; peak memory %d MiB\n", s/n, m, mem}' \
    "$out/gpu.csv"
fi
"$python" bench/throughput.py decode --data "$photos" --limit "$limit" --batch-size "$batch" --device "$device"
echo "table written to ${OUT:-.}/bench-gpu.json"
