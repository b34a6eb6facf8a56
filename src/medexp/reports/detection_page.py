"""The detection page of a tested run: AP per class and mAP at IoU 0.5 with 95% bootstrap intervals over images;
the FROC curve; drawn detections; a per-image table (boxes, detections above the report's score threshold,
matched), worst first."""
from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medexp.reports import stats
from medexp.reports.html_helpers import img_tag, interval_rows, number_text, png_file_uri, table_html, write_page
from medexp.reports.plots import plot_detections, plot_froc


@dataclass
class DetectionReportData:
    """A detection test: MONAI's per-image ``matching_batch`` results and what the run logged of them."""

    class_names: list[str]
    case_ids: list[str]
    matches: list[dict[int, dict[str, np.ndarray]]]  # per image, per class: dtScores, dtMatches, dtIgnore, gtIgnore
    iou_thresholds: list[float]
    max_detections: int
    score_threshold: float  # detections counted in the per-image table and drawn
    logged: dict[str, float]  # the run's test metrics (COCO, FROC)
    froc: tuple[np.ndarray, np.ndarray]  # false positives per image, sensitivity
    froc_points: Sequence[float]  # false positives per image at which sensitivity is read
    drawn: list[dict]  # a few 2D images with their boxes (``plot_detections``)


def detection_image_rows(data: DetectionReportData, iou_index: int) -> list[dict]:
    """Per image: ground-truth boxes, detections scoring at least the threshold, those matched to a box at the
    IoU threshold ``iou_index``, misses and false positives; worst (most misses plus false positives) first."""
    rows = []
    for case_id, image in zip(data.case_ids, data.matches, strict=True):
        truths = detected = matched = 0
        for found in image.values():
            counted = ~found["dtIgnore"][iou_index].astype(bool) & (found["dtScores"] >= data.score_threshold)
            truths += int(np.count_nonzero(found["gtIgnore"] == 0))
            detected += int(counted.sum())
            matched += int((counted & found["dtMatches"][iou_index].astype(bool)).sum())
        rows.append({"image": case_id, "boxes": truths, "detections": detected, "matched": matched,
                     "missed": truths - matched, "false positives": detected - matched})
    return sorted(rows, key=lambda r: (-(r["missed"] + r["false positives"]), -r["missed"]))


def write_detection_page(data: DetectionReportData, folder: Path, title: str, about: str = "") -> list[Path]:
    """Write the FROC curve and the drawn detections (PNGs) and ``folder/index.html`` holding them; return the paths."""
    iou_index = int(np.argmin(np.abs(np.asarray(data.iou_thresholds) - 0.5)))
    iou = data.iou_thresholds[iou_index]
    images, classes = len(data.case_ids), len(data.class_names)
    weights = np.vstack([np.ones(images), stats.case_weights(images)])
    per_class = np.column_stack([stats.average_precision(data.matches, c, iou_index, weights, data.max_detections)
                                 for c in range(classes)])
    labels = [f"AP@{iou:.2f} {name}" for name in data.class_names]
    if classes > 1:
        per_class, labels = stats.with_overall(per_class), [f"mAP@{iou:.2f} (mean of classes)", *labels]
    froc = data.logged.get("froc", float("nan"))
    written = [plot_froc(*data.froc, data.froc_points, folder / "froc_test.png",
                         title=f"FROC (test): mean sensitivity at 1/8-8 FP/image {froc:.3f}")]
    if data.drawn:
        written.append(plot_detections(data.drawn, data.class_names, folder / "detections_test.png",
                                       data.score_threshold))
    sections = [f"<h1>{html.escape(title)}</h1><p>{images} test images; classes: "
                f"{html.escape(', '.join(data.class_names))}. AP: COCO's 101-point interpolation (as MONAI's "
                f"COCOMetric), up to {data.max_detections} detections per image. Intervals: 95% percentile bootstrap "
                "over images, 1,000 resamples, seed 0.</p>",
                f"<h2 id='metrics'>Test metrics at IoU {iou:.2f}</h2>"
                + table_html(["metric", "value", "95% CI"], interval_rows(list(zip(labels, stats.draw_intervals(per_class), strict=True)))),
                "<h2 id='logged'>As logged</h2>" + table_html(["metric", "value"], [[html.escape(k), number_text(v)]
                                                                              for k, v in sorted(data.logged.items())]),
                f"<h2 id='froc'>FROC</h2>{img_tag(png_file_uri(written[0]))}"]
    if data.drawn:
        sections.append(f"<h2 id='detections'>Detections</h2><p>Ground truth green, detections scoring at least "
                        f"{data.score_threshold:g} magenta.</p>{img_tag(png_file_uri(written[1]))}")
    rows = detection_image_rows(data, iou_index)
    columns = ["image", "boxes", "detections", "matched", "missed", "false positives"]
    sections.append(f"<h2 id='images'>Images, worst first</h2><p>Detections scoring at least {data.score_threshold:g};"
                    f" matched: to a ground-truth box of their class at IoU {iou:.2f}.</p>"
                    + table_html(["image", "ground-truth boxes", f"detections >= {data.score_threshold:g}", "matched",
                              "missed", "false positives"],
                             [[html.escape(str(r["image"])), *(str(r[c]) for c in columns[1:])] for r in rows]))
    return [*written, write_page(folder, title, sections, about)]
