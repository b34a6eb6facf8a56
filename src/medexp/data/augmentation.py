"""One augmentation recipe, two engines.

The recipe (``conf/augmentation/*.yaml``) states what a methods section would: rotation, scaling, translation,
flips, intensity shift/contrast/gamma, Gaussian noise, elastic deformation, each with its probability.
In-memory datasets apply it batched on the device (``BatchAugmentation``); file-based segmentation does too by
default (``data.augment_on: device``), image and mask together, keeping only an elastic deformation per sample in
the loader, and so does detection, image and boxes together (``BoxBatchAugmentation``; quarter turns stay per case
in the loader, an elastic deformation is refused). ``data.augment_on: loader`` applies it per sample with MONAI
dictionary transforms (``medexp.data.transforms.monai_augmentation``; for detection MONAI's box transforms,
``medexp.data.detection.box_augmentation``).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any


@dataclass(frozen=True)
class AugmentationRecipe:
    # spatial (applied identically to image and mask; masks use nearest-neighbour sampling)
    rotate_deg: float = 0.0  # uniform in [-rotate_deg, +rotate_deg]; 3D: about each axis
    scale: Sequence[float] = (1.0, 1.0)  # isotropic zoom factor range
    translate: float = 0.0  # fraction of the image extent, uniform in [-translate, +translate] per axis
    affine_prob: float = 0.0  # probability that a sample gets the random affine above
    flip_axes: Sequence[int] = ()  # spatial axes (0 = rows, 1 = columns, 2 = depth) flipped at random
    flip_prob: float = 0.0  # per axis
    elastic_sigma: Sequence[float] = ()  # MONAI Rand2D/3DElastic spacing range; empty disables (per-sample only)
    elastic_magnitude: Sequence[float] = ()
    elastic_prob: float = 0.0
    # intensity (image only; in normalised units)
    intensity_shift: float = 0.0  # add uniform in [-shift, +shift]
    contrast: Sequence[float] = (1.0, 1.0)  # scale around the sample mean by a factor in this range
    gamma: Sequence[float] = (1.0, 1.0)  # MONAI RandAdjustContrast gamma range
    intensity_prob: float = 0.0
    noise_std: float = 0.0
    noise_prob: float = 0.0

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | None) -> AugmentationRecipe:
        """Build from a config mapping; unknown keys are an error so a typo never silently disables a transform."""
        if cfg is None:
            return cls()
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(cfg) - known)
        if unknown:
            from medexp.errors import ConfigError

            raise ConfigError(
                f"unknown augmentation option(s) {unknown}: valid options are {sorted(known)}"
            )
        return cls(**{k: tuple(v) if isinstance(v, Sequence) and not isinstance(v, str) else v for k, v in cfg.items()})

    @property
    def is_identity(self) -> bool:
        """True when no transform can fire: ``augmentation=none`` really is none."""
        return not any(
            (
                self.affine_prob > 0 and (self.rotate_deg or tuple(self.scale) != (1.0, 1.0) or self.translate),
                self.flip_prob > 0 and len(self.flip_axes) > 0,
                self.elastic_prob > 0 and len(self.elastic_sigma) > 0,
                self.intensity_prob > 0
                and (self.intensity_shift or tuple(self.contrast) != (1.0, 1.0) or tuple(self.gamma) != (1.0, 1.0)),
                self.noise_prob > 0 and self.noise_std > 0,
            )
        )

    @property
    def elastic_only(self) -> AugmentationRecipe:
        """The elastic deformation alone (per sample: the batched engine has none)."""
        return replace(self, affine_prob=0.0, flip_prob=0.0, intensity_prob=0.0, noise_prob=0.0)

    @property
    def without_elastic(self) -> AugmentationRecipe:
        """Everything but the elastic deformation (what the batched engine applies)."""
        return replace(self, elastic_prob=0.0)
