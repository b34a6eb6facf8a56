"""model=efficientnet_b0: MONAI's EfficientNet from the model group, 2D and 3D, built without downloading."""
from __future__ import annotations

import pytest
import torch

from medexp.factory import build_network


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_efficientnet_builds_in_2d_and_3d_from_the_config_without_downloading(make_cfg, monkeypatch, spatial_dims):
    def no_download(*args, **kwargs):
        raise AssertionError("the network tried to download weights")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    monkeypatch.setattr("monai.networks.nets.efficientnet.model_zoo.load_url", no_download, raising=False)
    cfg = make_cfg("model=efficientnet_b0", f"data.spatial_dims={spatial_dims}", "data.in_channels=2",
                   "data.num_classes=3")
    net = build_network(cfg)
    assert net._conv_stem.in_channels == 2 and net._conv_stem.weight.ndim == 2 + spatial_dims
    with torch.no_grad():
        assert net.eval()(torch.zeros(1, 2, *[32] * spatial_dims)).shape == (1, 3)
