"""The detection task's own metrics: FROC points and LUNA16's CPM score on hand-made matches.

Detection metrics never go negative: a class without boxes in a split is left out of the AP and AR means."""
from __future__ import annotations

import numpy as np
import pytest
from monai.apps.detection.metrics.coco import COCOMetric
from monai.apps.detection.metrics.matching import matching_batch
from monai.data.box_utils import box_iou

from medexp.tasks.detection import PresentClassesCOCOMetric, absent_classes, coco_values


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


CLASSES = ["RBC", "WBC", "Platelets"]


def images() -> list[dict[str, np.ndarray]]:
    """Two images with RBC and WBC boxes and no platelet; a perfect RBC detection, a WBC found half the time."""
    box = np.array([[10, 10, 30, 30], [40, 40, 60, 70]], dtype=float)
    return [
        {"pred_box": box, "pred_label": np.array([0, 1]), "pred_score": np.array([0.9, 0.8]),
         "box": box, "label": np.array([0, 1])},
        {"pred_box": box[:1], "pred_label": np.array([0]), "pred_score": np.array([0.9]),
         "box": box, "label": np.array([0, 1])},
    ]


def matches(metric: COCOMetric, cases) -> list:
    return matching_batch(iou_fn=box_iou, iou_thresholds=metric.iou_thresholds,
                          pred_boxes=[c["pred_box"] for c in cases], pred_classes=[c["pred_label"] for c in cases],
                          pred_scores=[c["pred_score"] for c in cases], gt_boxes=[c["box"] for c in cases],
                          gt_classes=[c["label"] for c in cases], max_detections=100)


def settings() -> dict:
    return {"classes": CLASSES, "iou_list": (0.1, 0.5), "iou_range": (0.1, 0.5, 0.05), "max_detection": (1, 100),
            "per_class": True, "verbose": False}


def test_monai_alone_averages_an_absent_class_in_as_minus_one():
    metric = COCOMetric(**settings())
    raw = metric(matches(metric, images()))[0]
    ap = {name: raw[f"{name}_AP_IoU_0.50_MaxDet_100"] for name in CLASSES}
    assert ap["Platelets"] == -1  # low AP of the others and this mean goes negative (BCCD's smoke run: -0.32)
    assert raw["AP_IoU_0.50_MaxDet_100"] == pytest.approx(sum(ap.values()) / 3)


def test_ap_and_ar_are_means_over_the_classes_with_boxes_and_never_negative():
    metric = PresentClassesCOCOMetric(**settings())
    values = coco_values(metric, matches(metric, images()), max_detections=100)
    assert all(value >= 0 for value in values.values()), values
    assert values["ap_iou50"] == (values["ap_iou50_RBC"] + values["ap_iou50_WBC"]) / 2
    assert values["ap_iou50_RBC"] == 1.0
    assert values["map"] > 0.5
    assert not [name for name in values if name.endswith("_Platelets")]  # absent: not logged as -1
    assert absent_classes(CLASSES, images()) == ["Platelets"]


def test_a_split_without_any_box_logs_no_ap_at_all():
    metric = PresentClassesCOCOMetric(**settings())
    empty = [{**case, "box": np.zeros((0, 4)), "label": np.zeros(0, int)} for case in images()]
    values = coco_values(metric, matches(metric, empty), max_detections=100)
    assert not [name for name in values if name.startswith(("map", "ap", "mar", "ar"))], values
    assert absent_classes(CLASSES, empty) == CLASSES
