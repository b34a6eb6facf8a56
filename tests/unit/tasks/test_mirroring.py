"""Test-time mirroring's arithmetic: the axes it mirrors and the mean it takes, per image or on the image's grid."""
from __future__ import annotations

import torch

from medexp.tasks.mirroring import mirror_dims, mirrored_mean


def test_mirror_dims_skip_the_batch_and_channel_axes():
    assert mirror_dims([[0], [1, 2]]) == [[2], [3, 4]] and mirror_dims([]) == []


def shifted(x: torch.Tensor) -> torch.Tensor:
    """A map that depends on which column comes first: mirroring changes it."""
    return x + x[..., :1]


def test_a_map_is_mirrored_back_before_averaging_and_a_per_image_prediction_is_not():
    images = torch.arange(12.0).view(1, 1, 3, 4)
    on_grid = mirrored_mean(shifted, images, [[3]], on_grid=True)
    torch.testing.assert_close(on_grid, (shifted(images) + shifted(images.flip(3)).flip(3)) / 2)
    per_image = mirrored_mean(lambda x: x.flatten(1)[:, :2], images, [[3]])
    torch.testing.assert_close(per_image, torch.tensor([[(0.0 + 3.0) / 2, (1.0 + 2.0) / 2]]))
    torch.testing.assert_close(mirrored_mean(shifted, images, [], first=torch.ones(1)), torch.ones(1))
