"""Recipe search for experiment=hippocampus (MSD Task04, official fold 0 validating), through medexp-train itself.

Each named recipe is a list of overrides on top of ``experiment=hippocampus``; its run goes to
``<--out>/<name>`` with the CSV logger (nothing lands in outputs/ or an MLflow store) and one torch thread
(``OMP_NUM_THREADS=1``: the 2 cores here are shared). One JSON line per recipe is appended to
``logs/results.jsonl`` (wall time of the whole command and its CPU time: with one thread on a CPU shared with
other jobs, the CPU time is what the run would take alone; best and last validation Dice, per structure Dice and
HD95 at the best epoch) and the run's output to ``logs/<name>.log``.

    .venv/bin/python benchmarks/recipes/hippocampus/search.py r01 r02
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
DATA = REPO.parent / "shared" / "data" / "Task04_Hippocampus"

RECIPES: dict[str, list[str]] = {
    # the experiment as first written: mirroring on all 3 axes (p 0.5 each), no deep supervision, 25 epochs
    "r01": ["+augmentation.flip_axes=[0,1,2]", "+augmentation.flip_prob=0.5", "model.deep_supervision=false",
            "trainer.max_epochs=25"],
    # the committed recipe: no mirroring (every crop has the same orientation), deep supervision, 30 epochs
    "r02": [],
}


def read_metrics(run_dir: Path) -> dict:
    """Best-epoch and last-epoch validation figures from the CSV logger's metrics.csv."""
    with open(run_dir / "csv" / "metrics.csv") as handle:
        rows = [r for r in csv.DictReader(handle) if r.get("val/dice")]
    best = max(rows, key=lambda r: float(r["val/dice"]))
    keep = [k for k in best if k.startswith("val/") and best[k]]
    return {
        "best_val_dice": float(best["val/dice"]),
        "best_epoch": int(best["epoch"]),
        "last_val_dice": float(rows[-1]["val/dice"]),
        "curve": [round(float(r["val/dice"]), 4) for r in rows],
        "at_best": {k: round(float(best[k]), 4) for k in keep},
    }


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("recipes", nargs="+", choices=sorted(RECIPES))
    parser.add_argument("--out", default="/tmp/hippo/search")
    parser.add_argument("--threads", default="1")
    args = parser.parse_args()
    for name in args.recipes:
        run_dir = Path(args.out) / name
        command = [str(REPO / ".venv" / "bin" / "medexp-train"), "experiment=hippocampus", f"data.root={DATA}",
                   "logger=csv", f"hydra.run.dir={run_dir}", *RECIPES[name]]
        started, cpu_before = time.time(), _children_cpu()
        with open(HERE / "logs" / f"{name}.log", "w") as log:
            log.write(" ".join(command) + "\n")
            log.flush()
            rc = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT,
                                env={**os.environ, "OMP_NUM_THREADS": args.threads}).returncode
        result = {"recipe": name, "overrides": RECIPES[name], "threads": args.threads, "rc": rc,
                  "wall_s": round(time.time() - started), "cpu_s": round(_children_cpu() - cpu_before)}
        if rc == 0:
            result.update(read_metrics(run_dir))
        line = json.dumps(result)
        print(line, flush=True)
        with open(HERE / "logs" / "results.jsonl", "a") as out:
            out.write(line + "\n")
    sys.exit(0)


if __name__ == "__main__":
    main()
