"""Embedded detection data: synthetic 2D images with bright elliptic "lesions" and their bounding boxes.

Each image holds 1 to ``max_lesions`` lesions of varied size (semi-axes ``radius`` px), elongation, orientation and
contrast (some faint) on the textured, noisy background of the classification set; lesions do not overlap. A
lesion's box is the extent of its half-maximum region, in MONAI's standard mode ``[row_min, col_min, row_max,
col_max]``. The set is written once as PNG files plus a detection datalist (``dataset.json``) and then read like
any user datalist, so the synthetic run exercises the whole file-based path; the same seed gives the same files.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medexp.data.detection import DetectionDataModule
from medexp.data.synthetic import textured_background

SPLIT_KEYS = {"train": "training", "val": "validation", "test": "test"}  # MONAI's datalist names
GENERATOR_VERSION = 1  # in the folder name: a changed generator never reuses sets written by an older one


def make_box_lesions(n: int, size: int = 64, seed: int = 0, max_lesions: int = 3,
                     radius: Sequence[float] = (2.5, 9.0), contrast: Sequence[float] = (0.2, 0.5),
                     ) -> tuple[np.ndarray, list[list[list[int]]]]:
    """``n`` images ``(n, size, size)`` uint8 and, per image, its lesions' boxes (rows first, ints), seeded."""
    rng = np.random.default_rng(seed)
    images = textured_background(rng, n, size, gradient=0.3)  # gentle: no lesion fades into a clipped corner
    rows, cols = np.mgrid[0:size, 0:size].astype(np.float64)
    all_boxes = []
    for image in images:
        centres, boxes = [], []
        for _ in range(rng.integers(1, max_lesions + 1)):
            a, b = rng.uniform(*radius, size=2)
            extent = max(a, b)
            # a centre at least both lesions' extents away from the others, inside the image with a margin
            for _attempt in range(20):
                centre = rng.uniform(extent + 2, size - extent - 2, size=2)
                if all(np.hypot(*(centre - c)) > extent + r + 2 for c, r in centres):
                    break
            else:
                continue
            centres.append((centre, extent))
            angle = rng.uniform(0, np.pi)
            u = (rows - centre[0]) * np.cos(angle) + (cols - centre[1]) * np.sin(angle)
            v = -(rows - centre[0]) * np.sin(angle) + (cols - centre[1]) * np.cos(angle)
            distance = np.sqrt((u / a) ** 2 + (v / b) ** 2)  # 1 on the margin
            lesion = 1 / (1 + np.exp((distance - 1) * min(a, b) / 0.6))  # soft margin, ~0.6 px wide
            image += rng.uniform(*contrast) * lesion
            inside_r, inside_c = np.nonzero(lesion > 0.5)
            boxes.append([int(inside_r.min()), int(inside_c.min()), int(inside_r.max()) + 1, int(inside_c.max()) + 1])
        image += rng.normal(0, 0.03, size=image.shape)
        all_boxes.append(boxes)
    return (np.clip(images, 0, 1) * 255).astype(np.uint8), all_boxes


def write_box_lesion_set(folder: Path, sizes: dict[str, int], image_size: int, seed: int, max_lesions: int) -> Path:
    """Write the PNGs and ``dataset.json`` into ``folder`` (atomically: parallel jobs may race); returns the json."""
    from PIL import Image

    datalist_path = folder / "dataset.json"
    if datalist_path.is_file():
        return datalist_path
    staging = folder.with_name(f"{folder.name}.partial-{np.random.default_rng().integers(1 << 30)}")
    (staging / "images").mkdir(parents=True)
    datalist: dict[str, list[dict[str, Any]]] = {}
    for offset, (split, n) in enumerate(sizes.items()):
        images, boxes = make_box_lesions(n, image_size, seed + offset, max_lesions)
        datalist[SPLIT_KEYS[split]] = []
        for index, (image, image_boxes) in enumerate(zip(images, boxes, strict=True)):
            name = f"images/{split}_{index:04d}.png"
            Image.fromarray(image).save(staging / name)
            datalist[SPLIT_KEYS[split]].append({"image": name, "box": image_boxes, "label": [0] * len(image_boxes)})
    (staging / "dataset.json").write_text(json.dumps(datalist))
    try:
        staging.rename(folder)
    except OSError:  # another job wrote the same set first
        shutil.rmtree(staging)
    return datalist_path


class SyntheticBoxesDataModule(DetectionDataModule):
    """Train/val/test sets from ``make_box_lesions`` (disjoint seeds from ``generator_seed``), written under
    ``root`` on first use and read back through the detection datalist path."""

    def __init__(self, root: str, num_train: int = 400, num_val: int = 100, num_test: int = 100,
                 image_size: int = 64, max_lesions: int = 3, generator_seed: int = 1234, **kwargs: Any) -> None:
        self.sizes = {"train": num_train, "val": num_val, "test": num_test}
        self.image_size, self.max_lesions, self.generator_seed = image_size, max_lesions, generator_seed
        folder = Path(root) / (f"v{GENERATOR_VERSION}-seed{generator_seed}-{image_size}px-max{max_lesions}-"
                               f"{num_train}-{num_val}-{num_test}")
        super().__init__(datalist={"kind": "json", "path": "dataset.json"}, root=str(folder), box_mode="xyxy",
                         **kwargs)

    def setup(self, stage: str | None = None) -> None:
        write_box_lesion_set(Path(self.root), self.sizes, self.image_size, self.generator_seed, self.max_lesions)
        super().setup(stage)
