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


def _rotation(angles: torch.Tensor) -> torch.Tensor:
    """Rotation matrices ``(n, d, d)`` from angles in radians: ``(n,)`` in 2D, ``(n, 3)`` about each axis in 3D."""
    if angles.ndim == 1:
        cos, sin = torch.cos(angles), torch.sin(angles)
        return torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)
    out = torch.eye(3, device=angles.device).expand(len(angles), 3, 3)
    for axis in range(3):  # rotate in the plane of the two other axes, one after the other
        i, j = [a for a in range(3) if a != axis]
        cos, sin = torch.cos(angles[:, axis]), torch.sin(angles[:, axis])
        step = torch.eye(3, device=angles.device).repeat(len(angles), 1, 1)
        step[:, i, i], step[:, i, j], step[:, j, i], step[:, j, j] = cos, -sin, sin, cos
        out = step @ out
    return out


class BatchAugmentation(nn.Module):
    """Apply a recipe to a batch ``(B, C, H, W)`` or, in 3D, ``(B, C, D, H, W)``, and identically to its masks
    ``(B, 1, *spatial)`` if given. In 3D the rotation turns about each axis by its own angle."""

    def __init__(self, recipe: AugmentationRecipe):
        super().__init__()
        self.recipe = recipe

    def forward(self, images: torch.Tensor, masks: torch.Tensor | None = None):
        if images.ndim not in (4, 5):
            raise ValueError(f"BatchAugmentation takes 2D or 3D batches (B, C, *spatial), got shape "
                             f"{tuple(images.shape)}")
        r = self.recipe
        theta = self._random_affine(images.shape[0], images.ndim - 2, images.device)
        if theta is not None:
            grid = F.affine_grid(theta.to(images.dtype), list(images.shape), align_corners=False)
            images = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
            if masks is not None:
                masks = F.grid_sample(masks.to(grid.dtype), grid, mode="nearest", padding_mode="zeros",
                                      align_corners=False).to(masks.dtype)
        if r.intensity_prob > 0:
            images = self._random_intensity(images)
        if r.noise_prob > 0 and r.noise_std > 0:
            hit = _chance(images.shape[0], r.noise_prob, images.device).view(_per_sample(images))
            images = images + hit * torch.randn_like(images) * r.noise_std
        return images if masks is None else (images, masks)

    def _random_affine(self, n: int, dims: int, device) -> torch.Tensor | None:
        """Per-sample ``dims x (dims + 1)`` matrices (output -> input; affine_grid's coordinate 0 is the last
        spatial axis, columns), or None if all are the identity."""
        r = self.recipe
        use_affine = r.affine_prob > 0 and (r.rotate_deg or tuple(r.scale) != (1.0, 1.0) or r.translate)
        use_flip = r.flip_prob > 0 and len(r.flip_axes) > 0
        if not (use_affine or use_flip):
            return None
        theta = torch.zeros(n, dims, dims + 1, device=device)
        theta[:, :, :dims] = torch.eye(dims, device=device)
        if use_affine:
            hit = _chance(n, r.affine_prob, device)
            angles = _uniform(n if dims == 2 else 3 * n, -r.rotate_deg, r.rotate_deg, device) * (math.pi / 180)
            angles = angles * hit if dims == 2 else angles.view(n, 3) * hit[:, None]
            zoom = torch.where(hit, _uniform(n, r.scale[0], r.scale[1], device), torch.ones(n, device=device))
            # theta maps output to input coordinates: content zoomed by f means coordinates scaled by 1/f
            theta[:, :, :dims] = _rotation(angles) / zoom[:, None, None]
            # affine_grid spans [-1, 1]: a shift by a fraction f of the extent is 2f
            theta[:, :, dims] = _uniform(dims * n, -2 * r.translate, 2 * r.translate, device).view(n, dims) * hit[:, None]
        if use_flip:
            for axis in r.flip_axes:  # spatial axis a (0 = first after channels) is affine_grid's dims - 1 - a
                if axis >= dims:
                    continue  # a depth flip (axis 2) means nothing to a 2D image
                flip = 1.0 - 2.0 * _chance(n, r.flip_prob, device).to(theta.dtype)
                theta[:, :, dims - 1 - axis] *= flip[:, None]
        return theta

    def _random_intensity(self, images: torch.Tensor) -> torch.Tensor:
        """Shift, contrast around the mean, gamma: each applied to a sample with ``intensity_prob``."""
        r = self.recipe
        n, device = images.shape[0], images.device
        shape, reduce = _per_sample(images), tuple(range(1, images.ndim))

        def where_hit(changed: torch.Tensor, unchanged: torch.Tensor) -> torch.Tensor:
            return torch.where(_chance(n, r.intensity_prob, device).view(shape), changed, unchanged)

        out = images
        if r.intensity_shift:
            shift = _uniform(n, -r.intensity_shift, r.intensity_shift, device).view(shape)
            out = where_hit(out + shift, out)
        if tuple(r.contrast) != (1.0, 1.0):
            mean = out.mean(dim=reduce, keepdim=True)
            factor = _uniform(n, r.contrast[0], r.contrast[1], device).view(shape)
            out = where_hit((out - mean) * factor + mean, out)
        if tuple(r.gamma) != (1.0, 1.0):
            # as MONAI's RandAdjustContrast: rescale to [0, 1], raise to gamma, rescale back
            low = out.amin(dim=reduce, keepdim=True)
            span = (out.amax(dim=reduce, keepdim=True) - low).clamp_min(1e-7)
            gamma = _uniform(n, r.gamma[0], r.gamma[1], device).view(shape)
            out = where_hit(((out - low) / span).clamp(0, 1).pow(gamma) * span + low, out)
        return out


def _per_sample(images: torch.Tensor) -> tuple[int, ...]:
    """The shape that broadcasts one value per sample over a batch."""
    return (-1,) + (1,) * (images.ndim - 1)
