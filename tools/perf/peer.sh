#!/bin/sh
# Ours against the diffusers peer, in one run, alternating (issue 17). Needs a release build and
# the Python venv of tests/fixtures/requirements.txt. Usage:
#   tools/perf/peer.sh [ROUNDS]   (default 3 rounds; each: ours then theirs, 3 reps each)
# Prints per round ours / theirs for a bundled 30-step generation (guidance 5, aggregate capture)
# and for one SD 1.5 UNet call at 256x256, batch 2, capture off.
set -e
cd "$(dirname "$0")/../.."
BIN=${BIN:-target/release/diffusion-scope}
PY=${PY:-.venv/bin/python}
ROUNDS=${1:-3}
for r in $(seq 1 "$ROUNDS"); do
  ours=$($BIN bench --generate --reps 3 | sed -n 's/^aggregate *\([0-9.]*\).*/\1/p')
  theirs=$($PY tools/perf/peer.py generate --reps 3 2>/dev/null | sed -n 's/^peer median s: //p')
  echo "round $r  generation: ours $ours s  diffusers $theirs s  ratio $(echo "$ours / $theirs" | bc -l | cut -c1-5)"
done
for r in $(seq 1 "$ROUNDS"); do
  ours=$($BIN bench --reps 2 | sed -n 's/^ours, capture off *\([0-9.]*\).*/\1/p')
  theirs=$($PY tools/perf/peer.py unet-sd15 --reps 2 2>/dev/null | sed -n 's/^peer median s: //p')
  echo "round $r  SD 1.5 UNet call: ours $(echo "$ours / 1000" | bc -l | cut -c1-6) s  torch $theirs s  ratio $(echo "$ours / 1000 / $theirs" | bc -l | cut -c1-5)"
done
