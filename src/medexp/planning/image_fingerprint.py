"""The fingerprint of classification and detection data: what their plan rules read, in the segmentation
fingerprint's style (``medexp.planning.fingerprint``) and with its shared figures (modality, intensity, leakage).

Classification: image shape distribution (stored, before any resize), channels, whether images are binary shapes
(no intensity to augment), label frequencies per split (imbalance), multi-label or not, and whether the images have
one orientation (each image correlates better with the mean image as it is than mirrored: chest X-rays, with the
heart on one side). Detection adds the boxes: boxes per image, box sides (per axis and the geometric mean), boxes per
class, and how much ground-truth boxes of one image overlap (cells that touch need a looser non-maximum suppression).

MedMNIST ``.npz`` sets are read as arrays through their data module; image tables, class folders and detection
datalists are read file by file (threads), with the data module's own readers.
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medexp.errors import ConfigError, DataError
from medexp.planning.fingerprint import (
    FINGERPRINT_VERSION,
    INTENSITY_SAMPLE,
    ORIENTATION_GRID,
    SampledCase,
    _grid,
    _intensity,
    _percentiles,
    _thumbnail,
    leakage,
    modality_hint,
    orientation,
)

CLASS_NAMING_FORMATS = ("voc", "coco")  # box formats whose annotations name their classes
ONE_ORIENTATION_AGREEING = 0.9  # this share of images closer to the mean image as they are than mirrored
ONE_ORIENTATION_ASYMMETRY = 0.05  # and the mean image this far from its mirror image (see image_orientation)


@dataclass(frozen=True)
class ImageFigures(SampledCase):
    """What one image (classification) or one image with its boxes (detection) contributes."""

    grid: np.ndarray | None = None  # the image (channel mean) on the orientation grid, z-scored
    label: Any = None  # class index, or a list of 0/1 (multi-label)
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))  # (N, 2 * dims) standard mode, voxels
    box_labels: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    mask_grid: np.ndarray | None = None  # detection: the boxes filled on the orientation grid (where objects lie)


def image_figures(record: Mapping[str, Any], image: np.ndarray, label: Any = None, boxes: np.ndarray | None = None,
                  box_labels: np.ndarray | None = None) -> ImageFigures:
    """One image's figures from its pixels ``(C, *spatial)``."""
    flat = image.reshape(image.shape[0], -1).astype(np.float32)
    gray = image.astype(np.float32).mean(0)
    grid = _grid(gray).astype(np.float32)
    grid = (grid - grid.mean()) / max(float(grid.std()), 1e-6)
    dims = image.ndim - 1
    boxes = np.zeros((0, 2 * dims)) if boxes is None else np.asarray(boxes, np.float64).reshape(-1, 2 * dims)
    return ImageFigures(
        case_id=str(record["case_id"]), patient_id=str(record.get("patient_id") or record["case_id"]),
        split=str(record.get("split")), shape=tuple(int(s) for s in image.shape[1:]), channels=int(image.shape[0]),
        image_sample=flat[:, :: max(1, flat.shape[1] // INTENSITY_SAMPLE)], thumbnail=_thumbnail(gray), grid=grid,
        label=label, boxes=boxes,
        box_labels=np.zeros(0, np.int64) if box_labels is None else np.asarray(box_labels, np.int64),
        mask_grid=None if box_labels is None else box_grid(boxes, image.shape[1:]))


def box_grid(boxes: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Boxes (standard mode, voxels) filled on ORIENTATION_GRID cells per axis: where an image's objects lie."""
    grid = np.zeros([ORIENTATION_GRID] * len(shape), dtype=bool)
    dims = len(shape)
    for box in boxes:
        low = [int(np.floor(box[a] * ORIENTATION_GRID / shape[a])) for a in range(dims)]
        high = [max(low[a] + 1, int(np.ceil(box[dims + a] * ORIENTATION_GRID / shape[a]))) for a in range(dims)]
        grid[tuple(slice(lo, hi) for lo, hi in zip(low, high, strict=True))] = True
    return grid


# --------------------------------------------------------------------------------------------------- reading
def classification_source(data: Mapping[str, Any]) -> tuple[list[dict], Any]:
    """The records to read and how: ``("arrays", ArraySplits)`` for MedMNIST-like sets held in one file, or
    ``("files", module)`` for image tables and class folders (records carry their split, patient and label)."""
    from hydra.utils import instantiate

    from medexp.data.image_table import ImageTableDataModule, label_classes
    from medexp.data.inmemory import InMemoryClassificationDataModule
    from medexp.data.splits import split_from_config

    module = instantiate(dict(data), _convert_="all")
    if isinstance(module, ImageTableDataModule):
        records = module.records()
        labels, names = label_classes(records, module.configured["class_names"], module.multi_label_columns)
        for record, label in zip(records, labels, strict=True):
            record["class"] = label.tolist() if np.ndim(label) else int(label)
        split = split_from_config(records, module.split_config)
        assigned = [{**r, "split": name} for name in ("train", "val", "test") for r in getattr(split, name)]
        return assigned, {"kind": "files", "class_names": names, "multi_label": module.multi_label_columns is not None}
    if not isinstance(module, InMemoryClassificationDataModule):
        raise ConfigError(f"medexp-plan reads classification data held as arrays (MedMNIST-like) or image files "
                          f"(data=image_table, data=image_folder); data._target_={data.get('_target_')} is neither: "
                          "train it with medexp-train and a recipe")
    arrays = module.load_arrays()
    source = arrays.source if Path(arrays.source).is_file() else None  # else a generator's description
    return [{"image": source, "case_id": f"arrays:{arrays.source}", "split": None}], {
        "kind": "arrays", "arrays": arrays, "class_names": list(module.class_names)}


def read_classification(data: Mapping[str, Any], records: Sequence[Mapping[str, Any]], how: Mapping[str, Any],
                        workers: int | None = None) -> list[ImageFigures]:
    """Every image's figures: from the arrays as stored (MedMNIST), or each file read as stored (threads)."""
    if how["kind"] == "arrays":
        arrays = how["arrays"]
        figures = []
        for split in ("train", "val", "test"):
            images, labels = arrays.images[split], arrays.labels[split]
            for index, (image, label) in enumerate(zip(images, labels, strict=True)):
                record = {"case_id": f"{split}/{index}", "split": split}
                figures.append(image_figures(record, image, np.asarray(label).tolist()))
        return figures
    from medexp.data.image_readers import read_image_file

    def read(record: Mapping[str, Any]) -> ImageFigures:
        return image_figures(record, read_image_file(record["image"]), record["class"])

    with ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1)) as pool:
        return list(pool.map(read, records))


def detection_records(data: Mapping[str, Any]) -> tuple[list[dict], Any]:
    """The detection datalist split as training splits it, and the data module's loader (boxes to MONAI's standard
    mode on the image grid, as training reads them). Classes that the annotations name (Pascal VOC, COCO) set the
    module's class count, as the plan will (``image_rules.detection_classes``)."""
    from hydra.utils import instantiate

    from medexp.data.box_formats import class_indices
    from medexp.data.datalist import build_datalist

    module = instantiate(dict(data), validate=False, _convert_="all")
    spec = module.datalist_spec
    if isinstance(spec, Mapping) and spec.get("kind") in CLASS_NAMING_FORMATS:
        named = class_indices(build_datalist(spec, module.root), module.given_class_names)
        module.num_classes = len(named) or module.num_classes
    module.setup()
    assigned = [{**r, "split": name} for name in ("train", "val", "test") for r in getattr(module.split, name)]
    return assigned, module


def read_detection(records: Sequence[Mapping[str, Any]], module, workers: int | None = None) -> list[ImageFigures]:
    loader = module._loader()
    channels = (module.preprocessing or {}).get("channels")

    def read(record: Mapping[str, Any]) -> ImageFigures:
        case = loader({k: record[k] for k in ("image", "box", "label", "case_id", "patient_id") if k in record})
        image = np.asarray(case["image"], dtype=np.float32)
        if channels:
            image = image[list(channels)]
        return image_figures(record, image, boxes=np.asarray(case["box"]), box_labels=np.asarray(case["label"]))

    with ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1)) as pool:
        return list(pool.map(read, records))


