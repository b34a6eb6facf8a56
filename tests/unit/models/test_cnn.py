"""The classic CNN in 2D and 3D from one config."""
from __future__ import annotations

import torch

from medexp.models.cnn import ClassicCNN


def test_classic_cnn_builds_in_2d_and_3d():
    flat = ClassicCNN(in_channels=3, num_classes=4, image_size=28)
    assert flat(torch.zeros(2, 3, 28, 28)).shape == (2, 4)
    volume = ClassicCNN(in_channels=1, num_classes=2, image_size=28, spatial_dims=3)
    assert volume(torch.zeros(2, 1, 28, 28, 28)).shape == (2, 2)
    assert any(isinstance(m, torch.nn.Conv3d) for m in volume.modules())
