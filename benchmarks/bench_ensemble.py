"""A seed ensemble against its members on PneumoniaMNIST's official test split (624 images).

    python benchmarks/bench_ensemble.py --root <folder with pneumoniamnist.npz> --out /tmp/ens [--seeds 0 1 2]
        [-- <medexp-train overrides, default: model=cnn trainer.max_epochs=2>]

Trains one run per seed (logger=none), predicts the test images with each checkpoint and with the ensemble
(``medexp-predict ckpt_path=[...]``: probabilities averaged before the argmax) and prints AUROC and accuracy at 0.5.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np

from medexp.reports.stats import classification_metrics
from medexp.workflows.predict import predict

BIN = Path(sys.executable).parent


def probabilities(ckpt, npz: Path, out: Path) -> np.ndarray:
    summary = predict(ckpt, str(npz), out)
    return np.array([list(case["probabilities"].values()) for case in summary["cases"]])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("overrides", nargs="*", default=["model=cnn", "trainer.max_epochs=2"])
    args = parser.parse_args()
    out, npz = Path(args.out), Path(args.root) / "pneumoniamnist.npz"
    labels = np.load(npz)["test_labels"].reshape(-1)
    checkpoints = []
    for seed in args.seeds:
        run_dir = out / f"seed{seed}"
        if not list(run_dir.glob("checkpoints/best-*.ckpt")):
            subprocess.run([str(BIN / "medexp-train"), "data=pneumoniamnist", f"data.root={args.root}", f"seed={seed}",
                            "logger=none", f"hydra.run.dir={run_dir}", *args.overrides], check=True,
                           stdout=subprocess.DEVNULL)
        (best,) = run_dir.glob("checkpoints/best-*.ckpt")
        checkpoints.append(str(best))
    rows = [(f"seed {seed}", probabilities(ckpt, npz, out / f"pred{seed}"))
            for seed, ckpt in zip(args.seeds, checkpoints, strict=True)]
    rows.append((f"ensemble of {len(checkpoints)}", probabilities(checkpoints, npz, out / "pred_ensemble")))
    print(f"{'model':<16} {'AUROC':>7} {'accuracy':>9}")
    for name, probs in rows:
        metrics = classification_metrics(labels, probs)
        print(f"{name:<16} {metrics['auroc']:>7.4f} {metrics['accuracy']:>9.4f}")


if __name__ == "__main__":
    main()
