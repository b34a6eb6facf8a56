"""The synthetic lesion set: deterministic, balanced, not separable by brightness; standardised by training statistics."""
from __future__ import annotations

import numpy as np

from medexp.data.synthetic import SyntheticLesionDataModule, make_lesions

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
    x = dm.standardise(x)
    assert abs(float(x.mean())) < 1e-4 and abs(float(x.std()) - 1) < 1e-2
    assert dm.fingerprint()["sizes"] == {"train": 256, "val": 64, "test": 64}
    assert dm.class_counts("train") == [128, 128]
