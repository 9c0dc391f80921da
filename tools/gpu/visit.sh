#!/bin/bash
# One GPU visit (issue 18), run on the lent machine from the repository root with
#   carry: .gpu (tools/gpu/build.sh's binary) and .whl (its wheels); OUT set by the device tool.
# Writes $OUT/visit.log. Order: the peer's numbers first and ours after, on the same random
# SD 1.5-shaped folder (made there, fp16), then both again, so each comparison is one run.
set -u
export LD_LIBRARY_PATH=/usr/local/cuda-13.0/lib64:/usr/local/nvidia/lib64:${LD_LIBRARY_PATH:-}
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/visit-out}; mkdir -p "$OUT"
exec > >(tee "$OUT/visit.log") 2>&1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  && export PYTHONPATH=/tmp/site
nvidia-smi --query-gpu=name,driver_version,clocks.sm --format=csv
xz -dc .gpu/diffusion-scope.xz > /tmp/diffusion-scope && chmod +x /tmp/diffusion-scope
BIN=/tmp/diffusion-scope
python3 tools/gpu/make_sd15_random.py /tmp/sd15 --dtype fp16
for round in 1 2; do
  echo "== round $round: diffusers"
  python3 tools/gpu/peer_gpu.py /tmp/sd15 --size 512 --steps 50 --reps 20
  echo "== round $round: ours, one UNet call (bench: SD 1.5 config, random weights, 512x512, batch 2, f16)"
  $BIN bench --device cuda --dtype f16 --size 512 --reps 20
  echo "== round $round: ours, 50-step 512x512 generation on the same folder (aggregate capture)"
  $BIN bench --generate --model /tmp/sd15 --device cuda --dtype f16 --steps 50 --guidance 7.5 --reps 3 \
    --prompt "a photo of a red circle"
done
