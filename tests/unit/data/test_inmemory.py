"""In-memory classification data: batching, DDP sharding, the balanced sampler, what is held in memory.

New images for an in-memory classifier are refused when they hold NaN or infinite pixels, as training refuses
them, instead of being predicted as a class with probability NaN."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from medexp.data.inmemory import ArraySplits, IndexBatches
from medexp.data.synthetic import SyntheticLesionDataModule
from medexp.errors import DataError


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


def test_prediction_refuses_nan_images_as_training_does():
    data = SyntheticLesionDataModule(num_train=16, num_val=8, num_test=8, batch_size=8, num_classes=2,
                                     in_channels=1, spatial_dims=2, image_size=32)
    data.setup()
    good = np.zeros((1, 32, 32), np.float32)
    bad = good.copy()
    bad[0, 5, 5] = np.nan
    assert len(data.prediction_loader([good], batch_size=4).dataset) == 1
    with pytest.raises(DataError, match=r"image 1 of the array holds NaN or infinite pixel values"):
        data.prediction_loader([good, bad], batch_size=4)


class Arrays(SyntheticLesionDataModule):
    """The synthetic module's batching over arrays the test gives (a stored dtype, an imbalance)."""

    def __init__(self, images: dict, labels: dict, **kwargs):
        shape = next(iter(images.values())).shape
        super().__init__(batch_size=kwargs.pop("batch_size", 8), num_classes=kwargs.pop("num_classes", 2),
                         in_channels=shape[1], spatial_dims=len(shape) - 2, image_size=shape[-1], **kwargs)
        self.given = ArraySplits(images, labels, source="test arrays")

    def load_arrays(self) -> ArraySplits:
        return self.given


def test_8_bit_images_stay_uint8_in_memory_and_become_float_per_batch():
    images = {s: np.random.default_rng(i).integers(0, 256, (n, 1, 64, 64), dtype=np.uint8)
              for i, (s, n) in enumerate([("train", 2000), ("val", 100), ("test", 100)])}
    labels = {s: np.arange(len(x)) % 2 for s, x in images.items()}
    dm = Arrays(images, labels)
    dm.setup()
    held = sum(x.element_size() * x.nelement() for x, _ in dm.tensors.values())
    assert held == sum(x.nbytes for x in images.values())  # the bytes of the data, not 4x (float32)
    assert all(x.dtype == torch.uint8 for x, _ in dm.tensors.values())
    assert dm.tensors["train"][0].data_ptr() == dm.arrays.images["train"].ctypes.data  # shared, not copied
    batch, _ = next(iter(dm.val_dataloader()))
    reference = (torch.from_numpy(images["val"][:len(batch)]).float() / 255 - dm.mean[0]) / dm.std[0]
    assert batch.dtype == torch.float32 and torch.equal(batch, reference)
    as_float = torch.from_numpy(images["train"]).float() / 255
    assert dm.mean[0] == pytest.approx(float(as_float.mean()), abs=1e-6)
    assert dm.std[0] == pytest.approx(float(as_float.std()), abs=1e-6)


def test_float_images_are_standardised_without_the_8_bit_scale_in_training_and_prediction():
    rng = np.random.default_rng(0)
    images = {s: rng.normal(-300, 200, (n, 1, 8, 8)).astype(np.float32) for s, n in
              [("train", 40), ("val", 8), ("test", 8)]}  # e.g. CT in Hounsfield units
    dm = Arrays(images, {s: np.arange(len(x)) % 2 for s, x in images.items()})
    dm.setup()
    assert dm.input_scale == 1.0 and dm.mean[0] == pytest.approx(float(images["train"].mean()), abs=1e-3)
    restored = Arrays(images, {})
    restored.load_state_dict(dm.state_dict())  # what medexp-predict rebuilds from a checkpoint
    (predicted,) = next(iter(restored.prediction_loader(list(images["test"]), batch_size=8)))
    batch, _ = next(iter(dm.test_dataloader()))
    assert torch.equal(predicted, batch)


def test_balanced_sampler_draws_each_class_about_equally_often_and_shares_one_draw_across_ranks():
    labels = np.array([0] * 180 + [1] * 20)
    images = {s: np.zeros((200, 1, 4, 4), np.uint8) for s in ("train", "val", "test")}
    dm = Arrays(images, {s: labels for s in images}, batch_size=20, sampler="balanced")
    dm.setup()
    drawn = torch.cat([y for epoch in range(5) for _, y in IndexBatches(
        *dm.tensors["train"], 20, shuffle=True, seed=epoch, weights=dm.sample_weights)])
    assert len(drawn) == 1000 and 0.4 < float(drawn.float().mean()) < 0.6  # 10% of the set, half of the draws
    plain = torch.cat([y for _, y in dm.train_dataloader()])
    assert len(plain) == 200 and 0.4 < float(plain.float().mean()) < 0.6
    assert sorted(torch.cat([y for _, y in dm.val_dataloader()]).tolist()) == sorted(labels.tolist())  # untouched
    shares = [[y for _, y in IndexBatches(*dm.tensors["train"], 20, shuffle=True, seed=3, rank=rank, world_size=2,
                                          weights=dm.sample_weights)] for rank in range(2)]
    one_process = torch.cat([y for _, y in IndexBatches(*dm.tensors["train"], 20, shuffle=True, seed=3,
                                                        weights=dm.sample_weights)])
    assert len(shares[0]) == len(shares[1]) == 5
    assert sorted(torch.cat([*shares[0], *shares[1]]).tolist()) == sorted(one_process.tolist())


def test_balanced_sampler_refuses_unknown_names_multi_label_sets_and_class_weights_beside_it():
    from medexp.errors import ConfigError
    from medexp.factory import class_weights

    with pytest.raises(ConfigError, match="data.sampler='weighted' is unknown for classification"):
        Arrays({"train": np.zeros((4, 1, 4, 4), np.uint8)}, {}, sampler="weighted")
    images = {s: np.zeros((6, 1, 4, 4), np.uint8) for s in ("train", "val", "test")}
    multi = Arrays(images, {s: np.eye(2, dtype=np.int64)[np.arange(6) % 2] for s in images}, sampler="balanced")
    with pytest.raises(ConfigError, match="multi-label .* use task.class_weights=balanced instead"):
        multi.setup()
    single = Arrays(images, {s: np.arange(6) % 2 for s in images}, sampler="balanced")
    with pytest.raises(ConfigError, match="together over-correct it: keep one"):
        class_weights("balanced", single)
