"""Reading classification images as stored: one file (or one DICOM series folder) → ``(C, *spatial)`` array in its
stored dtype, and the per-image preprocessing that brings a set to one shape and intensity scale.

Readers by suffix: PNG/JPEG/BMP/TIFF/GIF via PIL (8- or 16-bit gray, RGB; alpha and palettes dropped as
``medexp.data.io`` does for segmentation; a multi-frame TIFF is refused), DICOM via pydicom (one image per file,
the modality LUT applied: stored values become Hounsfield units for CT; a multi-frame file or a folder of .dcm
files is one 3D volume, slices ordered along the slice normal), NIfTI via nibabel (axes as stored). 2D images come
as ``(C, H, W)``; volumes as ``(C, D, H, W)`` with D the slice axis for DICOM, the file's first axis for NIfTI.
Every failure is one ``DataError`` line naming the file.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from medexp.errors import ConfigError, DataError

PIL_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif")
NIFTI_SUFFIXES = (".nii", ".nii.gz")
DICOM_SUFFIXES = (".dcm", ".dicom")
IMAGE_SUFFIXES = PIL_SUFFIXES + NIFTI_SUFFIXES + DICOM_SUFFIXES


_PIL_MODES_FOR_IMAGES = {"RGBA": "RGB", "LA": "L", "1": "L", "CMYK": "RGB"}


def through_palette(image):
    """A palette image as the colours it shows: one gray channel when every colour it uses is gray, else RGB."""
    rgb = image.convert("RGB")
    return rgb.convert("L") if _is_gray(rgb) else rgb


def normalise_pil_image(image):
    """Pixels a network can read: colour stays RGB, gray stays one channel, alpha and palettes disappear."""
    if image.mode in ("P", "PA"):
        return through_palette(image)
    return image.convert(_PIL_MODES_FOR_IMAGES[image.mode]) if image.mode in _PIL_MODES_FOR_IMAGES else image


def _is_gray(rgb_image) -> bool:
    array = np.asarray(rgb_image)
    return bool((array[..., 0] == array[..., 1]).all() and (array[..., 1] == array[..., 2]).all())


def is_dicom_series(path: Path) -> bool:
    """A folder holding DICOM files: one volume."""
    return path.is_dir() and any(p.name.lower().endswith(DICOM_SUFFIXES) for p in path.iterdir())


def is_readable_image(path: Path) -> bool:
    return is_dicom_series(path) if path.is_dir() else path.name.lower().endswith(IMAGE_SUFFIXES)


def read_image_file(path: str | Path) -> np.ndarray:
    """One image or volume, channel first, in its stored dtype (DICOM: after the modality LUT)."""
    path = Path(path)
    name = path.name.lower()
    if not path.exists():
        raise DataError(f"image {path} does not exist: fix the path or remove it from the table")
    try:
        if path.is_dir():
            if not is_dicom_series(path):
                raise DataError(f"folder {path} holds no .dcm files: list image files, or DICOM series folders")
            return _read_dicom_series(path)
        if name.endswith(PIL_SUFFIXES):
            return _read_pil(path)
        if name.endswith(NIFTI_SUFFIXES):
            return _read_nifti(path)
        if name.endswith(DICOM_SUFFIXES):
            return _read_dicom_file(path)
    except DataError:
        raise
    except Exception as error:  # PIL, nibabel, pydicom failures: one line naming the file
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
        raise DataError(f"cannot read image {path}: {reason} (corrupt or not an image: replace or remove it)") from None
    raise DataError(f"image {path} has an unknown type: use one of {', '.join(IMAGE_SUFFIXES)} or a DICOM folder")


def _read_pil(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        if getattr(image, "n_frames", 1) > 1:
            raise DataError(f"image {path} has {image.n_frames} frames: save one image per file (or the stack as "
                            "NIfTI for a 3D volume)")
        array = np.asarray(normalise_pil_image(image))
    if array.dtype == np.int32 and array.size and 0 <= array.min() and array.max() < 65536:
        array = array.astype(np.uint16)  # PIL's 16-bit gray mode "I" holds 16-bit PNG values in int32
    return array[None] if array.ndim == 2 else np.moveaxis(array, -1, 0)


def _read_nifti(path: Path) -> np.ndarray:
    import nibabel as nib

    image = nib.load(str(path))
    scaled = image.dataobj.slope != 1 or image.dataobj.inter != 0
    array = np.asarray(image.dataobj) if not scaled else np.asarray(image.get_fdata(dtype=np.float32))
    if array.ndim == 4:  # (x, y, z, channels)
        return np.moveaxis(array, -1, 0)
    return array[None]


def _dicom_pixels(dataset, path: Path) -> np.ndarray:
    from pydicom.pixels import apply_modality_lut

    if "PixelData" not in dataset:
        raise DataError(f"DICOM file {path} holds no image (no PixelData): list image files only")
    array = dataset.pixel_array
    if "RescaleSlope" in dataset or "RescaleIntercept" in dataset or "ModalityLUTSequence" in dataset:
        array = apply_modality_lut(array, dataset)
        if np.array_equal(array, np.round(array)) and array.min() >= -32768 and array.max() < 32768:
            array = array.astype(np.int16)  # CT in Hounsfield units: whole numbers, half the memory of float32
    if dataset.get("PhotometricInterpretation") == "MONOCHROME1":  # stored inverted: high values are dark
        array = array.max() - array + array.min()
    return np.asarray(array)


def _read_dicom_file(path: Path) -> np.ndarray:
    import pydicom

    dataset = pydicom.dcmread(str(path))
    array = _dicom_pixels(dataset, path)
    colour = dataset.get("SamplesPerPixel", 1) > 1
    if colour:  # (H, W, 3) or (frames, H, W, 3)
        return np.moveaxis(array, -1, 0)
    return array[None]  # (1, H, W), or a multi-frame file's (1, frames, H, W)


def _slice_position(dataset) -> float:
    """Where a slice lies along the series' normal (ImagePositionPatient · row x column), else its InstanceNumber."""
    orientation, position = dataset.get("ImageOrientationPatient"), dataset.get("ImagePositionPatient")
    if orientation is not None and position is not None:
        normal = np.cross(np.asarray(orientation[:3], float), np.asarray(orientation[3:], float))
        return float(np.dot(normal, np.asarray(position, float)))
    return float(dataset.get("InstanceNumber", 0))


