"""MONAI's EfficientNet, 2D or 3D, built without its ImageNet download."""
from __future__ import annotations

from torch import nn


def build_efficientnet(variant: str = "efficientnet-b0", spatial_dims: int = 2, in_channels: int = 1,
                       num_classes: int = 2) -> nn.Module:
    """``monai.networks.nets.EfficientNetBN`` (``variant`` ``efficientnet-b0`` … ``-b7``) with random weights: its
    own ``pretrained`` (on by default) would download ImageNet weights at build time; ``model.pretrained=`` gives
    a local weights file instead."""
    from monai.networks.nets import EfficientNetBN

    return EfficientNetBN(variant, pretrained=False, progress=False, spatial_dims=spatial_dims,
                          in_channels=in_channels, num_classes=num_classes)
