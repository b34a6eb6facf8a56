"""Test-time mirroring (nnU-Net's), shared by the tasks and the exported graphs: a prediction averaged with the
predictions of mirrored copies of the input. Torch only, so deployed models import it without Lightning."""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch


def mirror_dims(tta_flips: Sequence[Sequence[int]]) -> list[list[int]]:
    """A task's ``tta_flips`` (spatial axes, 0 = the first) as tensor dims of an (N, C, *spatial) batch."""
    return [[2 + axis for axis in axes] for axes in tta_flips]


def mirrored_mean(predict: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor,
                  flip_dims: Sequence[Sequence[int]], on_grid: bool = False,
                  first: torch.Tensor | None = None) -> torch.Tensor:
    """``predict(images)`` (or ``first``, where it was already computed) averaged with ``predict`` of each copy of
    ``images`` mirrored along ``flip_dims``; a prediction ``on_grid`` (a map on the image's pixels) is mirrored back
    before it is added, a per-image one (class probabilities) needs no mapping back."""
    total = predict(images) if first is None else first
    for dims in flip_dims:
        mirrored = predict(images.flip(dims))
        total = total + (mirrored.flip(dims) if on_grid else mirrored)
    return total / (1 + len(flip_dims))
