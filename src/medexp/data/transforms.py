"""MONAI dictionary-transform pipelines for file-based segmentation, built from config.

Each pipeline lists its deterministic steps (load, resample, intensity standardisation, ``CompactCased``) before
the first random one: that prefix runs once per case and its result is kept (``CacheDataset``, or the disk cache
of ``medexp.data.case_store``); the random tail (patch sampling, augmentation) runs every epoch. The first key of every key list is the image; the others are masks (label,
field of view) that follow the image through every spatial step with nearest-neighbour sampling.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.transforms import (
    Affine,
    ClipIntensityPercentilesd,
    Compose,
    EnsureTyped,
    MapTransform,
    NormalizeIntensityd,
    Rand2DElasticd,
    Rand3DElasticd,
    RandAdjustContrastd,
    RandFlipd,
    RandGaussianNoised,
    RandomizableTransform,
    RandScaleIntensityFixedMeand,
    RandShiftIntensityd,
    Resized,
    ScaleIntensityd,
    ScaleIntensityRanged,
    Spacingd,
)

from medexp.data.augmentation import AugmentationRecipe
from medexp.data.io import LoadCased
from medexp.errors import ConfigError, DataError

PREPROCESSING_OPTIONS = ("channels", "spacing", "resize", "clip_percentiles", "window", "normalize")
NORMALIZATIONS = ("zscore", "minmax", "none")
SAMPLERS = ("posneg", "uniform")


def _modes(keys: Sequence[str], image_mode: str = "bilinear") -> list[str]:
    return [image_mode] + ["nearest"] * (len(keys) - 1)


def preprocessing_transforms(config: Mapping[str, Any] | None, keys: Sequence[str] = ("image", "label")) -> list:
    """Deterministic preprocessing, in methods-section order::

    channels: [1]                # keep these stored channels (e.g. the green one of an RGB fundus photograph)
    spacing: [0.8, 0.8, 2.5]     # resample to this voxel spacing (image bilinear, masks nearest); null = keep
    resize: [512, 512]           # resize to this spatial size; 512 = longest side to 512, aspect kept; null = keep
    clip_percentiles: [0.5, 99.5]  # clip each image's channels to these percentiles
    window: [-100, 300]          # CT window a:b mapped to [0, 1] and clipped
    normalize: zscore            # per image and channel: zscore | minmax ([0, 1]) | none
    """
    options = {"normalize": "zscore", **dict(config or {})}
    unknown = sorted(set(options) - set(PREPROCESSING_OPTIONS))
    if unknown:
        raise ConfigError(f"unknown preprocessing option(s) {unknown}: valid options are {list(PREPROCESSING_OPTIONS)}")
    if options["normalize"] not in NORMALIZATIONS:
        raise ConfigError(
            f"preprocessing.normalize={options['normalize']!r} is unknown: use one of {list(NORMALIZATIONS)}"
        )
    image = keys[0]
    steps: list = []
    if options.get("channels"):
        steps.append(SelectChannelsd(image, list(options["channels"])))
    if options.get("spacing"):
        steps.append(Spacingd(keys, pixdim=list(options["spacing"]), mode=_modes(keys), allow_missing_keys=True))
    if options.get("resize"):
        size = options["resize"]
        # one number: the longest side (photographs of many sizes and shapes keep their proportions)
        shape = {"spatial_size": size, "size_mode": "longest"} if isinstance(size, int) else {"spatial_size": list(size)}
        steps.append(Resized(keys, **shape, mode=_modes(keys), allow_missing_keys=True))
    if options.get("clip_percentiles"):
        lower, upper = options["clip_percentiles"]
        steps.append(ClipIntensityPercentilesd(image, lower=lower, upper=upper, channel_wise=True))
    if options.get("window"):
        low, high = options["window"]
        steps.append(ScaleIntensityRanged(image, a_min=low, a_max=high, b_min=0.0, b_max=1.0, clip=True))
    if options["normalize"] == "zscore":
        steps.append(NormalizeIntensityd(image, channel_wise=True))
    elif options["normalize"] == "minmax":
        steps.append(ScaleIntensityd(image, minv=0.0, maxv=1.0, channel_wise=True))
    return steps


class SelectChannelsd(MapTransform):
    """Keep the listed channels of a channel-first image."""

    def __init__(self, image_key: str, channels: Sequence[int]) -> None:
        super().__init__([image_key])
        self.channels = list(channels)

    def __call__(self, data: Mapping) -> dict:
        case = dict(data)
        for key in self.key_iterator(case):
            case[key] = case[key][self.channels]
        return case


class ThresholdFOVd(MapTransform):
    """Field-of-view mask = the channel mean of the raw image above ``threshold`` (a fundus photograph's dark
    border lies outside it). Runs before intensity standardisation, on stored intensities."""

    def __init__(self, image_key: str = "image", fov_key: str = "fov", threshold: float = 10.0) -> None:
        super().__init__([image_key])
        self.image_key, self.fov_key, self.threshold = image_key, fov_key, threshold

    def __call__(self, data: Mapping) -> dict:
        case = dict(data)
        image = case[self.image_key]
        case[self.fov_key] = (image.mean(dim=0, keepdim=True) > self.threshold).to(torch.float32)
        return case


FG_INDICES = "fg_indices"
MAX_FG_INDICES = 200_000  # a sample of the foreground is as good a set of patch centres, at a bounded size
HALF_PRECISION_LIMIT = 60_000.0  # float16 holds up to 65504: larger (unnormalised) intensities stay float32


def half_precision_allowed(preprocessing: Mapping[str, Any] | None) -> bool:
    """Whether preprocessed images may be kept as float16: when the preprocessing brings intensities to a unit scale
    (z-score, min-max, a CT window), where float16's 3 significant digits lose nothing a network learns from."""
    options = {"normalize": "zscore", **dict(preprocessing or {})}
    return options["normalize"] != "none" or bool(options.get("window"))


