"""MONAI dictionary-transform pipelines for file-based segmentation, built from config.

Each pipeline lists its deterministic steps (load, resample, intensity standardisation) before the first random
one, because ``CacheDataset``/``PersistentDataset`` cache exactly that prefix; the random tail (patch sampling,
augmentation) runs every epoch. The first key of every key list is the image; the others are masks (label,
field of view) that follow the image through every spatial step with nearest-neighbour sampling.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from monai.transforms import (
    Affine,
    ClipIntensityPercentilesd,
    Compose,
    DeleteItemsd,
    EnsureTyped,
    FgBgToIndicesd,
    MapTransform,
    NormalizeIntensityd,
    Rand2DElasticd,
    Rand3DElasticd,
    RandAdjustContrastd,
    RandCropByPosNegLabeld,
    RandFlipd,
    RandGaussianNoised,
    RandomizableTransform,
    RandScaleIntensityFixedMeand,
    RandShiftIntensityd,
    RandSpatialCropSamplesd,
    Resized,
    ScaleIntensityd,
    ScaleIntensityRanged,
    Spacingd,
    SpatialPadd,
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


def sampling_transforms(
    keys: Sequence[str],
    patch_size: Sequence[int] | None,
    samples_per_image: int = 1,
    pos_neg_ratio: float = 1.0,
    sampler: str = "posneg",
) -> list:
    """Training patches: ``posneg`` centres ``pos_neg_ratio`` foreground patches per background one on the label
    (``RandCropByPosNegLabeld``), ``uniform`` crops anywhere; images smaller than a patch are zero-padded first.
    No ``patch_size`` means whole images."""
    if patch_size is None:
        return []
    if sampler not in SAMPLERS:
        raise ConfigError(f"data.sampler={sampler!r} is unknown: use one of {list(SAMPLERS)}")
    size = list(patch_size)
    pad = SpatialPadd(keys, spatial_size=size)
    if sampler == "uniform":
        return [pad, RandSpatialCropSamplesd(keys, roi_size=size, num_samples=samples_per_image, random_size=False)]
    if pos_neg_ratio < 0:
        raise ConfigError(f"data.pos_neg_ratio={pos_neg_ratio} must be >= 0 (foreground patches per background patch)")
    # foreground/background voxel indices computed once (and cached with the preprocessed case): otherwise every
    # crop scans the whole label again, which dominates an iteration on megapixel images
    fg, bg = f"{keys[1]}_fg_indices", f"{keys[1]}_bg_indices"
    return [
        pad,
        FgBgToIndicesd(keys[1], fg_postfix="_fg_indices", bg_postfix="_bg_indices"),
        RandCropByPosNegLabeld(
            keys, label_key=keys[1], spatial_size=size, pos=pos_neg_ratio, neg=1.0, num_samples=samples_per_image,
            fg_indices_key=fg, bg_indices_key=bg,
        ),
        DeleteItemsd([fg, bg]),
    ]


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


def train_pipeline(
    loader: LoadCased,
    preprocessing: Mapping[str, Any] | None,
    recipe: AugmentationRecipe,
    spatial_dims: int,
    patch_size: Sequence[int] | None = None,
    samples_per_image: int = 1,
    pos_neg_ratio: float = 1.0,
    sampler: str = "posneg",
) -> Compose:
    """Load → preprocess (cached) → sample patches → augment → tensors."""
    keys = (loader.image_key, loader.label_key)
    return Compose(
        [loader, *preprocessing_transforms(preprocessing, keys)]
        + sampling_transforms(keys, patch_size, samples_per_image, pos_neg_ratio, sampler)
        + monai_augmentation(recipe, keys, spatial_dims)
        + output_transforms(keys)
    )


def eval_pipeline(
    loader: LoadCased, preprocessing: Mapping[str, Any] | None, fov_threshold: float | None = None
) -> Compose:
    """Whole images for validation and test: load → field of view → preprocess → tensors; no randomness."""
    keys = (loader.image_key, loader.label_key, *loader.mask_keys)
    fov = [ThresholdFOVd(loader.image_key, loader.mask_keys[0], fov_threshold)] if fov_threshold is not None else []
    return Compose([loader, *fov, *preprocessing_transforms(preprocessing, keys), *output_transforms(keys)])


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
