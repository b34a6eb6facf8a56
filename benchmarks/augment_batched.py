"""Per-sample MONAI augmentation (``data.augment_on=loader``) against the batched engine (``augment_on=device``)
on segmentation patches with their masks, 2D and 3D, and on detection images with their boxes, timed in the same
process one after the other.

    .venv/bin/python benchmarks/augment_batched.py [--recipe light] [--repeats 5] [--device cpu|cuda]

Per sample: each patch of the batch through ``monai_augmentation`` (what a loader worker does). Batched: the whole
batch through ``BatchAugmentation`` (one random draw, one kernel per step), after a warm-up call. The elastic
deformation is left out of both (it stays per sample either way). Detection takes its experiment's own recipe
(``--recipe`` is for segmentation): per sample ``box_augmentation`` (MONAI's box transforms), batched the quarter
turns per case (they stay in the loader) then ``BoxBatchAugmentation``. Prints one JSON line per case.
"""
from __future__ import annotations

import argparse
import json
import time
from functools import partial
from pathlib import Path

import torch
import yaml
from monai.data import MetaTensor
from monai.transforms import Compose

from medexp.data.augmentation import AugmentationRecipe
from medexp.data.batch_augment import BatchAugmentation, BoxBatchAugmentation
from medexp.data.detection import box_augmentation, quarter_turns
from medexp.data.transforms import monai_augmentation

CONF = Path(__file__).parents[1] / "conf"

CASES = {  # name: (batch, channels, patch) as the recipes train them
    "2d_chasedb1": (32, 3, (128, 128)),
    "3d_hippocampus": (8, 1, (40, 56, 40)),
    "3d_ct_patch": (2, 1, (96, 96, 96)),
}
DETECTION_CASES = {  # name: (experiment, batch, channels, image, boxes per image)
    "2d_bccd_cells": ("bccd_cells", 4, 3, (240, 320), 15),
}


def experiment_recipe(experiment: str) -> tuple[AugmentationRecipe, float]:
    """The augmentation recipe (its group's file with the experiment's overrides) and quarter-turn probability an
    experiment trains with."""
    config = yaml.safe_load((CONF / "experiment" / f"{experiment}.yaml").read_text())
    (group,) = [entry["override /augmentation"] for entry in config["defaults"]
                if isinstance(entry, dict) and "override /augmentation" in entry]
    base = yaml.safe_load((CONF / "augmentation" / f"{group}.yaml").read_text()) or {}
    recipe = AugmentationRecipe.from_config({**base, **config.get("augmentation", {})})
    return recipe, float(config.get("data", {}).get("rotate90_prob", 0.0))


def box_cases(batch: int, channels: int, image: tuple[int, ...], boxes: int) -> list[dict]:
    """Random images, each with random boxes of 20-60 px (standard mode) and labels."""
    cases = []
    size = torch.tensor(image, dtype=torch.float32)
    for _ in range(batch):
        extent = 20 + 40 * torch.rand(boxes, len(image))
        low = torch.rand(boxes, len(image)) * (size - extent)
        cases.append({"image": MetaTensor(torch.randn(channels, *image)), "box": torch.cat([low, low + extent], 1),
                      "label": torch.randint(0, 3, (boxes,))})
    return cases


def augment_boxes_each(per_sample: Compose, cases: list[dict]) -> list[dict]:
    """What augment_on=loader does: each image with its boxes through MONAI's box transforms."""
    return [per_sample(dict(case)) for case in cases]


def augment_boxes_on(engine: BoxBatchAugmentation, turns: Compose, cases: list[dict], device: str):
    """What augment_on=device does: quarter turns per case in the loader, the rest batched after transfer."""
    turned = [turns(dict(case)) for case in cases]
    return engine([c["image"].as_tensor().to(device) for c in turned], [c["box"].to(device) for c in turned],
                  [c["label"].to(device) for c in turned])


def augment_each(per_sample: Compose, images: torch.Tensor, labels: torch.Tensor) -> list[dict]:
    """What loader workers do: each patch with its mask through the per-sample MONAI transforms."""
    return [per_sample({"image": images[i], "label": labels[i].float()}) for i in range(len(images))]


def seconds(run, repeats: int) -> float:
    run()  # warm-up (allocations, first kernel launches)
    start = time.perf_counter()
    for _ in range(repeats):
        run()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="light", help="a conf/augmentation name")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    config = yaml.safe_load((Path(__file__).parents[1] / "conf" / "augmentation" / f"{args.recipe}.yaml").read_text())
    recipe = AugmentationRecipe.from_config(config or {}).without_elastic
    torch.manual_seed(0)
    for name, (batch, channels, patch) in CASES.items():
        images = torch.randn(batch, channels, *patch)
        labels = (torch.rand(batch, 1, *patch) > 0.8).long()
        per_sample = Compose(monai_augmentation(recipe, ("image", "label"), len(patch)))
        per_sample.set_random_state(0)
        engine = BatchAugmentation(recipe)
        on_device = images.to(args.device), labels.to(args.device)
        loader_path = partial(augment_each, per_sample, images, labels)
        device_path = partial(engine, *on_device)
        loader_s, device_s = seconds(loader_path, args.repeats), seconds(device_path, args.repeats)
        print(json.dumps({"case": name, "recipe": args.recipe, "batch": batch, "patch": list(patch),
                          "device": args.device, "per_sample_ms": round(1000 * loader_s, 2),
                          "batched_ms": round(1000 * device_s, 2), "speedup": round(loader_s / device_s, 2)}))
    for name, (experiment, batch, channels, image, boxes) in DETECTION_CASES.items():
        recipe, rotate90_prob = experiment_recipe(experiment)
        cases = box_cases(batch, channels, image, boxes)
        per_sample = Compose(box_augmentation(recipe, len(image), rotate90_prob))
        per_sample.set_random_state(0)
        turns = Compose(quarter_turns(rotate90_prob))
        turns.set_random_state(0)
        loader_path = partial(augment_boxes_each, per_sample, cases)
        device_path = partial(augment_boxes_on, BoxBatchAugmentation(recipe), turns, cases, args.device)
        loader_s, device_s = seconds(loader_path, args.repeats), seconds(device_path, args.repeats)
        print(json.dumps({"case": name, "recipe": experiment, "batch": batch, "image": list(image),
                          "boxes_per_image": boxes, "device": args.device, "per_sample_ms": round(1000 * loader_s, 2),
                          "batched_ms": round(1000 * device_s, 2), "speedup": round(loader_s / device_s, 2)}))


if __name__ == "__main__":
    main()
