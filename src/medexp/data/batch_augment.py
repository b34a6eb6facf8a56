"""The batched engine of an ``AugmentationRecipe``: per-sample random parameters from one random draw per batch,
one kernel call per step for the whole batch.

For data that sits in memory (MedMNIST-size sets), for file-based segmentation patches (2D and 3D, masks following
the image) and for detection images (``BoxBatchAugmentation``, boxes following the image), augmenting the whole
batch on its device after transfer is far cheaper than per-sample Python transforms in worker processes, and it
runs on the GPU when there is one.
Semantics follow the per-sample MONAI engine (``medexp.data.transforms``) so one recipe means the same thing on both
(``tests/unit/data/test_augmentation.py`` compares them): a zoom factor above 1 enlarges the content, translations are
fractions of the image extent, the intensity steps (shift, contrast, gamma) fire independently in that order, all
on the normalised image. Elastic deformation is per-sample only.
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from medexp.data.augmentation import AugmentationRecipe

# Every random number a batch needs comes from one draw, ``torch.rand(B, DRAWS)``: one kernel per batch, not one per
# parameter. Columns: affine hit, 3 angles (2D uses the first), zoom, 3 shifts, a flip per spatial axis, then a hit
# and a value for each intensity step (shift, contrast, gamma), and the noise hit.
AFFINE_HIT, ANGLES, ZOOM, SHIFTS, FLIPS = 0, 1, 4, 5, 8
INTENSITY_SHIFT, CONTRAST, GAMMA, NOISE_HIT = 11, 13, 15, 17
DRAWS = 18


def _scaled(column: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """Uniform draws in [0, 1) mapped onto [low, high)."""
    return column * (high - low) + low


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
        draws = torch.rand(images.shape[0], DRAWS, device=images.device)
        images, masks, _ = self.apply(images, draws, masks)
        return images if masks is None else (images, masks)

    def apply(self, images: torch.Tensor, draws: torch.Tensor, masks: torch.Tensor | None = None,
              ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """The recipe with the given random numbers (a ``(B, DRAWS)`` row per sample): the augmented images, masks,
        and the output -> input affine that moved them (``affine_grid``'s theta; None when there is none)."""
        if images.ndim not in (4, 5):
            raise ValueError(f"BatchAugmentation takes 2D or 3D batches (B, C, *spatial), got shape "
                             f"{tuple(images.shape)}")
        r = self.recipe
        theta = self._random_affine(draws, images.shape[2:])
        if theta is not None:
            grid = F.affine_grid(theta.to(images.dtype), list(images.shape), align_corners=False)
            images = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
            if masks is not None:
                masks = F.grid_sample(masks.to(grid.dtype), grid, mode="nearest", padding_mode="zeros",
                                      align_corners=False).to(masks.dtype)
        if r.intensity_prob > 0:
            images = self._random_intensity(images, draws)
        if r.noise_prob > 0 and r.noise_std > 0:
            hit = (draws[:, NOISE_HIT] < r.noise_prob).view(_per_sample(images))
            images = images + hit * torch.randn_like(images) * r.noise_std
        return images, masks, theta

    def _random_affine(self, draws: torch.Tensor, spatial_shape: Sequence[int]) -> torch.Tensor | None:
        """Per-sample ``dims x (dims + 1)`` matrices (output -> input; affine_grid's coordinate 0 is the last
        spatial axis, columns), or None if all are the identity. Rotations turn pixels (as MONAI's do), not
        affine_grid's [-1, 1] box, which on a non-square image would shear them."""
        r, dims = self.recipe, len(spatial_shape)
        use_affine = r.affine_prob > 0 and (r.rotate_deg or tuple(r.scale) != (1.0, 1.0) or r.translate)
        use_flip = r.flip_prob > 0 and len(r.flip_axes) > 0
        if not (use_affine or use_flip):
            return None
        n, device = draws.shape[0], draws.device
        theta = torch.zeros(n, dims, dims + 1, device=device)
        theta[:, :, :dims] = torch.eye(dims, device=device)
        if use_affine:
            hit = draws[:, AFFINE_HIT] < r.affine_prob
            angles = _scaled(draws[:, ANGLES : ANGLES + (1 if dims == 2 else 3)], -r.rotate_deg, r.rotate_deg)
            angles = angles * (math.pi / 180) * hit[:, None]
            zoom = torch.where(hit, _scaled(draws[:, ZOOM], r.scale[0], r.scale[1]), 1.0)
            # theta maps output to input coordinates: content zoomed by f means coordinates scaled by 1/f
            rotation = _rotation(angles[:, 0] if dims == 2 else angles)
            # in [-1, 1] coordinates: a pixel rotation R reads R_ij * extent_j / extent_i (extents in grid order)
            extents = torch.tensor(spatial_shape[::-1], dtype=rotation.dtype, device=device)
            theta[:, :, :dims] = rotation * (extents[None, :] / extents[:, None]) / zoom[:, None, None]
            # affine_grid spans [-1, 1]: a shift by a fraction f of the extent is 2f
            theta[:, :, dims] = _scaled(draws[:, SHIFTS : SHIFTS + dims], -2 * r.translate, 2 * r.translate) * hit[:, None]
        if use_flip:
            for axis in r.flip_axes:  # spatial axis a (0 = first after channels) is affine_grid's dims - 1 - a
                if axis >= dims:
                    continue  # a depth flip (axis 2) means nothing to a 2D image
                flip = 1.0 - 2.0 * (draws[:, FLIPS + axis] < r.flip_prob).to(theta.dtype)
                theta[:, :, dims - 1 - axis] *= flip[:, None]
        return theta

    def _random_intensity(self, images: torch.Tensor, draws: torch.Tensor) -> torch.Tensor:
        """Shift, contrast around the mean, gamma: each applied to a sample with ``intensity_prob``."""
        r = self.recipe
        shape, reduce = _per_sample(images), tuple(range(1, images.ndim))

        def where_hit(column: int, changed: torch.Tensor, unchanged: torch.Tensor) -> torch.Tensor:
            return torch.where((draws[:, column] < r.intensity_prob).view(shape), changed, unchanged)

        def value(column: int, low: float, high: float) -> torch.Tensor:
            return _scaled(draws[:, column + 1], low, high).view(shape)

        out = images
        if r.intensity_shift:
            out = where_hit(INTENSITY_SHIFT, out + value(INTENSITY_SHIFT, -r.intensity_shift, r.intensity_shift), out)
        if tuple(r.contrast) != (1.0, 1.0):
            mean = out.mean(dim=reduce, keepdim=True)
            out = where_hit(CONTRAST, (out - mean) * value(CONTRAST, *r.contrast) + mean, out)
        if tuple(r.gamma) != (1.0, 1.0):
            # as MONAI's RandAdjustContrast: rescale to [0, 1], raise to gamma, rescale back
            low = out.amin(dim=reduce, keepdim=True)
            span = (out.amax(dim=reduce, keepdim=True) - low).clamp_min(1e-7)
            out = where_hit(GAMMA, ((out - low) / span).clamp(0, 1).pow(value(GAMMA, *r.gamma)) * span + low, out)
        return out


def _per_sample(images: torch.Tensor) -> tuple[int, ...]:
    """The shape that broadcasts one value per sample over a batch."""
    return (-1,) + (1,) * (images.ndim - 1)


# A box keeps its object only while this fraction of its (moved) area or volume stays inside the image: less shows
# too little of the object to train on as one (MONAI's clip in the loader keeps any sliver of positive size; a
# sliver at the border matches anchors as a whole object would), and a box pushed wholly out keeps nothing.
MIN_VISIBLE_FRACTION = 0.25


class BoxBatchAugmentation(BatchAugmentation):
    """The recipe on a detection training batch, boxes following their image: lists of images ``(C, *spatial)``, of
    their boxes ``(N_i, 2 * dims)`` (MONAI's standard mode, corners on the image's array axes: x = first spatial
    axis) and of their labels ``(N_i,)``, as ``medexp.data.detection.collate_cases`` gives them.

    One random draw for the whole batch; images of one shape are augmented as one batch (quarter turns of
    non-square images, done per case in the loader, and whole images of different sizes give several shapes).
    Each box goes through the affine that moved its image (``boxes_through_affine``): flips map it exactly, zoom
    and shift as the pixels move, a rotation to the bounding box of its turned corners, larger than the object
    (as for any axis-aligned box); boxes left mostly outside the image are dropped with their labels
    (``MIN_VISIBLE_FRACTION``). Intensity steps and noise touch the images only; the recipe's elastic deformation
    is not applied (detection refuses it: no box follows it)."""

    def forward(self, images: Sequence[torch.Tensor], boxes: Sequence[torch.Tensor], labels: Sequence[torch.Tensor],
                ) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
        draws = torch.rand(len(images), DRAWS, device=images[0].device)
        images, boxes, labels = list(images), list(boxes), list(labels)
        shapes: dict[tuple[int, ...], list[int]] = {}
        for index, image in enumerate(images):
            shapes.setdefault(tuple(image.shape), []).append(index)
        for shape, members in shapes.items():
            augmented, _, theta = self.apply(torch.stack([images[i] for i in members]), draws[members])
            to_output = None if theta is None else inverted(theta)
            for row, index in enumerate(members):
                images[index] = augmented[row]
                if to_output is not None:
                    moved, keep = boxes_through_affine(boxes[index], to_output[row], shape[1:])
                    boxes[index], labels[index] = moved[keep], labels[index][keep]
        return images, boxes, labels


def inverted(theta: torch.Tensor) -> torch.Tensor:
    """Affines ``(n, d, d + 1)`` (``x -> A x + t``) inverted: the output -> input maps ``affine_grid`` samples with,
    as the input -> output maps that carry a point of the input image to where the output shows it."""
    matrix = torch.linalg.inv(theta[..., :-1])
    return torch.cat([matrix, -(matrix @ theta[..., -1:])], dim=-1)


def boxes_through_affine(boxes: torch.Tensor, to_output: torch.Tensor, spatial_shape: Sequence[int],
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """Standard-mode boxes ``(N, 2 * dims)`` of an image of ``spatial_shape`` moved by ``to_output`` (``(dims,
    dims + 1)``, input -> output in ``affine_grid``'s coordinates): the bounding box of the moved corners, clipped
    to the image, and which boxes to keep (``MIN_VISIBLE_FRACTION``). Computed in float64, so that a flip gives
    ``S - high, S - low`` exactly in the boxes' own precision."""
    dims, device = len(spatial_shape), boxes.device
    size = torch.tensor(spatial_shape, dtype=torch.float64, device=device)
    # the 2^dims corners (N, 2^dims, dims): on each axis the low (column a) or the high (column a + dims) side
    sides = torch.tensor(list(itertools.product((0, 1), repeat=dims)), device=device)
    corners = boxes.double()[:, sides * dims + torch.arange(dims, device=device)]
    # to affine_grid's coordinates: [-1, 1] from the first pixel's outer edge to the last's (align_corners=False,
    # as box corners lie on pixel edges), and its coordinate 0 is the last spatial axis
    normalised = (2 * corners / size - 1).flip(-1)
    to_output = to_output.double()
    moved = normalised @ to_output[:, :dims].T + to_output[:, dims]
    pixels = (moved.flip(-1) + 1) * size / 2
    low, high = pixels.amin(dim=1), pixels.amax(dim=1)
    inside_low, inside_high = torch.maximum(low, torch.zeros_like(size)), torch.minimum(high, size)
    visible = (inside_high - inside_low).clamp_min(0).prod(dim=1)
    keep = (visible > 0) & (visible >= MIN_VISIBLE_FRACTION * (high - low).prod(dim=1))
    return torch.cat([inside_low, inside_high], dim=1).to(boxes.dtype), keep
