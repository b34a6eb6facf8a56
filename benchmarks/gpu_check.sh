#!/usr/bin/env bash
# The GPU figures of issue 5, in one short run on a lent GPU machine whose Python has torch + Lightning but not
# medexp's other dependencies: those travel as a copied site folder (.gpu_site, git-ignored) with the data file.
set -euo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH="/tmp/site:$PWD/.gpu_site"
python3 -m pip install -q --no-deps --no-build-isolation --no-index --target /tmp/site . 2>&1 | grep -v -i warning || true
export MEDEXP_TRAIN=/tmp/site/bin/medexp-train
nvidia-smi -L
npz=.gpu_site/data/pneumoniamnist.npz
python3 benchmarks/bench_train.py --npz $npz --device cuda --resident --models cnn:20 --logger ${LOGGER:-csv}
python3 benchmarks/bench_train.py --npz $npz --device cuda --resident --models resnet18:3 --precision 32 bf16-mixed --logger ${LOGGER:-csv}
