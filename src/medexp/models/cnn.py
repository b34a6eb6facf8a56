"""The classic small CNN of the MedMNIST tutorials (and the speed baseline): two conv blocks, three dense layers."""
from __future__ import annotations

import torch
from torch import nn


class ClassicCNN(nn.Module):
    """conv(32,3)-ReLU-pool, conv(64,3)-ReLU-pool, fc(120)-fc(84)-fc(classes); any input size >= 10 px.

    ``image_size`` sets the dense layer's input, so one network serves 28 px MedMNIST and 32 px synthetic data;
    ``spatial_dims=3`` makes the same layout of 3D convolutions for ``image_size``-cubed volumes.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 2, image_size: int = 28, spatial_dims: int = 2):
        super().__init__()
        conv, pool = (nn.Conv2d, nn.MaxPool2d) if spatial_dims == 2 else (nn.Conv3d, nn.MaxPool3d)
        self.features = nn.Sequential(
            conv(in_channels, 32, 3), nn.ReLU(), pool(2),
            conv(32, 64, 3), nn.ReLU(), pool(2),
            nn.Flatten(),
        )
        side = ((image_size - 2) // 2 - 2) // 2
        if side < 1:
            raise ValueError(f"ClassicCNN needs images of at least 10 px, got image_size={image_size}")
        self.classifier = nn.Sequential(
            nn.Linear(64 * side**spatial_dims, 120), nn.ReLU(),
            nn.Linear(120, 84), nn.ReLU(),
            nn.Linear(84, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))