def _read_dicom_series(folder: Path) -> np.ndarray:
    import pydicom

    files = sorted(p for p in folder.iterdir() if p.name.lower().endswith(DICOM_SUFFIXES))
    slices = []
    for file in files:
        try:
            slices.append(pydicom.dcmread(str(file)))
        except Exception as error:
            raise DataError(f"cannot read DICOM file {file} of series {folder}: {str(error)[:200]}") from None
    series = {s.get("SeriesInstanceUID") for s in slices}
    if len(series) > 1:
        raise DataError(f"folder {folder} holds {len(series)} DICOM series: keep one series per folder")
    slices.sort(key=_slice_position)
    planes = [_dicom_pixels(s, Path(f)) for s, f in zip(slices, files, strict=True)]
    shapes = {p.shape for p in planes}
    if len(shapes) > 1:
        raise DataError(f"DICOM series {folder} has slices of different shapes {sorted(shapes)}: one series per folder")
    return np.stack(planes)[None]  # (1, D, H, W)


# -- preprocessing -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Preprocessing:
    """Per-image steps before stacking a set, in this order:

    ``window`` [low, high]: clip stored values to a window (CT: ``[-1000, 400]`` HU for lung) and scale it to
    [0, 1]. ``clahe``: a clip limit (0-1; scikit-image's default 0.01) for contrast-limited adaptive histogram
    equalisation (``skimage.exposure.equalize_adapthist``, 2D or 3D, tiles 1/8 of each axis, each channel on its
    own; the result spans [0, 1]). ``brightness``, ``contrast``, ``sharpness``: factors as PIL's ``ImageEnhance``
    takes them (1 unchanged, 0.5 half, 1.5 half again; torchvision's ``adjust_*``), 2D images only, 8-bit or in
    [0, 1] (after ``window``, ``clahe`` or a float set already so). ``scaling``: ``null`` keeps stored values (the data module then standardises with the training set's
    mean/std, as for MedMNIST), ``zscore`` per image, ``minmax`` per image to [0, 1]. ``size``: one side length
    (or a list per axis): each image resized so it fits (proportions kept) and zero-padded to that shape; ``null``
    requires all images to share one shape. 8-bit images stay uint8 unless a step makes them real-valued."""

    size: tuple[int, ...] | None = None
    window: tuple[float, float] | None = None
    scaling: str | None = None
    clahe: float | None = None
    brightness: float | None = None
    contrast: float | None = None
    sharpness: float | None = None

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | None) -> Preprocessing:
        options = dict(cfg or {})
        valid = [f.name for f in fields(cls)]
        unknown = sorted(set(options) - set(valid))
        if unknown:
            raise ConfigError(f"unknown data.preprocessing option(s) {unknown}: valid are {', '.join(valid)}")
        size, window, scaling = options.get("size"), options.get("window"), options.get("scaling")
        clahe = options.get("clahe")
        if clahe is not None and not 0 < float(clahe) <= 1:
            raise ConfigError(f"data.preprocessing.clahe={clahe}: give a clip limit in (0, 1], e.g. 0.01, or null")
        factors = {name: options.get(name) for name in ENHANCEMENTS}
        for name, factor in factors.items():
            if factor is not None and not float(factor) >= 0:
                raise ConfigError(f"data.preprocessing.{name}={factor}: give a factor >= 0 (1 leaves the image "
                                  "as it is), or null")
        if scaling not in (None, "zscore", "minmax"):
            raise ConfigError(f"data.preprocessing.scaling={scaling!r}: use null, zscore or minmax")
        if window is not None and (len(window) != 2 or not window[0] < window[1]):
            raise ConfigError(f"data.preprocessing.window={list(window)}: give [low, high] with low < high")
        size = None if size is None else (tuple(int(s) for s in size) if isinstance(size, Sequence) else (int(size),))
        return cls(size=size, window=None if window is None else (float(window[0]), float(window[1])),
                   scaling=scaling, clahe=None if clahe is None else float(clahe),
                   **{name: None if factor is None else float(factor) for name, factor in factors.items()})

    def __call__(self, image: np.ndarray) -> np.ndarray:
        if self.window is not None:
            low, high = self.window
            image = (np.clip(image.astype(np.float32), low, high) - low) / (high - low)
        if self.clahe is not None:
            image = equalise_adaptively(image, self.clahe)
        for name in ENHANCEMENTS:
            if getattr(self, name) is not None:
                image = enhance(image, name, getattr(self, name))
        if self.scaling == "zscore":
            image = image.astype(np.float32)
            image = (image - image.mean()) / max(float(image.std()), 1e-6)
        elif self.scaling == "minmax":
            image = image.astype(np.float32)
            image = (image - image.min()) / max(float(image.max() - image.min()), 1e-6)
        if self.size is not None:
            image = fit_to_shape(image, self.size * (image.ndim - 1) if len(self.size) == 1 else self.size)
        return image