# -------------------------------------------------------------------------------------------------- summary
def summarise_images(cases: Sequence[ImageFigures], kind: str, spatial_dims: int) -> dict[str, Any]:
    """The figures every image task shares: shapes, channels, modality, intensity, orientation, leakage."""
    if not cases:
        raise DataError("the dataset has no images to fingerprint: check the data config")
    dims = {len(c.shape) for c in cases}
    if dims != {spatial_dims}:
        raise DataError(f"the images have {sorted(dims)} spatial axes but data.spatial_dims={spatial_dims}: set "
                        f"data.spatial_dims={max(dims)}")
    shapes = np.array([c.shape for c in cases], dtype=float)
    longest = shapes.max(1)
    image = np.concatenate([c.image_sample[:, :: max(1, c.image_sample.shape[1] // 256)] for c in cases], axis=1)
    channels = sorted({c.channels for c in cases})
    return {
        "version": FINGERPRINT_VERSION,
        "task": kind,
        "spatial_dims": spatial_dims,
        "channels": int(channels[-1]),
        "channels_found": channels,
        "n_cases": len(cases),
        "cases_per_split": {name: sum(c.split == name for c in cases) for name in ("train", "val", "test")},
        "modality": modality_hint(image, int(channels[-1])),
        "shape": {"min": shapes.min(0).tolist(), "median": np.median(shapes, 0).tolist(),
                  "max": shapes.max(0).tolist(), "one_shape": bool((shapes == shapes[0]).all()),
                  "longest_side": _percentiles(longest)},
        "intensity": {"image": _intensity(image)},
        "binary_images": bool(len(np.unique(image[:, :: max(1, image.shape[1] // 20000)])) <= 2),
        "orientation": image_orientation(cases, spatial_dims),
        "leakage": leakage(cases),
    }


def classification_summary(cases: Sequence[ImageFigures], spatial_dims: int, class_names: Sequence[str],
                           ) -> dict[str, Any]:
    fp = summarise_images(cases, "classification", spatial_dims)
    multi_label = isinstance(cases[0].label, list)
    per_split = {}
    for name in ("train", "val", "test"):
        labels = [c.label for c in cases if c.split == name]
        if not labels:
            counts = np.zeros(len(class_names), np.int64)
        elif multi_label:
            counts = np.sum(np.array(labels, dtype=np.int64).reshape(len(labels), -1), axis=0)
        else:
            counts = np.bincount(np.array(labels, dtype=np.int64), minlength=len(class_names))
        per_split[name] = [int(c) for c in counts]
    train = np.array(per_split["train"], dtype=float)
    present = train[train > 0]
    fp["labels"] = {
        "multi_label": multi_label, "num_classes": len(class_names), "class_names": list(class_names),
        "counts": per_split,
        "fraction": {name: [round(c / max(1, sum(v)), 4) for c in v] for name, v in per_split.items()},
        "imbalance": round(float(present.max() / present.min()), 3) if present.size else 1.0,
    }
    return fp


def detection_summary(cases: Sequence[ImageFigures], spatial_dims: int, class_names: Sequence[str]) -> dict[str, Any]:
    fp = summarise_images(cases, "detection", spatial_dims)
    boxes = [c.boxes for c in cases if len(c.boxes)]
    every = np.concatenate(boxes) if boxes else np.zeros((0, 2 * spatial_dims))
    sides = every[:, spatial_dims:] - every[:, :spatial_dims]
    counts = np.array([len(c.boxes) for c in cases])
    labels = np.concatenate([c.box_labels for c in cases]) if cases else np.zeros(0, np.int64)
    per_class = np.bincount(labels, minlength=len(class_names)) if labels.size else np.zeros(len(class_names))
    fp["labels"] = {"num_classes": len(class_names), "class_names": list(class_names),
                    "boxes_per_class": [int(c) for c in per_class]}
    if boxes:  # where the objects lie, as segmentation reads its masks: an illumination gradient is no orientation
        fp["orientation"] = orientation(cases, spatial_dims)
    fp["boxes"] = {
        "n": int(len(every)),
        "per_image": _percentiles(counts.astype(float)),
        "images_without_boxes": round(float((counts == 0).mean()), 4),
        "side": {axis: _percentiles(sides[:, axis]) for axis in range(spatial_dims)} if len(every) else {},
        "size": _percentiles(np.prod(sides, axis=1) ** (1 / spatial_dims)) if len(every) else {},
        "smallest_side": _percentiles(sides.min(1)) if len(every) else {},
        "aspect": _percentiles(sides[:, 0] / np.maximum(sides[:, 1], 1e-6)) if len(every) else {},
        "overlap": _percentiles(np.array([max_overlap(c.boxes) for c in cases if len(c.boxes) > 1] or [0.0])),
    }
    return fp


def max_overlap(boxes: np.ndarray) -> float:
    """The largest IoU between two ground-truth boxes of one image (standard mode: min corner, max corner)."""
    dims = boxes.shape[1] // 2
    low = np.maximum(boxes[:, None, :dims], boxes[None, :, :dims])
    high = np.minimum(boxes[:, None, dims:], boxes[None, :, dims:])
    inter = np.clip(high - low, 0, None).prod(-1)
    volume = (boxes[:, dims:] - boxes[:, :dims]).prod(-1)
    iou = inter / np.maximum(volume[:, None] + volume[None, :] - inter, 1e-9)
    np.fill_diagonal(iou, 0.0)
    return float(iou.max())


def image_orientation(cases: Sequence[ImageFigures], spatial_dims: int) -> dict[str, list]:
    """Per spatial axis: the asymmetry of the mean image (half the mean squared difference from its mirror image, in
    units of the z-scored images) and the share of images that correlate better with the mean of the others as they
    are than mirrored. An axis has one orientation when the mean image is asymmetric and nearly every image agrees
    (chest X-rays: heart on the left, upright), so mirroring along it would train on images the test never shows."""
    grids = np.stack([c.grid for c in cases if c.grid.shape == cases[0].grid.shape]).astype(np.float32)
    n = len(grids)
    total = grids.sum(0)
    mean = total / n
    others = (total[None] - grids) / max(1, n - 1)  # an image's own pixels must not vote for it
    asymmetry, agreeing, one = [], [], []
    for axis in range(spatial_dims):
        asym = float(((mean - np.flip(mean, axis)) ** 2).mean() / 2)
        as_is = (grids * others).reshape(n, -1).mean(1)
        flipped = (np.flip(grids, axis + 1) * others).reshape(n, -1).mean(1)
        agree = float((as_is > flipped).mean())
        asymmetry.append(round(asym, 4))
        agreeing.append(round(agree, 4))
        one.append(bool(asym >= ONE_ORIENTATION_ASYMMETRY and agree >= ONE_ORIENTATION_AGREEING))
    return {"asymmetry": asymmetry, "agreeing_cases": agreeing, "one_orientation": one}


def source_files(records: Sequence[Mapping[str, Any]]) -> list[dict]:
    """Records reduced to what the digest reads: the image file (``dataset_digest`` adds its size and date), the
    case with its labels or boxes, split and patient."""
    return [{"image": str(r["image"]) if isinstance(r.get("image"), str | Path) else None,
             "case_id": f"{r.get('case_id')}:{r.get('class', r.get('label'))}:{r.get('box', '')}",
             "patient_id": r.get("patient_id"), "split": r.get("split")} for r in records]



def fingerprint_images(data: Mapping[str, Any], kind: str, cache_dir: str | Path | None, workers: int | None = None,
                       ) -> dict[str, Any]:
    """The fingerprint of classification or detection data (``planner.fingerprint_data`` dispatches here)."""
    import json
    import time

    from medexp.planning.fingerprint import dataset_digest

    started = time.perf_counter()
    dims = int(data.get("spatial_dims", 2))
    if kind == "classification":
        records, how = classification_source(data)
    else:
        records, how = detection_records(data)
    reading = {key: data.get(key) for key in ("spatial_dims", "image_size", "box_mode", "box_axes", "num_classes")}
    reading.update(kind=kind, channels=(data.get("preprocessing") or {}).get("channels"))
    digest = dataset_digest(source_files(records), reading)
    cached = Path(cache_dir) / f"{digest}.json" if cache_dir else None
    if cached is not None and cached.is_file():
        return json.loads(cached.read_text())
    if kind == "classification":
        fingerprint = classification_summary(read_classification(data, records, how, workers), dims,
                                             how["class_names"])
        fingerprint["source"] = how["kind"]
    else:
        fingerprint = detection_summary(read_detection(records, how, workers), dims, list(how.class_names))
        fingerprint["source"] = "files"
    fingerprint.update(digest=digest, dataset=data.get("name"), seconds=round(time.perf_counter() - started, 2))
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        cached.write_text(json.dumps(fingerprint, indent=1))
    return fingerprint
