"""MedMNIST files: the real file, and clear one-line errors for missing, undownloadable, wrong or corrupt files.

3D MedMNIST files: ``(N, D, H, W)`` volumes are one-channel volumes with ``spatial_dims=3``, not D-channel images.

A failed download into a mistyped data.root leaves no folder behind, and says what to do in one line."""
from __future__ import annotations

import urllib.error
import urllib.request

import numpy as np
import pytest
import torch

from medexp.data.medmnist import MedMNISTDataModule, download, load_medmnist
from medexp.errors import DataError

COMMON = dict(batch_size=32, num_classes=2, in_channels=1, spatial_dims=2)


def test_medmnist_real_file(pneumonia_npz):
    arrays = load_medmnist(pneumonia_npz)
    assert arrays["train_images"].shape == (4708, 1, 28, 28)
    assert np.bincount(arrays["test_labels"]).tolist() == [234, 390]
    dm = MedMNISTDataModule(name="pneumoniamnist", root=str(pneumonia_npz.parent), download=False,
                            image_size=28, **COMMON)
    dm.setup("fit")
    assert dm.fingerprint()["sizes"] == {"train": 4708, "val": 524, "test": 624}


def test_missing_file_names_the_path_and_the_fix(tmp_path):
    dm = MedMNISTDataModule(name="pneumoniamnist", root=str(tmp_path / "nope"), download=False, image_size=28,
                            **COMMON)
    with pytest.raises(DataError, match=str(tmp_path / "nope")) as err:
        dm.setup("fit")
    assert "data.root" in str(err.value) and "\n" not in str(err.value)


def test_failed_download_is_one_clear_line(tmp_path, monkeypatch):
    import medexp.data.medmnist as medmnist

    def offline(url, target, timeout=20.0):
        raise OSError("network is unreachable")

    monkeypatch.setattr(medmnist, "download", offline)
    dm = MedMNISTDataModule(name="pneumoniamnist", root=str(tmp_path), download=True, image_size=28, **COMMON)
    with pytest.raises(DataError, match="downloading it failed .*network is unreachable"):
        dm.setup("fit")


def test_wrong_keys_are_named(tmp_path):
    np.savez(tmp_path / "pneumoniamnist.npz", x=np.zeros(3))
    with pytest.raises(DataError, match="lacks train_images"):
        load_medmnist(tmp_path / "pneumoniamnist.npz")


def test_corrupt_file_is_named(tmp_path):
    (tmp_path / "pneumoniamnist.npz").write_bytes(b"not a zip at all")
    with pytest.raises(DataError, match="cannot read .*pneumoniamnist.npz"):
        load_medmnist(tmp_path / "pneumoniamnist.npz")


def test_labels_out_of_range_are_rejected(tmp_path):
    arrays = {f"{s}_{k}": (np.zeros((4, 28, 28), np.uint8) if k == "images" else np.array([[0], [1], [2], [1]]))
              for s in ("train", "val", "test") for k in ("images", "labels")}
    np.savez(tmp_path / "pneumoniamnist.npz", **arrays)
    dm = MedMNISTDataModule(name="pneumoniamnist", root=str(tmp_path), download=False, image_size=28, **COMMON)
    with pytest.raises(DataError, match="outside 0..1: set data.num_classes"):
        dm.setup("fit")


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
    assert images.shape == (6, 1, 8, 8, 8) and dm.image_shape == [1, 8, 8, 8] and images.dtype == torch.uint8
    images = dm.standardise(images)
    expected = (arrays["train_images"][:, None] / 255.0 - dm.mean[0]) / dm.std[0]
    assert np.allclose(images.numpy(), expected, atol=1e-5)
    (batch, _), *_ = list(dm.train_dataloader())
    assert batch.shape[1:] == (1, 8, 8, 8)


def test_a_3d_file_read_as_2d_says_which_setting_to_change(tmp_path):
    write_volumes(tmp_path / "tinymnist3d.npz")
    with pytest.raises(DataError, match=r"shape \(8, 8, 8\) \(C, H, W\); the config says in_channels=1, "
                                        r"spatial_dims=2: set data.in_channels and data.spatial_dims"):
        module(tmp_path, spatial_dims=2).setup()


def refuse(*args, **kwargs):
    raise urllib.error.URLError("no network")


def test_a_failed_download_removes_the_folders_it_made(tmp_path, monkeypatch):
    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    with pytest.raises(urllib.error.URLError):
        download("https://example.org/x.npz", tmp_path / "typo" / "deeper" / "x.npz")
    assert list(tmp_path.iterdir()) == []


def test_a_failed_download_keeps_a_folder_that_was_there(tmp_path, monkeypatch):
    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    (tmp_path / "data").mkdir()
    with pytest.raises(urllib.error.URLError):
        download("https://example.org/x.npz", tmp_path / "data" / "x.npz")
    assert [p.name for p in tmp_path.iterdir()] == ["data"] and list((tmp_path / "data").iterdir()) == []


def test_a_mistyped_root_is_one_line_and_no_empty_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    data = MedMNISTDataModule("pneumoniamnist", str(tmp_path / "medmnsit"), batch_size=8, num_classes=2,
                              in_channels=1, spatial_dims=2, image_size=28)
    with pytest.raises(DataError, match="not found and downloading it failed .* or set data.root to its folder"):
        data.setup()
    assert not (tmp_path / "medmnsit").exists()


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_medmnist_plus_sizes_read_their_own_file(tmp_path, spatial_dims):
    """MedMNIST+ (``data.image_size=64``, 128, 224 in 2D; 64 in 3D) lives in ``<name>_<size>.npz`` beside the 28 px
    file; the size picks the file, in 2D and 3D."""
    rng = np.random.default_rng(0)
    for size in (28, 64):
        arrays = {}
        for split in ("train", "val", "test"):
            arrays[f"{split}_images"] = rng.integers(0, 256, (2, *[size] * spatial_dims), dtype=np.uint8)
            arrays[f"{split}_labels"] = np.array([[0], [1]])
        np.savez(tmp_path / ("tinymnist.npz" if size == 28 else f"tinymnist_{size}.npz"), **arrays)
    dm = MedMNISTDataModule(name="tinymnist", root=str(tmp_path), download=False, batch_size=2, num_classes=2,
                            in_channels=1, spatial_dims=spatial_dims, image_size=64)
    dm.setup()
    assert dm.path.name == "tinymnist_64.npz" and dm.image_shape == [1, *[64] * spatial_dims]
