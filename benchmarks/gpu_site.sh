#!/usr/bin/env bash
# Builds .gpu_site/ (git-ignored), what benchmarks/gpu_check.sh needs on a bare GPU machine that reaches no network:
# wheels of medexp's runtime dependencies that the machine's Python lacks (the closure of medexp's requirements less
# benchmarks/gpu_machine_packages.txt, at the versions of this checkout's .venv) and the PneumoniaMNIST file. Run it
# here, in the repository root, after `make install`; then carry it: device run(carry=[".gpu_site"]).
#   PYVER   the GPU machine's Python (3.12); 3.11 builds one for a dry run in this machine's Python
#   SITE    the folder (.gpu_site)          NPZ  the data file (../shared/data/pneumoniamnist.npz)
# Measured 2026-12-06: 47 MiB (43 MiB of wheels, full MLflow 3.17 with its server stack 12 MiB of it; 4 MiB of data)
# plus 2 MiB of tracked files, under the 64 MiB that travels.
set -euo pipefail
cd "$(dirname "$0")/.."
PYVER=${PYVER:-3.12} SITE=${SITE:-.gpu_site} NPZ=${NPZ:-../shared/data/pneumoniamnist.npz} VENV=${VENV:-.venv}
rm -rf "$SITE" && mkdir -p "$SITE/wheels" "$SITE/data"
"$VENV/bin/python" benchmarks/gpu_site_requirements.py benchmarks/gpu_machine_packages.txt >"$SITE/requirements.txt"
# omegaconf pins antlr4-python3-runtime 4.9.3, published as a source archive only: its (pure-Python) wheel is built
antlr=$(grep '^antlr4-python3-runtime==' "$SITE/requirements.txt")
grep -v '^antlr4-python3-runtime==' "$SITE/requirements.txt" >"$SITE/binary.txt"
platforms=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
           --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
  "${platforms[@]}" -d "$SITE/wheels" -r "$SITE/binary.txt" 2>&1 | grep -v 'is ignored' || true
python3 -m pip wheel -q --no-deps -w "$SITE/wheels" "$antlr" 2>&1 | grep -v 'is ignored' || true
rm "$SITE/binary.txt"
cp "$NPZ" "$SITE/data/pneumoniamnist.npz"
expected=$(wc -l <"$SITE/requirements.txt") got=$(ls "$SITE"/wheels/*.whl | wc -l)
[ "$expected" = "$got" ] || { echo "gpu_site: $got wheels for $expected requirements" >&2; exit 1; }
site=$(du -sb "$SITE" | cut -f1) tree=$(git ls-files -z | xargs -0 du -cb | tail -1 | cut -f1)
echo "$SITE: $((site / 1048576)) MiB ($got wheels for Python $PYVER + data); with the tracked tree" \
     "$(((site + tree) / 1048576)) MiB of the 64 MiB that travel"
[ $((site + tree)) -lt $((64 * 1048576)) ] || { echo "gpu_site: over 64 MiB" >&2; exit 1; }
