"""One training epoch of experiment=hippocampus through ``medexp-train`` against a plain MONAI loop, whole commands.

Both run as processes, one after the other, alternating (``--repeats`` pairs), each timed from launch to exit: the
same 208 training cases of official fold 0 (MSD Task04), the same preprocessing (per-volume z-score, cached by
``CacheDataset``), random tail (40x56x40 patch by ``RandCropByPosNegLabeld``, affine, intensity jitter), DynUNet
with deep supervision, DiceCE loss, AdamW, batch 2 and bfloat16 autocast. medexp runs as a user would (default callbacks,
checkpoints, ``logger=none``; no validation in epoch 1 of the recipe). Prints one JSON line per command and the
ratio of the fastest medexp run to the fastest plain one (target <= 1.05).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_hippocampus_epoch.py [--repeats 2]
    .venv/bin/python benchmarks/bench_hippocampus_epoch.py --plain    # the plain loop alone (what the bench starts)
"""
from __future__ import annotations

import json
from pathlib import Path

import epoch_ratio  # benchmarks/epoch_ratio.py: the harness both epoch benchmarks share

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "Task04_Hippocampus"


def plain_epoch(data: Path, fold: int = 0) -> None:
    """The recipe's first epoch written directly against MONAI and torch (the reference for medexp's overhead)."""
    import torch
    from monai.data import CacheDataset, DataLoader
    from monai.losses import DiceCELoss
    from monai.networks.nets import DynUNet
    from monai.transforms import (
        Compose,
        EnsureChannelFirstd,
        EnsureTyped,
        LoadImaged,
        NormalizeIntensityd,
        RandAdjustContrastd,
        RandAffined,
        RandCropByPosNegLabeld,
        RandScaleIntensityFixedMeand,
        RandShiftIntensityd,
        SpatialPadd,
    )

    torch.manual_seed(0)
    rows = json.loads((data / "msd_task04_hippocampus_folds.json").read_text())["training"]
    items = [{"image": str(data / r["image"]), "label": str(data / r["label"])} for r in rows if r["fold"] != fold]
    keys, patch = ["image", "label"], [40, 56, 40]
    transform = Compose([
        LoadImaged(keys), EnsureChannelFirstd(keys), NormalizeIntensityd("image", channel_wise=True),
        SpatialPadd(keys, patch),
        RandCropByPosNegLabeld(keys, "label", patch, pos=1.0, neg=1.0, num_samples=1),
        RandAffined(keys, prob=0.3, rotate_range=[0.26] * 3, scale_range=[0.15] * 3, mode=["bilinear", "nearest"]),
        RandShiftIntensityd("image", offsets=0.1, prob=0.3),
        RandScaleIntensityFixedMeand("image", factors=0.25, prob=0.3),
        RandAdjustContrastd("image", gamma=(0.7, 1.5), prob=0.3),
        EnsureTyped("image", dtype=torch.float32, track_meta=False),
        EnsureTyped("label", dtype=torch.long, track_meta=False),
    ])
    loader = DataLoader(CacheDataset(items, transform, progress=False), batch_size=2, shuffle=True)
    net = DynUNet(3, 1, 3, [3, 3, 3, 3], [1, 2, 2, 2], [2, 2, 2], filters=[16, 32, 64, 128], norm_name="instance",
                  deep_supervision=True, deep_supr_num=2)
    weights = [1.0, 0.5, 0.25]  # deep supervision heads, normalised below as the recipe does
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    optimizer = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=1e-4)
    net.train()
    for batch in loader:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            heads = net(batch["image"]).unbind(dim=1)
            loss = sum(w * loss_fn(h, batch["label"]) for w, h in zip(weights, heads, strict=True)) / sum(weights)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    print(f"plain: last loss {loss.item():.4f}")


if __name__ == "__main__":
    epoch_ratio.main(__file__, DATA, plain_epoch, ["experiment=hippocampus"])
