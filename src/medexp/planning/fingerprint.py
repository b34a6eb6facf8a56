"""The dataset fingerprint: what the plan rules read about a dataset, measured once and cached by its digest.

nnU-Net's fingerprint (shapes, spacings, foreground intensity percentiles) extended with what a plan for any
dataset needs: the task kind, channels and a modality hint, anisotropy, class frequencies, structure sizes (how thin
the thinnest foreground is), whether the anatomy has one orientation (mirroring would then show the network cases
that never occur), and a leakage report (patients, or near-identical images, in two splits).

Every case is read once, in parallel threads (image decoding releases the GIL), with the data module's own loader,
so the fingerprint sees exactly what training will read. Classification and detection data are fingerprinted by
``medexp.planning.image_fingerprint``.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medexp.errors import ConfigError, DataError

FINGERPRINT_VERSION = 2  # 2: near-duplicates compared after standardising each image
ORIENTATION_GRID = 32  # masks are compared with their mirror images on this many cells per axis
THUMBNAIL_CELLS = {2: 16, 3: 8}  # near-duplicate detection compares images on this coarse grid
LEAK_ROWS = 1024  # images compared with all others per block
NEAR_DUPLICATE_CORRELATION = 0.97  # thumbnails (less the dataset's mean thumbnail) this correlated: the same picture
INTENSITY_SAMPLE = 4000  # voxels kept per case and channel for the intensity statistics
HU_AIR, HU_BONE = -500.0, 300.0  # stored values below and above these in one image: CT in Hounsfield units


@dataclass(frozen=True)
class SampledCase:
    """What every case contributes, whatever the task: who and where it is, its size, a sample of its voxels and a
    thumbnail for near-duplicates."""

    case_id: str
    patient_id: str
    split: str
    shape: tuple[int, ...]
    channels: int
    image_sample: np.ndarray  # (channels, n) strided sample of all voxels
    thumbnail: np.ndarray  # the image (channel mean) on THUMBNAIL_CELLS cells per axis


@dataclass(frozen=True)
class CaseFigures(SampledCase):
    """What one segmentation case contributes to the fingerprint."""

    spacing: tuple[float, ...] = ()
    foreground_sample: np.ndarray | None = None  # (channels, m) strided sample of foreground voxels
    class_counts: np.ndarray | None = None  # voxels per class index
    components: int = 0  # connected foreground structures
    half_thickness: float = 0.0  # foreground voxels per boundary voxel: half the width of a strip, the radius/2 of a disk
    mask_grid: np.ndarray | None = None  # foreground resampled to ORIENTATION_GRID cells per axis (bool)


def dataset_digest(records: Sequence[Mapping[str, Any]], reading: Mapping[str, Any]) -> str:
    """A digest of the files (path, size, modification time) and of the settings that change what is read."""
    files = []
    for record in records:
        for key in ("image", "label"):
            value = record.get(key)
            if isinstance(value, str):
                stat = os.stat(value)
                files.append([value, stat.st_size, int(stat.st_mtime)])
        files.append([record.get("case_id"), record.get("patient_id"), record.get("split")])
    payload = json.dumps({"version": FINGERPRINT_VERSION, "files": files, "reading": reading}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def fingerprint_segmentation(data: Mapping[str, Any], cache_dir: str | Path | None = None,
                             workers: int | None = None) -> dict[str, Any]:
    """The fingerprint of the segmentation dataset a resolved data config (``cfg.data`` as a plain dict) describes;
    read from ``cache_dir/<digest>.json`` when this exact dataset was fingerprinted before."""
    from medexp.data.datalist import build_datalist
    from medexp.data.splits import split_from_config

    split_options = dict(data.get("split") or {})
    if data.get("fold") is not None:
        split_options.update(kind="kfold", fold=data["fold"], num_folds=data.get("num_folds", 5))
    records = build_datalist(data["datalist"], data.get("root"))
    split = split_from_config(records, split_options)
    assigned = [{**record, "split": name} for name in ("train", "val", "test") for record in getattr(split, name)]
    reading = {key: data.get(key) for key in ("num_classes", "label_values", "mask_threshold", "spatial_dims")}
    reading["channels"] = (data.get("preprocessing") or {}).get("channels")
    digest = dataset_digest(assigned, reading)
    cached = Path(cache_dir) / f"{digest}.json" if cache_dir else None
    if cached is not None and cached.is_file():
        return json.loads(cached.read_text())
    started = time.perf_counter()
    cases = read_cases(assigned, data, workers)
    fingerprint = summarise(cases, "segmentation", int(data.get("spatial_dims", 2)), int(data.get("num_classes", 2)))
    fingerprint.update(digest=digest, dataset=data.get("name"), seconds=round(time.perf_counter() - started, 2))
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        cached.write_text(json.dumps(fingerprint, indent=1))
    return fingerprint


def task_kind(target: str) -> str:
    """segmentation | detection | classification, from the data module's class."""
    from hydra.utils import get_class

    from medexp.data.detection import DetectionDataModule
    from medexp.data.segmentation import SegmentationDataModule

    try:
        data_class = get_class(target)
    except Exception:  # noqa: BLE001 - any failure to import the user's class says the same thing
        raise ConfigError(f"data._target_={target!r} cannot be imported: fix the data config") from None
    if issubclass(data_class, DetectionDataModule):
        return "detection"
    if issubclass(data_class, SegmentationDataModule):
        return "segmentation"
    return "classification"