ENHANCEMENTS = ("brightness", "contrast", "sharpness")


def equalise_adaptively(image: np.ndarray, clip_limit: float) -> np.ndarray:
    """CLAHE of each channel of ``(C, *spatial)`` (scikit-image), from its own min-max range; 8-bit images come
    back 8-bit (rounded), others as float32 in [0, 1]."""
    from skimage.exposure import equalize_adapthist

    channels = []
    for channel in image.astype(np.float64):
        low, high = float(channel.min()), float(channel.max())
        spread = (channel - low) / (high - low) if high > low else np.zeros_like(channel)
        channels.append(equalize_adapthist(spread, clip_limit=clip_limit))
    return _like(np.stack(channels), image.dtype)


def enhance(image: np.ndarray, name: str, factor: float) -> np.ndarray:
    """``image`` with its brightness, contrast or sharpness changed by ``factor`` as PIL's ``ImageEnhance`` does
    (torchvision's ``adjust_<name>``); 2D, 1 or 3 channels, 8-bit or floats in [0, 1]."""
    import torch
    import torchvision.transforms.v2.functional as F

    if image.ndim != 3 or image.shape[0] not in (1, 3):
        raise DataError(f"data.preprocessing.{name} works on 2D gray or RGB images, not an image of shape "
                        f"{tuple(image.shape)} (channels, *spatial): drop it, or use clahe (2D and 3D)")
    if image.dtype != np.uint8 and not (image.dtype.kind == "f" and image.min() >= 0 and image.max() <= 1):
        raise DataError(f"data.preprocessing.{name} needs 8-bit images or floats in [0, 1], not {image.dtype} "
                        f"values in [{image.min():g}, {image.max():g}]: bring them there first with "
                        "data.preprocessing.window=[low, high] or clahe")
    adjust = {"brightness": F.adjust_brightness, "contrast": F.adjust_contrast, "sharpness": F.adjust_sharpness}
    tensor = torch.from_numpy(np.ascontiguousarray(image if image.dtype == np.uint8 else image.astype(np.float32)))
    return adjust[name](tensor, factor).numpy()


def _like(unit: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Values in [0, 1] as 8-bit when the input was, else float32."""
    return np.round(unit * 255).astype(np.uint8) if dtype == np.uint8 else unit.astype(np.float32)


def fit_to_shape(image: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Resize ``(C, *spatial)`` so it fits ``shape`` with its proportions kept, then zero-pad it (centred) to
    ``shape``; integer images are rounded back to their dtype."""
    import torch
    import torch.nn.functional as F

    spatial = image.shape[1:]
    if len(shape) != len(spatial):
        raise DataError(f"data.preprocessing.size={list(shape)} has {len(shape)} axes but an image has "
                        f"{len(spatial)} spatial axes {tuple(spatial)}")
    if tuple(spatial) == tuple(shape):
        return image
    factor = min(t / s for t, s in zip(shape, spatial, strict=True))
    resized = [max(1, min(t, round(s * factor))) for t, s in zip(shape, spatial, strict=True)]
    tensor = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None]
    mode = "bilinear" if len(spatial) == 2 else "trilinear"
    tensor = F.interpolate(tensor, size=resized, mode=mode, align_corners=False, antialias=len(spatial) == 2)[0]
    pad = []
    for target, got in zip(reversed(shape), reversed(resized), strict=True):  # F.pad takes the last axis first
        pad += [(target - got) // 2, target - got - (target - got) // 2]
    out = F.pad(tensor, pad).numpy()
    if np.issubdtype(image.dtype, np.integer):
        info = np.iinfo(image.dtype)
        out = np.clip(np.round(out), info.min, info.max).astype(image.dtype)
    return out
