"""torchvision's ResNet-18, the one papers report, adapted to medical images' channel counts."""
from __future__ import annotations

from torch import nn

from medexp.errors import ConfigError


def build_resnet18(in_channels: int = 3, num_classes: int = 2, spatial_dims: int = 2,
                         small_input: bool = False) -> nn.Module:
    """``torchvision.models.resnet18`` (random weights) with ``in_channels`` inputs and ``num_classes`` outputs;
    ``small_input``: a 3x3 stride-1 first convolution and no max-pool (for 28-32 px images)."""
    from torchvision.models import resnet18

    if spatial_dims != 2:
        raise ConfigError(f"model=resnet18 (torchvision's) is 2D but data.spatial_dims={spatial_dims}: use "
                          "model=resnet18_small or resnet10 (MONAI's, 2D or 3D)")
    net = resnet18(weights=None, num_classes=num_classes)
    if small_input:
        net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
    elif in_channels != 3:
        net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    return net
