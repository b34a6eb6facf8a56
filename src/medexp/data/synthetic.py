"""Embedded default data: synthetic 2D lesions, benign or malignant, generated in about a second.

Benign lesions are smooth, nearly round blobs; malignant ones have lobulated, irregular margins (a radius that
varies with angle), as in the margin criteria radiologists use. Size, contrast, position and the textured
background vary independently of the class, so the only reliable cue is the shape of the margin: a CNN learns it
in a few epochs, a brightness threshold does not.
"""
from __future__ import annotations

import numpy as np

from medexp.data.inmemory import ArraySplits, InMemoryClassificationDataModule


def textured_background(rng: np.random.Generator, n: int, size: int, gradient: float = 1.0) -> np.ndarray:
    """``n`` backgrounds ``(n, size, size)`` around 0.35: low-pass filtered noise plus an intensity gradient of up
    to ``gradient`` x 0.5 at the borders."""
    noise = rng.normal(size=(n, size, size))
    freq = np.fft.fftfreq(size)
    lowpass = np.exp(-(freq[:, None] ** 2 + freq[None, :] ** 2) / (2 * 0.08**2))
    texture = np.real(np.fft.ifft2(np.fft.fft2(noise) * lowpass))
    texture /= texture.std(axis=(1, 2), keepdims=True)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    tilt = rng.uniform(-1, 1, size=(n, 2)) * gradient / size
    return 0.35 + 0.08 * texture + tilt[:, :1, None] * (yy - size / 2) + tilt[:, 1:, None] * (xx - size / 2)


def make_lesions(n: int, size: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` images ``(n, 1, size, size)`` uint8 and labels ``(n,)`` (0 benign, 1 malignant), balanced, seeded."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % 2)
    background = textured_background(rng, n, size)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    # lesion: centre, radius, contrast independent of the class; the margin's irregularity is the class
    cy, cx = (size / 2 + rng.uniform(-size / 6, size / 6, size=(2, n)))
    radius = rng.uniform(size * 0.12, size * 0.24, size=n)
    contrast = rng.uniform(0.25, 0.55, size=n)
    lobes = rng.integers(3, 7, size=n)
    depth = np.where(labels == 1, rng.uniform(0.25, 0.45, size=n), rng.uniform(0.0, 0.06, size=n))
    phase = rng.uniform(0, 2 * np.pi, size=n)
    dy, dx = yy[None] - cy[:, None, None], xx[None] - cx[:, None, None]
    dist, angle = np.hypot(dy, dx), np.arctan2(dy, dx)
    margin = radius[:, None, None] * (1 + depth[:, None, None] * np.sin(lobes[:, None, None] * angle + phase[:, None, None]))
    lesion = 1 / (1 + np.exp((dist - margin) / 0.6))
    image = background + contrast[:, None, None] * lesion + rng.normal(0, 0.03, size=(n, size, size))
    return (np.clip(image, 0, 1) * 255).astype(np.uint8)[:, None], labels.astype(np.int64)


class SyntheticLesionDataModule(InMemoryClassificationDataModule):
    """Train/val/test sets drawn from ``make_lesions`` with disjoint seeds derived from ``generator_seed``."""

    def __init__(self, num_train: int = 2000, num_val: int = 400, num_test: int = 400, generator_seed: int = 1234,
                 **kwargs):
        super().__init__(**kwargs)
        self.sizes = {"train": num_train, "val": num_val, "test": num_test}
        self.generator_seed = generator_seed

    def load_arrays(self) -> ArraySplits:
        images, labels = {}, {}
        for offset, (split, n) in enumerate(self.sizes.items()):
            images[split], labels[split] = make_lesions(n, self.image_size, self.generator_seed + offset)
        return ArraySplits(images, labels, source=f"synthetic-lesions(seed={self.generator_seed})")
