"""The batched engine of an ``AugmentationRecipe``: per-sample random parameters, one kernel call per batch.

For data that sits in memory (MedMNIST-size sets), augmenting the whole batch on its device after transfer is far
cheaper than per-sample Python transforms in worker processes, and it runs on the GPU when there is one.
Semantics follow the per-sample MONAI engine (``medexp.data.transforms``) so one recipe means the same thing on both
(``tests/unit/data/test_augmentation.py`` compares them): a zoom factor above 1 enlarges the content, translations are
fractions of the image extent, the intensity steps (shift, contrast, gamma) fire independently in that order, all
on the normalised image. Elastic deformation is per-sample only.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from medexp.data.augmentation import AugmentationRecipe


def _uniform(n: int, low: float, high: float, device) -> torch.Tensor:
    return torch.rand(n, device=device) * (high - low) + low


def _chance(n: int, p: float, device) -> torch.Tensor:
    return torch.rand(n, device=device) < p


class BatchAugmentation(nn.Module):
    """Apply a 2D recipe to a batch ``(B, C, H, W)``, and identically to its masks ``(B, 1, H, W)`` if given."""

    def __init__(self, recipe: AugmentationRecipe):
        super().__init__()
        self.recipe = recipe

    def forward(self, images: torch.Tensor, masks: torch.Tensor | None = None):
        if images.ndim != 4:
            raise ValueError(f"BatchAugmentation takes 2D batches (B, C, H, W), got shape {tuple(images.shape)}")
        r = self.recipe
        theta = self._random_affine(images.shape[0], images.device)
        if theta is not None:
            grid = F.affine_grid(theta.to(images.dtype), list(images.shape), align_corners=False)
            images = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
            if masks is not None:
                masks = F.grid_sample(masks.to(grid.dtype), grid, mode="nearest", padding_mode="zeros",
                                      align_corners=False).to(masks.dtype)
        if r.intensity_prob > 0:
            images = self._random_intensity(images)
        if r.noise_prob > 0 and r.noise_std > 0:
            hit = _chance(images.shape[0], r.noise_prob, images.device).view(-1, 1, 1, 1)
            images = images + hit * torch.randn_like(images) * r.noise_std
        return images if masks is None else (images, masks)

    def _random_affine(self, n: int, device) -> torch.Tensor | None:
        """Per-sample 2x3 matrices (output -> input, affine_grid's x = columns, y = rows), or None if all identity."""
        r = self.recipe
        use_affine = r.affine_prob > 0 and (r.rotate_deg or tuple(r.scale) != (1.0, 1.0) or r.translate)
        use_flip = r.flip_prob > 0 and len(r.flip_axes) > 0
        if not (use_affine or use_flip):
            return None
        theta = torch.zeros(n, 2, 3, device=device)
        theta[:, 0, 0] = theta[:, 1, 1] = 1.0
        if use_affine:
            hit = _chance(n, r.affine_prob, device)
            angle = _uniform(n, -r.rotate_deg, r.rotate_deg, device) * (math.pi / 180) * hit
            zoom = torch.where(hit, _uniform(n, r.scale[0], r.scale[1], device), torch.ones(n, device=device))
            # theta maps output to input coordinates: content zoomed by f means coordinates scaled by 1/f
            cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
            theta[:, 0, 0], theta[:, 0, 1], theta[:, 1, 0], theta[:, 1, 1] = cos, -sin, sin, cos
            # affine_grid spans [-1, 1]: a shift by a fraction f of the extent is 2f
            theta[:, :, 2] = _uniform(2 * n, -2 * r.translate, 2 * r.translate, device).view(n, 2) * hit[:, None]
        if use_flip:
            for axis in r.flip_axes:  # spatial axis 0 = rows = affine_grid's y (matrix column 1), 1 = columns = x
                flip = 1.0 - 2.0 * _chance(n, r.flip_prob, device).to(theta.dtype)
                theta[:, :, 1 - axis] *= flip[:, None]
        return theta

    def _random_intensity(self, images: torch.Tensor) -> torch.Tensor:
        """Shift, contrast around the mean, gamma: each applied to a sample with ``intensity_prob``."""
        r = self.recipe
        n, device = images.shape[0], images.device

        def where_hit(changed: torch.Tensor, unchanged: torch.Tensor) -> torch.Tensor:
            return torch.where(_chance(n, r.intensity_prob, device).view(-1, 1, 1, 1), changed, unchanged)

        out = images
        if r.intensity_shift:
            shift = _uniform(n, -r.intensity_shift, r.intensity_shift, device).view(-1, 1, 1, 1)
            out = where_hit(out + shift, out)
        if tuple(r.contrast) != (1.0, 1.0):
            mean = out.mean(dim=(1, 2, 3), keepdim=True)
            factor = _uniform(n, r.contrast[0], r.contrast[1], device).view(-1, 1, 1, 1)
            out = where_hit((out - mean) * factor + mean, out)
        if tuple(r.gamma) != (1.0, 1.0):
            # as MONAI's RandAdjustContrast: rescale to [0, 1], raise to gamma, rescale back
            low = out.amin(dim=(1, 2, 3), keepdim=True)
            span = (out.amax(dim=(1, 2, 3), keepdim=True) - low).clamp_min(1e-7)
            gamma = _uniform(n, r.gamma[0], r.gamma[1], device).view(-1, 1, 1, 1)
            out = where_hit(((out - low) / span).clamp(0, 1).pow(gamma) * span + low, out)
        return out
