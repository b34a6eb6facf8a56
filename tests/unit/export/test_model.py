"""The deployed classifier standardises stored images exactly as the data module does, in 2D and 3D."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from medexp.data.inmemory import InMemoryClassificationDataModule
from medexp.export.model import DeployableClassifier


def test_deployed_standardisation_matches_the_data_module_per_channel_in_3d():
    dm = InMemoryClassificationDataModule(batch_size=2, num_classes=2, in_channels=2, spatial_dims=3, image_size=4)
    dm.mean, dm.std = [0.2, 0.7], [0.5, 0.1]
    stored = np.random.default_rng(0).integers(0, 256, (3, 2, 4, 5, 6)).astype(np.uint8)
    identity = nn.Flatten()
    deployed = DeployableClassifier(identity, dm.mean, dm.std, multi_label=True, spatial_dims=3)
    # sigmoid of the flattened standardised input: compare before the sigmoid
    seen = torch.logit(deployed(torch.from_numpy(stored).float()), eps=0).view(3, 2, 4, 5, 6)
    assert torch.allclose(seen, dm.standardise(stored), atol=1e-4)