def read_cases(records: Sequence[Mapping[str, Any]], data: Mapping[str, Any], workers: int | None = None,
               ) -> list[CaseFigures]:
    """Every case read once with the data module's loader, in threads, order kept."""
    from medexp.data.io import LoadCased

    loader = LoadCased(num_classes=data.get("num_classes"), label_values=data.get("label_values"),
                       mask_threshold=data.get("mask_threshold"))
    channels = (data.get("preprocessing") or {}).get("channels")

    def read(record: Mapping[str, Any]) -> CaseFigures:
        case = loader(record)
        image = np.asarray(case["image"], dtype=np.float32)
        if channels:
            image = image[list(channels)]
        label = np.asarray(case["label"])[0].astype(np.int64)
        return case_figures(record, image, label, tuple(float(s) for s in case["image"].pixdim))

    with ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1)) as pool:
        return list(pool.map(read, records))


def case_figures(record: Mapping[str, Any], image: np.ndarray, label: np.ndarray,
                 spacing: Sequence[float]) -> CaseFigures:
    """One case's figures from its image (C, *spatial) and label map (*spatial) of class indices."""
    from scipy import ndimage

    flat = image.reshape(image.shape[0], -1)
    foreground = label > 0
    inner = ndimage.binary_erosion(foreground, border_value=0)
    boundary = int(foreground.sum() - inner.sum())
    fg_values = flat[:, foreground.ravel()]
    return CaseFigures(
        case_id=str(record["case_id"]),
        patient_id=str(record.get("patient_id", record["case_id"])),
        split=str(record.get("split")),
        shape=tuple(int(s) for s in label.shape),
        spacing=tuple(spacing),
        channels=int(image.shape[0]),
        image_sample=flat[:, :: max(1, flat.shape[1] // INTENSITY_SAMPLE)],
        foreground_sample=fg_values[:, :: max(1, fg_values.shape[1] // INTENSITY_SAMPLE)],
        class_counts=np.bincount(label.ravel(), minlength=1),
        components=int(ndimage.label(foreground)[1]),
        half_thickness=float(foreground.sum() / boundary) if boundary else 0.0,
        mask_grid=_grid(foreground),
        thumbnail=_thumbnail(image.mean(0)),
    )


def _grid(array: np.ndarray, cells: int = ORIENTATION_GRID) -> np.ndarray:
    """Nearest-neighbour resampling to ``cells`` per axis (cheap: index sampling)."""
    index = np.ix_(*[np.linspace(0, n - 1, cells).round().astype(int) for n in array.shape])
    return array[index]


def _thumbnail(image: np.ndarray) -> np.ndarray:
    """Block means of the image on a coarse grid (THUMBNAIL_CELLS per axis), for near-duplicate detection."""
    cells = THUMBNAIL_CELLS[image.ndim]
    block = [max(1, n // cells) for n in image.shape]
    cropped = image[tuple(slice(0, b * cells) for b in block)]
    shape = [v for b, n in zip(block, cropped.shape, strict=True) for v in (n // b, b)]
    return cropped.reshape(shape).mean(axis=tuple(range(1, 2 * image.ndim, 2))).astype(np.float32)


# ------------------------------------------------------------------------------------------------ the summary
def summarise(cases: Sequence[CaseFigures], kind: str, spatial_dims: int, num_classes: int) -> dict[str, Any]:
    """The dataset-level fingerprint (plain JSON) from the per-case figures."""
    if not cases:
        raise DataError("the dataset has no cases to fingerprint: check the datalist")
    shapes = np.array([c.shape for c in cases], dtype=float)
    spacings = np.array([c.spacing[:spatial_dims] for c in cases], dtype=float)
    counts = np.zeros(num_classes, np.int64)
    present = np.zeros(num_classes, np.int64)
    for case in cases:
        counts[: len(case.class_counts)] += case.class_counts[:num_classes]
        present[: len(case.class_counts)] += case.class_counts[:num_classes] > 0
    image = np.concatenate([c.image_sample for c in cases], axis=1)
    fg_parts = [c.foreground_sample for c in cases if c.foreground_sample.size]
    foreground = np.concatenate(fg_parts, axis=1) if fg_parts else image[:, :0]
    with_fg = [c for c in cases if c.class_counts[1:].sum() > 0]
    fg_fraction = np.array([c.class_counts[1:].sum() / np.prod(c.shape) for c in with_fg] or [0.0])
    median_spacing = np.median(spacings, 0)
    return {
        "version": FINGERPRINT_VERSION,
        "task": kind,
        "spatial_dims": spatial_dims,
        "channels": int(cases[0].channels),
        "n_cases": len(cases),
        "cases_per_split": {name: sum(c.split == name for c in cases) for name in ("train", "val", "test")},
        "modality": modality_hint(image, int(cases[0].channels)),
        "shape": {"min": shapes.min(0).tolist(), "median": np.median(shapes, 0).tolist(),
                  "max": shapes.max(0).tolist(), "one_shape": bool((shapes == shapes[0]).all())},
        "spacing": {"min": spacings.min(0).tolist(), "median": median_spacing.tolist(),
                    "max": spacings.max(0).tolist(), "p10": np.percentile(spacings, 10, 0).tolist(),
                    "anisotropy": float(median_spacing.max() / median_spacing.min())},
        "intensity": {"image": _intensity(image), "foreground": _intensity(foreground)},
        "classes": {"voxel_fraction": (counts / max(1, counts.sum())).round(6).tolist(),
                    "case_fraction": (present / len(cases)).round(4).tolist()},
        "structures": {
            "foreground_fraction": _percentiles(fg_fraction),
            "components_per_case": _percentiles(np.array([c.components for c in with_fg] or [0])),
            "half_thickness_voxels": _percentiles(np.array([c.half_thickness for c in with_fg] or [0.0])),
        },
        "orientation": orientation(cases, spatial_dims),
        "leakage": leakage(cases),
    }


def _intensity(values: np.ndarray) -> dict[str, list[float]]:
    if values.size == 0:
        return {}
    stats = {"mean": values.mean(1), "std": values.std(1), "min": values.min(1), "max": values.max(1),
             "p00_5": np.percentile(values, 0.5, axis=1), "p99_5": np.percentile(values, 99.5, axis=1)}
    return {key: [round(float(v), 4) for v in value] for key, value in stats.items()}


def _percentiles(values: np.ndarray) -> dict[str, float]:
    return {name: round(float(np.percentile(values, q)), 4) for name, q in
            (("p05", 5), ("median", 50), ("p95", 95), ("min", 0), ("max", 100))}


def modality_hint(image_sample: np.ndarray, channels: int) -> dict[str, str]:
    """CT when stored values span the Hounsfield range (air below -500 and bone above 300); a colour photograph when
    three 8-bit channels; else unknown (MR, ultrasound, microscopy gray values: relative intensities)."""
    low, high = np.percentile(image_sample, 0.5), np.percentile(image_sample, 99.5)
    if low < HU_AIR and high > HU_BONE:
        return {"kind": "CT", "why": f"stored values span {low:.0f}..{high:.0f}: the Hounsfield range"}
    if channels == 3 and image_sample.min() >= 0 and image_sample.max() <= 255:
        return {"kind": "photograph", "why": "three 8-bit channels"}
    return {"kind": "unknown", "why": f"{channels} channel(s), values {low:.4g}..{high:.4g}: relative intensities"}


def orientation(cases: Sequence[CaseFigures], spatial_dims: int) -> dict[str, list]:
    """Per spatial axis: the asymmetry of the mean foreground map under mirroring (0 = mirror-symmetric), and the
    fraction of cases whose foreground overlaps the mean map better as it is than mirrored. An axis has one
    orientation when the mean map is clearly asymmetric and nearly every case agrees with it (Hippocampus crops:
    left and right differ), so mirroring along it would train on anatomy that never occurs."""
    grids = np.stack([c.mask_grid for c in cases if c.mask_grid.any()]).astype(np.float32)
    mean = grids.mean(0)
    asymmetry, agreeing, one_orientation = [], [], []
    for axis in range(spatial_dims):
        mirrored = np.flip(mean, axis)
        asym = float(np.abs(mean - mirrored).sum() / max(1e-6, (mean + mirrored).sum()))
        as_is = (grids * mean).reshape(len(grids), -1).sum(1)
        flipped = (np.flip(grids, axis + 1) * mean).reshape(len(grids), -1).sum(1)
        agree = float((as_is > flipped).mean())
        asymmetry.append(round(asym, 4))
        agreeing.append(round(agree, 4))
        one_orientation.append(bool(asym >= 0.1 and agree >= 0.9))
    return {"asymmetry": asymmetry, "agreeing_cases": agreeing, "one_orientation": one_orientation}


def _unit_rows(rows: np.ndarray) -> np.ndarray:
    """Each row less its mean, divided by its norm: correlation becomes a dot product."""
    centred = rows - rows.mean(1, keepdims=True)
    return centred / np.maximum(np.linalg.norm(centred, axis=1, keepdims=True), 1e-9)


def leakage(cases: Sequence[CaseFigures]) -> dict[str, Any]:
    """Patients with cases in two splits, and near-identical images in two splits: either lets the test score a
    case the network has, in effect, seen. Images are compared as thumbnails less the dataset's mean thumbnail (what
    every image shares, an ultrasound fan or a black border, says nothing), by correlation."""
    splits_of: dict[str, set[str]] = {}
    for case in cases:
        splits_of.setdefault(case.patient_id, set()).add(case.split)
    patients = sorted(p for p, s in splits_of.items() if len(s) > 1)
    # each image standardised first (MR scales differ from case to case: a scale is no picture), then less what
    # every image shares
    thumbs = _unit_rows(np.stack([c.thumbnail.ravel() for c in cases]).astype(np.float64))
    thumbs = _unit_rows(thumbs - thumbs.mean(0))
    names = np.array([c.split for c in cases])
    pairs = []
    for start in range(0, len(cases), LEAK_ROWS):  # rows in blocks: memory stays bounded on large datasets
        rows = slice(start, start + LEAK_ROWS)
        close = (thumbs[rows] @ thumbs.T >= NEAR_DUPLICATE_CORRELATION) & (names[rows, None] != names[None, :])
        pairs += [[cases[start + i].case_id, cases[j].case_id] for i, j in np.argwhere(close) if start + i < j]
    return {"patients_in_two_splits": patients, "near_duplicates_across_splits": pairs,
            "leaks": bool(patients or pairs)}
