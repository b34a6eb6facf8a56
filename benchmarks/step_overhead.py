"""Per-step framework cost on this CPU: where a GPU run's throughput goes when its kernels are tiny.

On a GPU the seed CNN at batch 128 is launch-bound: each step's time is the Python that issues it, so every
millisecond a framework adds per step shows up whole in images/s. This script measures that millisecond here,
with the same model at a small batch (little compute, so differences are per-step overhead), as training
images/s of three loops over the same in-memory PneumoniaMNIST tensors:

  plain      the hand-written resident loop (batches by index, Adam, zero_grad/backward/step)
  lightning  a bare LightningModule over the same resident batches: no logger, checkpoint, bar or callbacks
  medexp     ``medexp-train`` with its defaults (checkpoints, early stopping, LR monitor, progress bar, csv
             logger), ``augmentation=none``; training images/s from its ``timing.json`` (validation excluded)

and prints ms/step for each and the two overheads. Rounds alternate the three so a busy core hits all alike.

    python benchmarks/step_overhead.py ../shared/data/pneumoniamnist.npz --batch 8 --epochs 2 --rounds 3
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from plain_loop import classic_cnn  # noqa: E402

BIN = Path(sys.executable).parent


def load(npz: Path) -> tuple[torch.Tensor, torch.Tensor]:
    d = np.load(npz)
    x = torch.tensor(d["train_images"], dtype=torch.float32).unsqueeze(1) / 255.0
    return x, torch.tensor(d["train_labels"].ravel(), dtype=torch.long)


def plain_images_per_second(x, y, batch: int, epochs: int) -> float:
    torch.manual_seed(0)
    net = classic_cnn(2)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    start = time.perf_counter()
    for _ in range(epochs):
        for idx in torch.randperm(len(y)).split(batch):
            opt.zero_grad()
            F.cross_entropy(net(x[idx]), y[idx]).backward()
            opt.step()
    return len(y) * epochs / (time.perf_counter() - start)


def lightning_images_per_second(x, y, batch: int, epochs: int) -> float:
    import pytorch_lightning as pl

    class Bare(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = classic_cnn(2)

        def training_step(self, b, _):
            return F.cross_entropy(self.net(b[0]), b[1])

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=1e-3)

    class Resident:  # batches by index from tensors already in memory, like the plain loop
        def __iter__(self):
            return ((x[i], y[i]) for i in torch.randperm(len(y)).split(batch))

        def __len__(self):
            return -(-len(y) // batch)

    torch.manual_seed(0)
    trainer = pl.Trainer(accelerator="cpu", max_epochs=epochs, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    start = time.perf_counter()
    trainer.fit(Bare(), train_dataloaders=Resident())
    return len(y) * epochs / (time.perf_counter() - start)


def medexp_images_per_second(npz: Path, batch: int, epochs: int, work: Path) -> float:
    run_dir = work / f"medexp-{time.time_ns()}"
    subprocess.run([str(BIN / "medexp-train"), "logger=csv", "data=pneumoniamnist", f"data.root={npz.parent}",
                    "model=cnn", "optimizer=adam", "optimizer.lr=1e-3", "augmentation=none",
                    "task.channels_last=false",  # the bare loops run NCHW: compare the loops, not the layouts
                    f"data.batch_size={batch}", f"trainer.max_epochs={epochs}", "test=false",
                    f"hydra.run.dir={run_dir}"], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   env={**os.environ, "PYTHONUNBUFFERED": "1"})
    return json.loads((run_dir / "timing.json").read_text())["train_images_per_second"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("npz", type=Path)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    x, y = load(a.npz)
    rates: dict[str, list[float]] = {"plain": [], "lightning": [], "medexp": []}
    with tempfile.TemporaryDirectory() as work:
        for _ in range(a.rounds):
            rates["plain"].append(plain_images_per_second(x, y, a.batch, a.epochs))
            rates["lightning"].append(lightning_images_per_second(x, y, a.batch, a.epochs))
            rates["medexp"].append(medexp_images_per_second(a.npz.resolve(), a.batch, a.epochs, Path(work)))
    ms = {k: 1000 * a.batch / statistics.median(v) for k, v in rates.items()}
    for k, v in rates.items():
        print(f"{k:9s} {statistics.median(v):8.0f} img/s  {ms[k]:.3f} ms/step   (rounds: {[round(r) for r in v]})")
    print(f"per-step overhead: Lightning over plain {ms['lightning'] - ms['plain']:+.3f} ms, "
          f"medexp over bare Lightning {ms['medexp'] - ms['lightning']:+.3f} ms "
          f"(batch {a.batch}, {a.epochs} epochs, median of {a.rounds} rounds)")


if __name__ == "__main__":
    main()
