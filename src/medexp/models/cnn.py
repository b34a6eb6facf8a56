"""The classic small CNN of the MedMNIST tutorials (and the speed baseline): two conv blocks, three dense layers."""
from __future__ import annotations

import torch
from torch import nn


class ClassicCNN(nn.Module):
    """conv(32,3)-ReLU-pool, conv(64,3)-ReLU-pool, fc(120)-fc(84)-fc(classes); any input size >= 10 px.

    ``image_size`` sets the dense layer's input, so one network serves 28 px MedMNIST and 32 px synthetic data.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 2, image_size: int = 28):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 32, 3), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(),
        )
        side = ((image_size - 2) // 2 - 2) // 2
        if side < 1:
            raise ValueError(f"ClassicCNN needs images of at least 10 px, got image_size={image_size}")
        self.classifier = nn.Sequential(
            nn.Linear(64 * side * side, 120), nn.ReLU(),
            nn.Linear(120, 84), nn.ReLU(),
            nn.Linear(84, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))
