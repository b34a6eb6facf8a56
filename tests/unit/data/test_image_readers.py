"""Contrast enhancement at decode time: CLAHE (scikit-image, 2D and 3D) and PIL-style brightness, contrast and
sharpness factors; 8-bit images stay 8-bit, the rest is refused in one line."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageEnhance
from skimage.exposure import equalize_adapthist

from medexp.data.image_readers import Preprocessing
from medexp.errors import ConfigError, DataError


def low_contrast(shape, seed: int = 0) -> np.ndarray:
    """A dim, flat image: a smooth gradient and noise squeezed into 80-120."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 1, shape[-1])
    return (80 + 30 * ramp + rng.normal(0, 3, shape)).clip(0, 255).astype(np.uint8)


@pytest.mark.parametrize("spatial", [(32, 40), (16, 20, 24)])
def test_clahe_spreads_a_flat_image_and_keeps_8_bit_images_8_bit(spatial):
    image = low_contrast((1, *spatial))
    out = Preprocessing.from_config({"clahe": 0.02})(image)
    assert out.dtype == np.uint8 and out.shape == image.shape
    channel = (image[0] - image.min()) / float(image.max() - image.min())
    expected = np.round(equalize_adapthist(channel, clip_limit=0.02) * 255).astype(np.uint8)
    assert np.array_equal(out[0], expected)
    assert out.std() > 2 * image.std()  # the contrast the step is for
    as_float = Preprocessing.from_config({"window": [0, 255], "clahe": 0.02})(image)
    assert as_float.dtype == np.float32 and 0 <= as_float.min() and as_float.max() <= 1


@pytest.mark.parametrize("name", ["brightness", "contrast", "sharpness"])
def test_enhancement_factors_act_as_pil_image_enhance(name):
    image = low_contrast((1, 20, 24), seed=1)
    out = Preprocessing.from_config({name: 1.6})(image)
    pil = getattr(ImageEnhance, name.capitalize())(Image.fromarray(image[0])).enhance(1.6)
    assert out.dtype == np.uint8 and np.abs(out[0].astype(int) - np.asarray(pil).astype(int)).max() <= 1
    colour = np.stack([image[0], image[0] // 2, 255 - image[0]])
    assert Preprocessing.from_config({name: 0.5})(colour).shape == (3, 20, 24)


def test_enhancement_settings_that_cannot_work_are_one_line_errors():
    with pytest.raises(ConfigError, match=r"clahe=2.0: give a clip limit in \(0, 1\]"):
        Preprocessing.from_config({"clahe": 2.0})
    with pytest.raises(ConfigError, match="brightness=-1: give a factor >= 0"):
        Preprocessing.from_config({"brightness": -1})
    with pytest.raises(ConfigError, match="unknown data.preprocessing option.*'sharpen'.*valid are size, window"):
        Preprocessing.from_config({"sharpen": 2})
    with pytest.raises(DataError, match=r"contrast works on 2D gray or RGB images, not .* \(1, 4, 5, 6\)"):
        Preprocessing.from_config({"contrast": 1.2})(np.zeros((1, 4, 5, 6), np.uint8))
    with pytest.raises(DataError, match=r"sharpness needs 8-bit images or floats in \[0, 1\], not int16 values in "
                                        r"\[-1000, 400\]: .*window"):
        Preprocessing.from_config({"sharpness": 2})(np.array([[[-1000, 400]]], np.int16))
    windowed = Preprocessing.from_config({"window": [-1000, 400], "sharpness": 2})(np.array([[[-1000, 400]]], np.int16))
    assert windowed.dtype == np.float32
