"""Reading one case from disk: images channel-first, masks as class indices, every failure one ``DataError`` line.

MONAI's ``LoadImage`` picks the reader: NIfTI via nibabel, DICOM series folders and other medical formats via
ITK, and 2D formats (PNG/JPEG/BMP/TIFF/GIF) via PIL with rows first (``(C, H, W)``, as numpy and the npz
datasets index them; MONAI's own PIL default would give ``(C, W, H)``). 2D images are normalised by PIL mode:
palette → RGB (or grayscale when the palette is gray), RGBA → RGB and LA → L (alpha dropped), 1-bit → L.
Masks keep their stored values and are mapped to class indices 0..K-1 (``to_class_indices``); a palette mask's
stored values are its colours when they are gray (a white foreground may be palette index 251), its indices when
the palette is coloured (Pascal VOC's: index = class). A two-class mask's encoding is found per file
(``binary_mask``: 0/1, 0/255, 0 and any one value or colour, lossy JPEG edges), so a folder may mix them;
``mask_threshold`` binarises every mask at one value instead.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Hashable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import PILReader
from monai.data.meta_tensor import MetaTensor
from monai.data.utils import is_supported_format
from monai.transforms import LoadImage, MapTransform

from medexp.data.image_readers import normalise_pil_image, through_palette
from medexp.errors import ConfigError, DataError

PIL_SUFFIXES = ("png", "jpg", "jpeg", "bmp", "tif", "tiff", "gif")


def _normalise_pil_mask(image):
    """A palette mask's values as its file means them. Gray palettes (black/white masks saved as GIF or palette
    PNG; editors put the white foreground at any index, e.g. 251) are read by colour, so such files and 8-bit 0/255
    files in one folder agree; a coloured palette (Pascal VOC's) colours class indices, which are kept."""
    if image.mode not in ("P", "PA"):
        return image
    colours = through_palette(image)
    if colours.mode == "L":
        return colours
    return image.getchannel(0) if image.mode == "PA" else image


def _normalise_pil_binary_mask(image):
    """A two-class mask's palette as the colours it shows, gray or coloured: the background is its black whatever
    index holds it, and a coloured palette's indices need not be 0 and 1."""
    return through_palette(image) if image.mode in ("P", "PA") else image


class _PILReader2D(PILReader):
    """MONAI's PIL reader, extended to TIFF and GIF."""

    def verify_suffix(self, filename) -> bool:
        return is_supported_format(filename, PIL_SUFFIXES)

    def _get_spatial_shape(self, img):
        # MONAI gives (width, height) whatever the axis order; medexp keeps PIL's (rows, columns) arrays, so the
        # shape written beside predictions must be (height, width) too
        shape = super()._get_spatial_shape(img)
        return shape if self.reverse_indexing else shape[::-1].copy()


_CONVERTERS = {"image": normalise_pil_image, "mask": _normalise_pil_mask, "binary_mask": _normalise_pil_binary_mask}


def _one_frame(image):
    """PIL opens a multi-frame TIFF (a stack) or an animated GIF at its first frame and would read only that."""
    frames = getattr(image, "n_frames", 1)
    if frames > 1:
        raise DataError(f"it holds {frames} frames (a stack or an animation) and medexp reads one 2D image per "
                        "file: save each frame as its own file, or the stack as one 3D volume (e.g. NIfTI)")
    return image


@lru_cache(maxsize=4)
def _make_loader(role: str, keep_dtype: bool = False) -> LoadImage:
    """One loader per role (``_CONVERTERS``) and process: building one registers every MONAI reader (and logs about
    nvImageCodec)."""
    loader = LoadImage(image_only=True, dtype=None if keep_dtype else np.float32, ensure_channel_first=True)
    convert = _CONVERTERS[role]
    # registered last = tried first
    loader.register(_PILReader2D(converter=lambda image: convert(_one_frame(image)), reverse_indexing=False))
    return loader


def _read(loader: LoadImage, path: str) -> MetaTensor:
    try:
        return loader(path)
    except Exception as error:  # any reader failure (PIL, nibabel, ITK, pydicom) becomes one line
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
        raise DataError(f"cannot read image {path}: {reason}") from None


def read_image(path: str) -> MetaTensor:
    """One image, channel-first, in its stored dtype (in-memory data scale integer images to [0, 1])."""
    with warnings.catch_warnings():  # PIL's read-only pixels become a tensor as they are: only ever copied from
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return _read(_make_loader("image", keep_dtype=True), path)


def to_class_indices(
    mask: np.ndarray, path: str, num_classes: int | None, label_values: Sequence[float] | None
) -> np.ndarray:
    """Stored mask values → class indices 0..K-1.

    ``label_values[i]`` is the stored value of class ``i`` (e.g. ``[0, 128, 255]``); without it a mask that holds
    only 0 and 255 is read as binary 0/1 and other masks must already hold indices. Anything else is a DataError.
    """
    values = np.unique(mask)
    if label_values is not None:
        unknown = sorted(set(values.tolist()) - {float(v) for v in label_values})
        if unknown:
            raise DataError(
                f"mask {path} holds values {unknown[:5]} not in label_values {list(label_values)}: fix label_values"
            )
        indices = np.zeros(mask.shape, dtype=np.float32)
        for index, value in enumerate(label_values):
            indices[mask == value] = index
        return indices
    if set(values.tolist()) <= {0.0, 255.0}:
        return (mask > 0).astype(np.float32)
    if (
        not np.array_equal(values, np.round(values))
        or values.min() < 0
        or (num_classes and values.max() >= num_classes)
    ):
        raise DataError(
            f"mask {path} holds values {values[:5].tolist()}{'...' if len(values) > 5 else ''} outside classes "
            f"0..{(num_classes or 0) - 1}: set data.num_classes, data.label_values (stored value of each class) "
            "or, for lossy (JPEG) binary masks, data.mask_threshold"
        )
    return mask


LOSSY_MASK_THRESHOLD = 127  # half of 8-bit white: JPEG leaves a 0/255 mask's values near 0 and near 255


def binary_mask(mask: np.ndarray, path: str) -> np.ndarray:
    """A two-class mask ``(C, *spatial)``, however this file encodes it, as ``(1, *spatial)`` 0/1:

    - background 0 (black) and one other value or colour (0/1 class indices, 0/255, 0/7, a palette's black and
      white or black and red): that value is the foreground;
    - more values with some above 127 (a 0/255 mask saved as JPEG, its edges blurred, colours fringed, or drawn
      with soft edges): foreground where a channel exceeds 127.
    Anything else (e.g. 0, 1 and 2: more classes than two) is a DataError naming the file and the settings."""
    if mask.shape[0] > 1 and all(np.array_equal(mask[0], mask[c]) for c in range(1, mask.shape[0])):
        mask = mask[:1]  # a gray mask saved as RGB(A)
    foreground = mask.any(axis=0, keepdims=True)
    colours = mask[:, foreground[0]]
    if colours.size == 0 or (colours == colours[:, :1]).all():
        return foreground.astype(np.float32)
    if mask.max() > LOSSY_MASK_THRESHOLD:
        return (mask.max(axis=0, keepdims=True) > LOSSY_MASK_THRESHOLD).astype(np.float32)
    values = np.unique(mask)
    raise DataError(
        f"mask {path} holds values {', '.join(f'{v:g}' for v in values[:5])}{'...' if len(values) > 5 else ''}, "
        "not a two-class mask (0 and one foreground value): set data.num_classes and data.class_names if it holds more classes, or "
        "data.label_values=[<background value>, <foreground value>]"
    )


class LoadCased(MapTransform):
    """Load one case's files: ``image`` as (C, *spatial) float32, ``label`` as (1, *spatial) class indices and
    each binary mask (e.g. ``fov``) as (1, *spatial) 0/1, with their spatial shapes checked against each other.

    Without ``label_values`` or ``mask_threshold`` each mask's encoding is found per file: with two classes by
    ``binary_mask`` (0/1, 0/255, palettes by colour, JPEG), otherwise by ``to_class_indices``.
    ``mask_threshold``: every mask is binary, foreground where a channel exceeds this stored value (white or
    coloured foreground on black)."""

    def __init__(
        self,
        image_key: str = "image",
        label_key: str | None = "label",
        mask_keys: KeysCollection = ("fov",),
        num_classes: int | None = None,
        label_values: Sequence[float] | None = None,
        mask_threshold: float | None = None,
    ) -> None:
        if mask_threshold is not None and label_values is not None:
            raise ConfigError("data.mask_threshold and data.label_values both say how stored mask values become "
                              "classes: keep one, set the other to null")
        if mask_threshold is not None and (num_classes or 2) != 2:
            raise ConfigError(f"data.mask_threshold makes masks binary but data.num_classes={num_classes}: use it "
                              "with num_classes=2, or data.label_values for several classes")
        keys = [image_key] + ([label_key] if label_key else []) + list(mask_keys)
        super().__init__(keys, allow_missing_keys=True)
        self.image_key, self.label_key, self.mask_keys = image_key, label_key, tuple(mask_keys)
        self.num_classes = num_classes
        self.label_values = None if label_values is None else [float(v) for v in label_values]
        self.mask_threshold = mask_threshold
        self._per_file_binary = num_classes == 2 and label_values is None and mask_threshold is None
        self._open_readers()

    def _open_readers(self) -> None:
        self._image_loader = _make_loader("image")
        self._mask_loader = _make_loader("mask")
        self._binary_loader = _make_loader("binary_mask")

    def __getstate__(self) -> dict:
        """Settings only: loader workers start from a fresh interpreter (``medexp.data.workers``) and build their
        own readers (the PIL converters are closures, which do not pickle)."""
        return {k: v for k, v in self.__dict__.items() if k not in ("_image_loader", "_mask_loader", "_binary_loader")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._open_readers()

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        case = dict(data)
        paths = {key: str(case[key]) for key in self.key_iterator(case) if isinstance(case[key], (str, os.PathLike))}
        if self.image_key not in paths:
            raise DataError(f"case {case.get('case_id', case)} has no {self.image_key!r} path: fix the datalist")
        case[self.image_key] = _read(self._image_loader, paths[self.image_key])
        _check_finite(case[self.image_key], paths[self.image_key])
        if self.label_key in paths:
            case[self.label_key] = self._read_mask(paths[self.label_key], as_classes=True)
        for key in self.mask_keys:
            if key in paths:
                case[key] = self._read_mask(paths[key], as_classes=False)
        _check_shapes(case, paths, self.image_key)
        return case

    def _read_mask(self, path: str, as_classes: bool) -> MetaTensor:
        if as_classes and self._per_file_binary:
            mask = _read(self._binary_loader, path)
            return MetaTensor(binary_mask(mask.numpy(), path), meta=mask.meta)
        mask = _read(self._mask_loader, path)
        if self.mask_threshold is not None:
            foreground = mask.numpy().max(axis=0, keepdims=True) > self.mask_threshold
            return MetaTensor(foreground.astype(np.float32), meta=mask.meta)
        array = _single_channel(mask.numpy(), path)
        array = (
            to_class_indices(array, path, self.num_classes, self.label_values)
            if as_classes
            else (array != 0).astype(np.float32)
        )
        return MetaTensor(array, meta=mask.meta)


def _check_finite(image: MetaTensor, path: str) -> None:
    """NaN or infinite pixels would train a NaN loss, or predict NaN probabilities, a class all the same."""
    bad = int((~torch.isfinite(image)).sum()) if image.is_floating_point() else 0
    if bad:
        raise DataError(f"image {path} holds {bad} NaN or infinite pixel value(s): fix or drop that image")


def _single_channel(mask: np.ndarray, path: str) -> np.ndarray:
    """Masks saved as RGB(A) gray images are common; a truly coloured mask needs an explicit mapping."""
    if mask.shape[0] == 1:
        return mask
    if all(np.array_equal(mask[0], mask[c]) for c in range(1, min(mask.shape[0], 3))):
        return mask[:1]
    raise DataError(f"mask {path} has {mask.shape[0]} differing colour channels: save it as a gray or palette image "
                    "(for a JPEG mask of two classes, set data.mask_threshold)")


def _check_shapes(case: Mapping[Hashable, Any], paths: Mapping[Hashable, str], image_key: str) -> None:
    expected = tuple(case[image_key].shape[1:])
    for key, path in paths.items():
        shape = tuple(case[key].shape[1:])
        if shape != expected:
            raise DataError(
                f"{key} {path} has spatial shape {shape} but image {paths[image_key]} has {expected}: "
                "pair the right files or resample them to the same grid"
            )


@dataclass(frozen=True)
class CaseSummary:
    """What the validation pass keeps of one case: enough for the dataset fingerprint, small enough to log."""

    case_id: str
    shape: tuple[int, ...]
    spacing: tuple[float, ...]
    channels: int
    intensity_sample: np.ndarray  # (channels, n) strided sample of voxel values
    class_counts: np.ndarray  # voxels per class index


def summarise_case(record: Mapping[str, Any], case: Mapping[str, Any], loader: LoadCased,
                   sample_size: int = 20000) -> CaseSummary:
    """What the validation pass keeps of a case as ``loader`` read it (before preprocessing)."""
    image = case[loader.image_key]
    flat = image.numpy().reshape(image.shape[0], -1)
    label = case.get(loader.label_key)
    counts = (
        np.bincount(label.numpy().astype(np.int64).ravel())
        if isinstance(label, MetaTensor)
        else np.zeros(0, np.int64)
    )
    return CaseSummary(
        case_id=str(record.get("case_id", record[loader.image_key])),
        shape=tuple(int(s) for s in image.shape[1:]),
        spacing=tuple(float(s) for s in image.pixdim),
        channels=int(image.shape[0]),
        intensity_sample=flat[:, :: max(1, flat.shape[1] // sample_size)],
        class_counts=counts,
    )


def check_case_layout(summary: CaseSummary, where: str, in_channels: int, spatial_dims: int,
                      channels: Sequence[int] | None = None) -> None:
    """A case's dimensions and channels against the config, one DataError line naming the fix."""
    if len(summary.shape) != spatial_dims:
        raise DataError(
            f"{where} has {len(summary.shape)} spatial dims but data.spatial_dims={spatial_dims}: fix spatial_dims"
        )
    if channels and max(channels) >= summary.channels:
        raise DataError(
            f"{where} has {summary.channels} channels; data.preprocessing.channels={list(channels)} asks for more"
        )
    if not channels and summary.channels != in_channels:
        raise DataError(
            f"{where} has {summary.channels} channels but data.in_channels={in_channels}: fix in_channels"
        )


def inspect_cases(
    records: Sequence[Mapping[str, Any]],
    loader: LoadCased,
    in_channels: int,
    spatial_dims: int,
    workers: int = 1,
    sample_size: int = 20000,
    channels: Sequence[int] | None = None,
) -> list[CaseSummary]:
    """Load every case once (threads, order kept), failing early with a DataError on the first bad case.

    ``channels``: the stored channels preprocessing keeps; the model then sees ``len(channels)`` of them."""

    def inspect(record: Mapping[str, Any]) -> CaseSummary:
        summary = summarise_case(record, loader(record), loader, sample_size)
        check_case_layout(summary, f"image {record[loader.image_key]}", in_channels, spatial_dims, channels)
        return summary

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return list(pool.map(inspect, records))


def dataset_fingerprint(summaries: Sequence[CaseSummary]) -> dict[str, Any]:
    """nnU-Net's dataset fingerprint, cheap: shapes, spacings, intensity percentiles and class fractions."""
    shapes = np.array([s.shape for s in summaries])
    spacings = np.array([s.spacing for s in summaries])
    samples = np.concatenate([s.intensity_sample for s in summaries], axis=1)
    counts = np.zeros(max(len(s.class_counts) for s in summaries), np.int64)
    for summary in summaries:
        counts[: len(summary.class_counts)] += summary.class_counts
    return {
        "n_cases": len(summaries),
        "shape": {
            "min": shapes.min(0).tolist(),
            "median": np.median(shapes, 0).tolist(),
            "max": shapes.max(0).tolist(),
        },
        "spacing": {
            "min": spacings.min(0).tolist(),
            "median": np.median(spacings, 0).tolist(),
            "max": spacings.max(0).tolist(),
        },
        "intensity": {
            "mean": samples.mean(1).tolist(),
            "std": samples.std(1).tolist(),
            "percentile_00_5": np.percentile(samples, 0.5, axis=1).tolist(),
            "percentile_99_5": np.percentile(samples, 99.5, axis=1).tolist(),
        },
        "class_fraction": (counts / max(1, counts.sum())).round(6).tolist(),
    }
