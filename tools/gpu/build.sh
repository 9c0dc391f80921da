#!/bin/bash
# Build the lean CUDA binary for a GPU visit (issue 18) into .gpu/ (git-ignored): CUDA 13.0 from
# PyPI wheels (../shared/gpu/cuda-toolchain.sh), kernels for sm_90, a separate target folder so
# the CPU build's cache is untouched, stripped. Also fetches the diffusers wheels the peer needs
# into .whl/ (the GPU machine's image has torch and transformers but not diffusers).
#   tools/gpu/build.sh          (cold: about 10 minutes more than a CPU release build)
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo fetch >/dev/null
# shellcheck disable=SC1091
source ../shared/gpu/cuda-toolchain.sh
CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target-cuda} cargo build --release --features cuda
mkdir -p .gpu
cp "${CARGO_TARGET_DIR:-target-cuda}/release/diffusion-scope" .gpu/diffusion-scope
strip .gpu/diffusion-scope
# The stripped binary (with the app) is about 72 MiB, over the 64 MiB a call may carry: ship it
# xz-compressed (about 20 MiB); visit.sh unpacks it there.
xz -T2 -6 -f .gpu/diffusion-scope
ls -la .gpu/
mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d .whl diffusers==0.42.1 importlib_metadata
du -sh .gpu .whl
