"""model=resnet18 is torchvision's ResNet-18 (what papers report), adapted to the data's channels; the lighter
half-width variant is named for what it is (model=resnet18_small)."""
from __future__ import annotations

import pytest
import torch
import torchvision

from medexp.errors import ConfigError, unwrapped_user_errors
from medexp.factory import build_network


def parameters(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def test_resnet18_is_torchvision_s_with_one_input_channel(make_cfg):
    net = build_network(make_cfg("data=pneumoniamnist", "model=resnet18"))
    reference = torchvision.models.resnet18(weights=None, num_classes=2)
    assert parameters(net) == parameters(reference) - 2 * 64 * 7 * 7  # the first convolution reads 1 channel, not 3
    assert [name for name, _ in net.named_children()] == [name for name, _ in reference.named_children()]
    assert net(torch.zeros(2, 1, 28, 28)).shape == (2, 2)
    small = build_network(make_cfg("data=pneumoniamnist", "model=resnet18", "model.small_input=true"))
    assert small.conv1.stride == (1, 1) and isinstance(small.maxpool, torch.nn.Identity)


def test_the_half_width_variant_is_resnet18_small(make_cfg):
    small = build_network(make_cfg("model=resnet18_small"))
    assert parameters(small) < parameters(build_network(make_cfg("model=resnet18"))) / 3


def test_torchvision_s_resnet18_is_2d_only(make_cfg):
    with pytest.raises(ConfigError, match="model=resnet18 .* is 2D but data.spatial_dims=3"), unwrapped_user_errors():
        build_network(make_cfg("model=resnet18", "data.spatial_dims=3"))
