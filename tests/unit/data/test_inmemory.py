"""New images for an in-memory classifier are refused when they hold NaN or infinite pixels, as training refuses
them, instead of being predicted as a class with probability NaN."""
from __future__ import annotations

import numpy as np
import pytest

from medexp.data.synthetic import SyntheticLesionDataModule
from medexp.errors import DataError


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
