#!/bin/sh
# Ours against the diffusers peer, in one run, alternating (issue 17). Needs a release build and
# the Python venv of tests/fixtures/requirements.txt. Usage:
#   tools/perf/peer.sh [ROUNDS]   (default 3 rounds; each: ours then theirs, 3 reps each)
# Prints per round ours / theirs for a bundled 30-step generation (guidance 5, aggregate capture)
# and for one SD 1.5 UNet call at SIZE x SIZE (default 256), batch 2, capture off; then the median
# ratio of each. The machines here are shared: compare the ratios, which are taken round by round.
set -e
cd "$(dirname "$0")/../.."
BIN=${BIN:-target/release/diffusion-scope}
PY=${PY:-.venv/bin/python}
ROUNDS=${1:-3}
SIZE=${SIZE:-256}
GEN=""
SD=""
for r in $(seq 1 "$ROUNDS"); do
  ours=$($BIN bench --generate --reps 3 | sed -n 's/^aggregate *\([0-9.]*\).*/\1/p')
  theirs=$($PY tools/perf/peer.py generate --reps 3 2>/dev/null | sed -n 's/^peer median s: //p')
  ratio=$(echo "$ours / $theirs" | bc -l | cut -c1-5)
  GEN="$GEN $ratio"
  echo "round $r  generation: ours $ours s  diffusers $theirs s  ratio $ratio"
done
for r in $(seq 1 "$ROUNDS"); do
  ours=$($BIN bench --reps 2 --size "$SIZE" --ours-only | sed -n 's/^ours, capture off *\([0-9.]*\).*/\1/p')
  theirs=$($PY tools/perf/peer.py unet-sd15 --reps 2 --size "$SIZE" 2>/dev/null | sed -n 's/^peer median s: //p')
  ratio=$(echo "$ours / 1000 / $theirs" | bc -l | cut -c1-5)
  SD="$SD $ratio"
  echo "round $r  SD 1.5 UNet call ($SIZE): ours $(echo "$ours / 1000" | bc -l | cut -c1-6) s  torch $theirs s  ratio $ratio"
done
median() { echo "$@" | tr ' ' '\n' | grep . | sort -n | awk '{v[NR] = $1} END {print (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2)}'; }
echo "median ratio  generation: $(median $GEN)  SD 1.5 UNet call ($SIZE): $(median $SD)"
