#!/usr/bin/env bash
# Issue 25 item 5's GPU figures in one run (under 8 minutes on an H100 is the aim) on a bare GPU machine: its Python
# (3.12) has torch, Lightning, torchmetrics, numpy, pandas, matplotlib ... (benchmarks/gpu_machine_packages.txt)
# and no network, so medexp's other dependencies and the data travel in .gpu_site/, built here beforehand by
# benchmarks/gpu_site.sh. Ends with ONE JSON line (benchmarks/gpu_check.py says what it holds).
#   device run:  command="bash benchmarks/gpu_check.sh", carry=[".gpu_site"], timeout_s=600
#   CPU dry run: DEVICE=cpu SMALL=1 GPU_SITE=<a site built with PYVER=3.11> bash benchmarks/gpu_check.sh
#                in a venv holding only what the GPU machine has (README, "GPU check")
# NOT MEASURED YET: no GPU was lent to the session that wrote this (2026-12-06); only the CPU dry run ran.
set -euo pipefail
cd "$(dirname "$0")/.."
SITE=${GPU_SITE:-.gpu_site} TARGET=${TARGET:-/tmp/site}
[ -d "$SITE/wheels" ] || { echo "gpu_check: no $SITE/wheels: run benchmarks/gpu_site.sh first and carry $SITE" >&2
                           exit 2; }
# one pip command: with --target, a later install would not add its scripts to an existing bin/
{ python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --no-cache-dir --upgrade \
  --target "$TARGET" "$SITE"/wheels/*.whl . 2>&1; } | { grep -v -i warning || true; }
export PYTHONUNBUFFERED=1 PYTHONPATH="$TARGET" MEDEXP_TRAIN="$TARGET/bin/medexp-train"
export NPZ=${NPZ:-$SITE/data/pneumoniamnist.npz} DEVICE=${DEVICE:-cuda}
[ "$DEVICE" != cuda ] || nvidia-smi -L
exec python3 benchmarks/gpu_check.py
