"""Validation Dice of a hippocampus checkpoint under several inference settings, without retraining: sliding
windows of the training patch (40x56x40, several per volume) or one window covering every volume (48x64x48, zero
padded), each without and with mirroring (``task.tta_flips``); and what each costs in inference time.

    .venv/bin/python benchmarks/recipes/hippocampus/eval_tta.py <run>/checkpoints/best-epochNNN.ckpt
"""

from __future__ import annotations

import itertools
import json
import sys
import time

import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf

from medexp.factory import build_datamodule, build_task

WINDOWS = {"patch": [40, 56, 40], "whole": [48, 64, 48]}
FLIPS = {"none": [], "axes": [[0], [1], [2]]}


def main(ckpt: str) -> None:
    saved = torch.load(ckpt, weights_only=True)
    config = saved["hyper_parameters"]["config"]
    datamodule = build_datamodule(OmegaConf.create(config))
    for (window, roi), (name, flips) in itertools.product(WINDOWS.items(), FLIPS.items()):
        config["task"].update(roi_size=roi, tta_flips=flips)
        cfg = OmegaConf.create(config)
        task = build_task(cfg, datamodule, config)
        task.load_state_dict(saved["state_dict"])
        trainer = pl.Trainer(accelerator="cpu", precision=cfg.trainer.precision, logger=False,
                             enable_progress_bar=False, enable_model_summary=False)
        started = time.time()
        (metrics,) = trainer.validate(task, datamodule=datamodule, verbose=False)
        print(json.dumps({"window": window, "tta": name, "seconds": round(time.time() - started, 1),
                          **{k: round(v, 4) for k, v in metrics.items() if "dice" in k or "hd95" in k}}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