def foreground_indices(label: np.ndarray | torch.Tensor, seed: int = 0) -> np.ndarray:
    """Flat indices of a label's foreground voxels (``(1, *spatial)``), at most ``MAX_FG_INDICES`` of them (an even
    random sample, sorted), int32 unless the image has 2**31 voxels or more."""
    flat = np.asarray(label).reshape(-1)
    indices = np.flatnonzero(flat)
    if len(indices) > MAX_FG_INDICES:
        indices = np.sort(np.random.default_rng(seed).choice(indices, MAX_FG_INDICES, replace=False))
    return indices.astype(np.int32 if flat.size < 2**31 else np.int64)


class CompactCased(MapTransform):
    """A preprocessed case as it is kept (in memory or on disk) between epochs: plain contiguous tensors without
    MONAI metadata, the image float16 where ``half`` allows and its values fit, masks uint8, and the foreground's
    flat indices (``fg_indices``, or a sample of them) for patch sampling: 2 + 1 bytes a voxel instead of 16."""

    def __init__(self, keys: Sequence[str], half: bool) -> None:
        super().__init__(keys, allow_missing_keys=True)
        self.half = half

    def __call__(self, data: Mapping) -> dict:
        case = dict(data)
        image_key, label_key, *mask_keys = self.keys
        image = torch.as_tensor(case[image_key]).as_subclass(torch.Tensor)
        if self.half and image.numel() and float(image.abs().max()) < HALF_PRECISION_LIMIT:
            image = image.to(torch.float16)
        case[image_key] = image.contiguous()
        if label_key in case:
            label = torch.as_tensor(case[label_key]).as_subclass(torch.Tensor)
            case[label_key] = label.to(torch.uint8).contiguous()  # class indices < 256 (LoadCased checked them)
            case[FG_INDICES] = torch.from_numpy(foreground_indices(case[label_key].numpy()))
        for key in mask_keys:
            if key in case:
                case[key] = (torch.as_tensor(case[key]).as_subclass(torch.Tensor) != 0).to(torch.uint8).contiguous()
        return case


