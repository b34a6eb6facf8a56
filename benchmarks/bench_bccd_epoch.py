"""One training epoch of experiment=bccd_cells through ``medexp-train`` against a plain MONAI loop, whole commands.

Both run as processes, one after the other, alternating (``--repeats`` pairs), each timed from launch to exit: the
same 205 training images of BCCD's official split (VOC XMLs read directly), the same preprocessing (half size,
240x320, percentile clip and per-image z-score, cached by ``CacheDataset``), random tail (zoom 0.8-1.2 with boxes,
flips on both axes, quarter turns, intensity shift and contrast), the same RetinaNet (ResNet-18 layout at half width,
pyramid at strides 8/16/32, ATSS matching, hard negatives 256 per image), AdamW, batch 4. medexp runs as a user
would (default callbacks, checkpoints, ``logger=none``; no validation in epoch 1 of the recipe, ``test=false``).
Prints one JSON line per command and the ratio of the fastest medexp run to the fastest plain one (target <= 1.05).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_bccd_epoch.py [--repeats 2]
    .venv/bin/python benchmarks/bench_bccd_epoch.py --plain    # the plain loop alone (what the bench starts)
"""
from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import epoch_ratio  # benchmarks/epoch_ratio.py: the harness both epoch benchmarks share

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "BCCD"
CLASSES = ["RBC", "WBC", "Platelets"]


def voc_items(data: Path) -> list[dict]:
    """Training images with their boxes on the image's axes (rows first), zero-area boxes left out."""
    items = []
    for stem in (data / "ImageSets" / "Main" / "train.txt").read_text().split():
        boxes, labels = [], []
        for obj in ET.parse(data / "Annotations" / f"{stem}.xml").getroot().iter("object"):
            x0, y0, x1, y1 = (float(obj.find(f"bndbox/{k}").text) for k in ("xmin", "ymin", "xmax", "ymax"))
            if x1 > x0 and y1 > y0:
                boxes.append([y0, x0, y1, x1])
                labels.append(CLASSES.index(obj.find("name").text))
        items.append({"image": str(data / "JPEGImages" / f"{stem}.jpg"), "box": boxes, "label": labels})
    return items


def plain_epoch(data: Path) -> None:
    """The recipe's first epoch written directly against MONAI and torch (the reference for medexp's overhead)."""
    import numpy as np
    import torch
    from monai.apps.detection.transforms.dictionary import (
        ClipBoxToImaged,
        RandFlipBoxd,
        RandRotateBox90d,
        RandZoomBoxd,
        ZoomBoxd,
    )
    from monai.data import CacheDataset, DataLoader, PILReader
    from monai.networks.nets import ResNet
    from monai.transforms import (
        ClipIntensityPercentilesd,
        Compose,
        EnsureChannelFirstd,
        EnsureTyped,
        LoadImaged,
        NormalizeIntensityd,
        RandScaleIntensityFixedMeand,
        RandShiftIntensityd,
        SelectItemsd,
    )

    from medexp.tasks.detection import build_retinanet  # the network only: MONAI's classes, assembled

    torch.manual_seed(0)
    items = [{**item, "box": np.asarray(item["box"], np.float32).reshape(-1, 4),
              "label": np.asarray(item["label"], np.int64)} for item in voc_items(data)]
    transform = Compose([
        LoadImaged("image", reader=PILReader(reverse_indexing=False)), EnsureChannelFirstd("image"),
        EnsureTyped(["image", "box"], dtype=torch.float32, track_meta=False),
        ZoomBoxd("image", "box", "image", zoom=[0.5, 0.5], keep_size=False),
        ClipIntensityPercentilesd("image", lower=0.5, upper=99.5, channel_wise=True),
        NormalizeIntensityd("image", channel_wise=True),
        RandZoomBoxd("image", "box", "image", prob=0.5, min_zoom=0.8, max_zoom=1.2, keep_size=True),
        ClipBoxToImaged("box", "label", "image", remove_empty=True),
        RandFlipBoxd("image", "box", "image", prob=0.5, spatial_axis=0),
        RandFlipBoxd("image", "box", "image", prob=0.5, spatial_axis=1),
        RandRotateBox90d("image", "box", "image", prob=0.5, max_k=3, spatial_axes=(0, 1)),
        RandShiftIntensityd("image", offsets=0.1, prob=0.5),
        RandScaleIntensityFixedMeand("image", factors=(-0.2, 0.2), fixed_mean=True, prob=0.5),
        SelectItemsd(["image", "box", "label"]),
        EnsureTyped(["image", "box"], dtype=torch.float32, track_meta=False),
        EnsureTyped("label", dtype=torch.long, track_meta=False),
    ])
    loader = DataLoader(CacheDataset(items, transform, progress=False), batch_size=4, shuffle=True,
                        collate_fn=lambda cases: cases)
    backbone = ResNet("basic", [2, 2, 2, 2], [32, 64, 128, 256], spatial_dims=2, n_input_channels=3,
                      conv1_t_size=7, conv1_t_stride=2)
    net = build_retinanet(backbone, 2, 3, [20, 32], returned_layers=[2, 3], fpn_channels=64)
    net.set_target_keys(box_key="box", label_key="label")
    net.set_atss_matcher(num_candidates=4, center_in_gt=False)
    net.set_hard_negative_sampler(batch_size_per_image=256, positive_fraction=0.3, pool_size=20, min_neg=16)
    optimizer = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)
    net.train()
    for batch in loader:
        losses = net([case["image"] for case in batch], [{"box": c["box"], "label": c["label"]} for c in batch])
        loss = losses[net.cls_key] + losses[net.box_reg_key]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    print(f"plain: last loss {loss.item():.4f}")


if __name__ == "__main__":
    epoch_ratio.main(__file__, DATA, plain_epoch, ["experiment=bccd_cells", "test=false"])
