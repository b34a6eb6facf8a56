"""The harness the epoch benchmarks share: a script's plain MONAI loop (``--plain``, in a process of its own) against
``medexp-train`` on one recipe, whole commands alternating, best of ``--repeats``; prints each timing and the ratio
as JSON lines."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

BIN = Path(sys.executable).parent


def timed(command: list[str]) -> float:
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"failed ({result.returncode}): {' '.join(command)}\n{result.stderr[-2000:]}")
    return time.perf_counter() - started


def main(script: str, default_data: Path, plain_epoch: Callable[[Path], None], medexp_args: list[str]) -> None:
    """``medexp_args``: the recipe's overrides, ``data.root`` excluded (``--data`` gives it to both loops)."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, default=default_data)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--plain", action="store_true", help="run the plain loop in this process")
    args = parser.parse_args()
    if args.plain:
        plain_epoch(args.data)
        return
    best = {"medexp": float("inf"), "plain": float("inf")}
    with tempfile.TemporaryDirectory() as tmp:
        commands = {
            "plain": [sys.executable, script, "--plain", "--data", str(args.data)],
            "medexp": [str(BIN / "medexp-train"), *medexp_args, f"data.root={args.data}", "logger=none",
                       "trainer.max_epochs=1", "callbacks.progress_bar.refresh_rate=0", f"hydra.run.dir={tmp}/run"],
        }
        for repeat in range(args.repeats):
            for name, command in commands.items():
                seconds = timed(command)
                best[name] = min(best[name], seconds)
                print(json.dumps({"command": name, "repeat": repeat, "wall_s": round(seconds, 1)}), flush=True)
    print(json.dumps({"medexp_s": round(best["medexp"], 1), "plain_s": round(best["plain"], 1),
                      "ratio": round(best["medexp"] / best["plain"], 3),
                      "threads": os.environ.get("OMP_NUM_THREADS", "all")}))
