"""In-memory classification data: synthetic set, MedMNIST files, batching and DDP sharding, clear errors."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from medexp.data.inmemory import IndexBatches
from medexp.data.medmnist import MedMNISTDataModule, load_medmnist
from medexp.data.synthetic import SyntheticLesionDataModule, make_lesions
from medexp.errors import DataError

COMMON = dict(batch_size=32, num_classes=2, in_channels=1, spatial_dims=2)


def test_synthetic_lesions_are_deterministic_and_balanced():
    a, ya = make_lesions(200, 32, seed=3)
    b, yb = make_lesions(200, 32, seed=3)
    c, _ = make_lesions(200, 32, seed=4)
    assert a.shape == (200, 1, 32, 32) and a.dtype == np.uint8
    assert np.array_equal(a, b) and np.array_equal(ya, yb)
    assert not np.array_equal(a, c)
    assert ya.sum() == 100


def test_synthetic_classes_are_not_separable_by_brightness():
    """Contrast and size are independent of the class, so a mean-intensity threshold is near chance."""
    x, y = make_lesions(2000, 32, seed=0)
    brightness = x.reshape(len(x), -1).mean(1)
    best = max(((brightness > t) == y).mean() for t in np.quantile(brightness, np.linspace(0.05, 0.95, 19)))
    best = max(best, 1 - best)
    assert best < 0.65


def test_datamodule_standardises_with_training_statistics():
    dm = SyntheticLesionDataModule(num_train=256, num_val=64, num_test=64, image_size=32, **COMMON)
    dm.setup("fit")
    x, y = dm.tensors["train"]
    assert abs(float(x.mean())) < 1e-4 and abs(float(x.std()) - 1) < 1e-2
    assert dm.fingerprint()["sizes"] == {"train": 256, "val": 64, "test": 64}
    assert dm.class_counts("train") == [128, 128]


def test_index_batches_cover_eval_once_and_train_in_equal_shares():
    images, labels = torch.arange(103).float().view(-1, 1), torch.arange(103)
    seen = torch.cat([y for rank in range(2) for _, y in IndexBatches(images, labels, 10, shuffle=False, rank=rank,
                                                                         world_size=2)])
    assert sorted(seen.tolist()) == list(range(103))  # no padding, no duplicates
    shares = [list(IndexBatches(images, labels, 10, shuffle=True, rank=r, world_size=2)) for r in range(2)]
    assert len(shares[0]) == len(shares[1]) == len(IndexBatches(images, labels, 10, True, world_size=2))
    first = torch.cat([y for _, y in shares[0]])
    second = torch.cat([y for _, y in shares[1]])
    assert len(set(first.tolist()) & set(second.tolist())) == 0  # ranks see disjoint samples


def test_index_batches_reshuffle_per_epoch_and_repeat_per_seed():
    images, labels = torch.zeros(50, 1), torch.arange(50)
    epoch = {"n": 0}
    batches = IndexBatches(images, labels, 50, shuffle=True, seed=1, epoch=lambda: epoch["n"])
    first = next(iter(batches))[1]
    epoch["n"] = 1
    second = next(iter(batches))[1]
    epoch["n"] = 0
    assert not torch.equal(first, second) and torch.equal(first, next(iter(batches))[1])


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
