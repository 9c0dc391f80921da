#!/bin/sh
# The README's "Latent probing" numbers on the bundled model: run from the repository root
# after `cargo build --release`; writes into ${1:-out/probe}. About 15 minutes on 2 cores.
set -eu
B=target/release/diffusion-scope
OUT=${1:-out/probe}
mkdir -p "$OUT"
$B ood eval --json "$OUT/ood.json" --examples "$OUT/ood-examples" | tee "$OUT/ood.txt"
$B direction --prompt "a red circle" --prompt "a small red square" --prompt "a red triangle on the left" \
    --prompt "a big red diamond on the top" --prompt "a red square on the right" --prompt "a small red circle on the bottom" \
    --pairs tools/probe/red-to-blue.txt --alpha=-1..2:7 --seeds 0..3 --steps 20 --out "$OUT/direction" --overwrite
for path in slerp lerp; do
    flag=""; [ "$path" = lerp ] && flag=--lerp
    $B interpolate --from 0 --to 1 --frames 16 $flag --prompt "a red circle left of a blue square" --steps 20 \
        --out "$OUT/interp-$path" --overwrite
done
$B interpolate --from "a red circle" --to "a blue square" --frames 9 --seed 3 --steps 20 --out "$OUT/interp-prompts" --overwrite
$B health --prompt "a red circle" --out "$OUT/health" --overwrite
$B health --prompt "a red circle" --spacing trailing --out "$OUT/health-trailing" --overwrite
