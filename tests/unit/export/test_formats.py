"""How an export is compared with PyTorch: probabilities absolutely, pixel coordinates relative to their size."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from medexp.export.formats import PARITY_TOLERANCE, max_difference


class Detector(nn.Module):
    """Outputs like a detector graph's: box coordinates in pixels (up to 320), scores in [0, 1]."""

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return image * 320.0, torch.sigmoid(image)


def test_boxes_in_pixels_are_compared_relative_to_their_size_and_scores_absolutely():
    images = np.linspace(0, 1, 12, dtype=np.float32).reshape(1, 1, 3, 4)
    boxes, scores = (part.numpy() for part in Detector()(torch.from_numpy(images)))
    # three float32 steps at 320 (9e-5 px) are rounding, not a different model
    rounded = max_difference(Detector(), lambda output, x: [boxes + 9e-5, scores], None, images)
    assert rounded < 1e-6  # about 9e-5 / 320
    assert max_difference(Detector(), lambda output, x: [boxes, scores + 2e-4], None, images) > PARITY_TOLERANCE
    assert max_difference(Detector(), lambda output, x: [boxes + 0.5, scores], None, images) > PARITY_TOLERANCE
