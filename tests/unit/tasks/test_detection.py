"""The detection task's own metrics: FROC points and LUNA16's CPM score on hand-made matches."""
from __future__ import annotations

import numpy as np
import pytest


def test_froc_counts_hits_and_false_positives_per_image_by_score():
    """Two images, one lesion each: image 1 has a hit (0.9) and a false alarm (0.8), image 2 only a false alarm
    (0.95). By score: FP, TP, FP -> 0.5, 0.5, 1.0 false positives per image at sensitivity 0, 0.5, 0.5; the score
    (LUNA16's CPM) reads sensitivity 0, 0, 0.5, 0.5, 0.5, 0.5, 0.5 at 1/8 .. 8 false positives per image."""
    from monai.apps.detection.metrics.matching import matching_batch
    from monai.data.box_utils import box_iou

    from medexp.tasks.detection import froc_curve, froc_score

    lesion = np.array([[10.0, 10.0, 20.0, 20.0]])
    matches = matching_batch(
        iou_fn=box_iou, iou_thresholds=[0.1, 0.5],
        pred_boxes=[np.array([[11.0, 11.0, 20.0, 21.0], [40.0, 40.0, 50.0, 50.0]]), np.array([[0.0, 0.0, 5.0, 5.0]])],
        pred_classes=[np.array([0, 0]), np.array([0])], pred_scores=[np.array([0.9, 0.8]), np.array([0.95])],
        gt_boxes=[lesion, lesion], gt_classes=[np.array([0]), np.array([0])], max_detections=100,
    )
    fp_per_image, sensitivity = froc_curve(matches, num_images=2)
    np.testing.assert_allclose(fp_per_image, [0.5, 0.5, 1.0])
    np.testing.assert_allclose(sensitivity, [0.0, 0.5, 0.5])
    assert froc_score(fp_per_image, sensitivity) == pytest.approx(5 * 0.5 / 7)
