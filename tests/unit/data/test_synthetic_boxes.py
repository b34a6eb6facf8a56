"""Synthetic lesion boxes: seeded, and each box on a bright lesion."""
from __future__ import annotations

import numpy as np

from medexp.data.synthetic_boxes import make_box_lesions


def test_synthetic_boxes_are_seeded_and_hold_the_bright_lesions():
    images, boxes = make_box_lesions(6, 64, seed=3)
    again, boxes_again = make_box_lesions(6, 64, seed=3)
    assert np.array_equal(images, again) and boxes == boxes_again
    for image, image_boxes in zip(images.astype(float), boxes, strict=True):
        assert 1 <= len(image_boxes) <= 3
        for r0, c0, r1, c1 in image_boxes:  # brighter than a 3-pixel ring around the box (0..255)
            around = image[max(r0 - 3, 0):r1 + 3, max(c0 - 3, 0):c1 + 3]
            ring_mean = (around.sum() - image[r0:r1, c0:c1].sum()) / (around.size - (r1 - r0) * (c1 - c0))
            assert image[r0:r1, c0:c1].mean() > ring_mean + 15
