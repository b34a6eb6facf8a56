"""3D MedMNIST files: ``(N, D, H, W)`` volumes are one-channel volumes with ``spatial_dims=3``, not D-channel images."""
from __future__ import annotations

import numpy as np
import pytest

from medexp.data.medmnist import MedMNISTDataModule
from medexp.errors import DataError


def write_volumes(path, n: int = 6, side: int = 8):
    rng = np.random.default_rng(0)
    arrays = {}
    for split in ("train", "val", "test"):
        arrays[f"{split}_images"] = rng.integers(0, 256, (n, side, side, side), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(n) % 2).reshape(n, 1)
    np.savez(path, **arrays)
    return arrays


def module(root, spatial_dims):
    return MedMNISTDataModule(name="tinymnist3d", root=str(root), download=False, batch_size=2, num_classes=2,
                              in_channels=1, spatial_dims=spatial_dims, image_size=28)


def test_3d_volumes_become_one_channel_volumes(tmp_path):
    arrays = write_volumes(tmp_path / "tinymnist3d.npz")
    dm = module(tmp_path, spatial_dims=3)
    dm.setup()
    images, labels = dm.tensors["train"]
    assert images.shape == (6, 1, 8, 8, 8) and dm.image_shape == [1, 8, 8, 8]
    expected = (arrays["train_images"][:, None] / 255.0 - dm.mean[0]) / dm.std[0]
    assert np.allclose(images.numpy(), expected, atol=1e-5)
    (batch, _), *_ = list(dm.train_dataloader())
    assert batch.shape[1:] == (1, 8, 8, 8)


def test_a_3d_file_read_as_2d_says_which_setting_to_change(tmp_path):
    write_volumes(tmp_path / "tinymnist3d.npz")
    with pytest.raises(DataError, match=r"shape \(8, 8, 8\) \(C, H, W\); the config says in_channels=1, "
                                        r"spatial_dims=2: set data.in_channels and data.spatial_dims"):
        module(tmp_path, spatial_dims=2).setup()