def _read_patch(array: np.ndarray | torch.Tensor, starts: Sequence[int], size: Sequence[int]) -> torch.Tensor:
    """``array[:, starts:starts+size]`` as a new float32 tensor, zero-padded evenly on each side where the array is
    smaller than ``size``. On a memory-mapped array only the patch's pages are read; the result never shares memory
    with ``array``, so whatever follows may change it in place without touching a cached case."""
    source = array.numpy() if torch.is_tensor(array) else array  # numpy converts a strided float16 region faster
    region = source[(slice(None), *(slice(s, s + n) for s, n in zip(starts, size, strict=True)))]
    patch = torch.from_numpy(np.array(region, dtype=np.float32))
    short = [n - have for n, have in zip(size, patch.shape[1:], strict=True)]
    if any(short):
        pad = [amount for gap in reversed(short) for amount in (gap // 2, gap - gap // 2)]
        patch = torch.nn.functional.pad(patch, pad)
    return patch


class RandPatchesd(RandomizableTransform, MapTransform):
    """Training patches from a compact case (``CompactCased``: tensors in memory, or memory-mapped arrays of the disk
    cache), reading only the patch. ``posneg``: with probability ``pos_neg_ratio / (pos_neg_ratio + 1)`` a patch is
    centred on a random foreground voxel (from ``fg_indices``), otherwise placed uniformly anywhere in the image, as
    nnU-Net places its patches that are not oversampled; ``uniform``: always anywhere. Patches keep inside the image where it is larger and
    are zero-padded where it is smaller. Returns a list of ``samples`` cases; image and masks float32."""

    def __init__(self, keys: Sequence[str], patch_size: Sequence[int], samples: int = 1, pos_neg_ratio: float = 1.0,
                 sampler: str = "posneg") -> None:
        RandomizableTransform.__init__(self, prob=1.0)
        MapTransform.__init__(self, keys, allow_missing_keys=True)
        self.size, self.samples = [int(s) for s in patch_size], int(samples)
        self.foreground_chance = pos_neg_ratio / (pos_neg_ratio + 1.0) if sampler == "posneg" else 0.0

    def _starts(self, shape: Sequence[int], foreground: np.ndarray) -> list[int]:
        room = [max(extent - n, 0) for extent, n in zip(shape, self.size, strict=True)]
        if len(foreground) and self.R.rand() < self.foreground_chance:
            centre = np.unravel_index(int(foreground[self.R.randint(len(foreground))]), shape)
            return [int(min(max(c - n // 2, 0), r)) for c, n, r in zip(centre, self.size, room, strict=True)]
        return [int(self.R.randint(r + 1)) for r in room]

    def __call__(self, data: Mapping) -> list[dict]:
        case = dict(data)
        shape = tuple(case[self.keys[0]].shape[1:])
        foreground = case.pop(FG_INDICES, None)
        if foreground is None:
            foreground = foreground_indices(case[self.keys[1]]) if self.keys[1] in case else np.zeros(0, np.int64)
        foreground = np.asarray(foreground)
        patches = []
        for _ in range(self.samples):
            starts = self._starts(shape, foreground)
            patch = dict(case)
            for key in self.key_iterator(case):
                patch[key] = _read_patch(case[key], starts, self.size)
            patches.append(patch)
        return patches


class WholeCased(MapTransform):
    """A compact case whole for training without patches: float32 copies (never the cached arrays themselves)."""

    def __call__(self, data: Mapping) -> dict:
        case = dict(data)
        case.pop(FG_INDICES, None)
        for key in self.key_iterator(case):
            value = case[key]
            case[key] = _read_patch(value, [0] * (value.ndim - 1), value.shape[1:])
        return case


def sampling_transforms(
    keys: Sequence[str],
    patch_size: Sequence[int] | None,
    samples_per_image: int = 1,
    pos_neg_ratio: float = 1.0,
    sampler: str = "posneg",
) -> list:
    """Training patches (``RandPatchesd``): ``posneg`` centres ``pos_neg_ratio`` foreground patches per patch
    centred anywhere, ``uniform`` crops anywhere; images smaller than a patch are zero-padded. No ``patch_size``
    means whole images."""
    if patch_size is None:
        return [WholeCased(keys, allow_missing_keys=True)]
    if sampler not in SAMPLERS:
        raise ConfigError(f"data.sampler={sampler!r} is unknown: use one of {list(SAMPLERS)}")
    if pos_neg_ratio < 0:
        raise ConfigError(f"data.pos_neg_ratio={pos_neg_ratio} must be >= 0 (foreground patches per background patch)")
    return [RandPatchesd(keys, patch_size, samples_per_image, pos_neg_ratio, sampler)]


class RandRecipeAffined(RandomizableTransform, MapTransform):
    """The recipe's affine as stated: rotation in ±``rotate_deg`` (about each axis in 3D), one isotropic zoom
    factor from ``scale`` and a shift of up to ``translate`` × the image extent per axis. MONAI's RandAffined
    would zoom each axis independently and shift in voxels; here image and masks share one sampled transform."""

    def __init__(self, keys: Sequence[str], recipe: AugmentationRecipe, spatial_dims: int) -> None:
        RandomizableTransform.__init__(self, prob=recipe.affine_prob)
        MapTransform.__init__(self, keys, allow_missing_keys=True)
        self.recipe, self.spatial_dims = recipe, spatial_dims
        self.modes = _modes(keys)

    def randomize(self, spatial_shape: Sequence[int]) -> None:
        super().randomize(None)
        max_angle = math.radians(self.recipe.rotate_deg)
        self._angles = [self.R.uniform(-max_angle, max_angle) for _ in range(1 if self.spatial_dims == 2 else 3)]
        self._zoom = self.R.uniform(*self.recipe.scale)
        self._shift = [self.R.uniform(-self.recipe.translate, self.recipe.translate) * size for size in spatial_shape]

    def __call__(self, data: Mapping) -> dict:
        case = dict(data)
        self.randomize(case[self.keys[0]].shape[1:])
        if not self._do_transform:
            return case
        # Affine maps output coordinates to input ones: a zoom factor f (content f times larger) is scale 1/f.
        affine = Affine(
            rotate_params=self._angles,
            scale_params=[1.0 / self._zoom] * self.spatial_dims,
            translate_params=self._shift,
            padding_mode="zeros",
            image_only=True,
        )
        for key, mode in self.key_iterator(case, self.modes):
            case[key] = affine(case[key], mode=mode)
        return case


def monai_augmentation(
    recipe: AugmentationRecipe, keys: Sequence[str] = ("image", "label"), spatial_dims: int = 2
) -> list:
    """The recipe as per-sample MONAI transforms: spatial ones on all ``keys`` (masks nearest), intensity ones on
    the image (``keys[0]``) only. Each intensity step fires with ``intensity_prob`` independently. 2D elastic
    passes ``elastic_sigma`` as ``Rand2DElasticd``'s control-point spacing, 3D as ``Rand3DElasticd``'s sigma range.
    An identity recipe gives no transform at all."""
    if recipe.is_identity:
        return []
    keys, image, r = list(keys), keys[0], recipe
    steps: list = []
    if r.affine_prob > 0 and (r.rotate_deg or tuple(r.scale) != (1.0, 1.0) or r.translate):
        steps.append(RandRecipeAffined(keys, r, spatial_dims))
    if r.flip_prob > 0:
        steps += [RandFlipd(keys, prob=r.flip_prob, spatial_axis=axis, allow_missing_keys=True) for axis in r.flip_axes]
    if r.elastic_prob > 0 and len(r.elastic_sigma) > 0:
        elastic = Rand2DElasticd if spatial_dims == 2 else Rand3DElasticd
        first = {"spacing": tuple(r.elastic_sigma)} if spatial_dims == 2 else {"sigma_range": tuple(r.elastic_sigma)}
        steps.append(
            elastic(
                keys,
                **first,
                magnitude_range=tuple(r.elastic_magnitude),
                prob=r.elastic_prob,
                mode=_modes(keys),
                padding_mode="zeros",
                allow_missing_keys=True,
            )
        )
    if r.intensity_prob > 0:
        if r.intensity_shift:
            steps.append(RandShiftIntensityd(image, offsets=r.intensity_shift, prob=r.intensity_prob))
        if tuple(r.contrast) != (1.0, 1.0):
            factors = (r.contrast[0] - 1.0, r.contrast[1] - 1.0)
            steps.append(RandScaleIntensityFixedMeand(image, factors=factors, fixed_mean=True, prob=r.intensity_prob))
        if tuple(r.gamma) != (1.0, 1.0):
            steps.append(RandAdjustContrastd(image, gamma=tuple(r.gamma), prob=r.intensity_prob))
    if r.noise_prob > 0 and r.noise_std > 0:
        steps.append(RandGaussianNoised(image, prob=r.noise_prob, std=r.noise_std, sample_std=False))
    return steps


def output_transforms(keys: Sequence[str]) -> list:
    """Plain tensors for the model: image float32, label int64 class indices, other masks bool."""
    image, label, *masks = keys
    steps = [
        EnsureTyped(image, dtype=torch.float32, track_meta=False),
        EnsureTyped(label, dtype=torch.long, track_meta=False),
    ]
    if masks:
        steps.append(EnsureTyped(masks, dtype=torch.bool, track_meta=False, allow_missing_keys=True))
    return steps


def case_preparation(
    loader: LoadCased, preprocessing: Mapping[str, Any] | None, fov_threshold: float | None = None
) -> list:
    """The deterministic steps, whose result is kept between epochs: load → field of view → preprocess → compact
    (``CompactCased``). Keys: the loader's image, label and masks (those a case has)."""
    keys = (loader.image_key, loader.label_key, *loader.mask_keys)
    fov = [ThresholdFOVd(loader.image_key, loader.mask_keys[0], fov_threshold)] if fov_threshold is not None else []
    return [loader, *fov, *preprocessing_transforms(preprocessing, keys),
            CompactCased(keys, half_precision_allowed(preprocessing))]


def training_steps(
    keys: Sequence[str],
    recipe: AugmentationRecipe,
    spatial_dims: int,
    patch_size: Sequence[int] | None = None,
    samples_per_image: int = 1,
    pos_neg_ratio: float = 1.0,
    sampler: str = "posneg",
) -> list:
    """The random steps of every epoch on a compact case: sample patches → augment (per sample) → tensors."""
    return (sampling_transforms(keys, patch_size, samples_per_image, pos_neg_ratio, sampler)
            + monai_augmentation(recipe, keys, spatial_dims) + output_transforms(keys))


class CheckImageLayoutd(MapTransform):
    """Stop with one line when a new image cannot go into the trained model: other spatial dims or channels."""

    def __init__(self, image_key: str, in_channels: int, spatial_dims: int, channels: Sequence[int] | None) -> None:
        super().__init__([image_key])
        self.in_channels, self.spatial_dims, self.channels = in_channels, spatial_dims, channels

    def __call__(self, data: Mapping) -> dict:
        for key in self.key_iterator(data):
            image = data[key]
            where = f"image {image.meta.get('filename_or_obj', key)}"
            if image.ndim - 1 != self.spatial_dims:
                raise DataError(f"{where} is {image.ndim - 1}D but the model was trained on {self.spatial_dims}D "
                                f"images: give {self.spatial_dims}D images")
            if self.channels and max(self.channels) >= image.shape[0]:
                raise DataError(f"{where} has {image.shape[0]} channel(s) but the model reads channels "
                                f"{list(self.channels)} of each image: give images with those channels")
            if not self.channels and image.shape[0] != self.in_channels:
                raise DataError(f"{where} has {image.shape[0]} channel(s) but the model was trained on "
                                f"{self.in_channels}-channel images: give {self.in_channels}-channel images")
        return dict(data)


def prediction_pipeline(
    loader: LoadCased, preprocessing: Mapping[str, Any] | None, in_channels: int, spatial_dims: int
) -> Compose:
    """New images: load → check they fit the model → the test split's preprocessing → float32, keeping what each
    spatial step did (MetaTensor) so that ``monai.transforms.Invertd`` maps predictions back onto the input's grid."""
    image = loader.image_key
    check = CheckImageLayoutd(image, in_channels, spatial_dims, (preprocessing or {}).get("channels"))
    return Compose([loader, check, *preprocessing_transforms(preprocessing, (image,)),
                    EnsureTyped(image, dtype=torch.float32, track_meta=True)])
