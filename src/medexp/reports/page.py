"""``report/index.html``: one self-contained page per run (figures inlined as base64 PNG, no scripts, no network)
that opens offline and travels as one MLflow artifact. One set of HTML helpers builds every page:

- classification: test metrics with 95% stratified bootstrap intervals; ROC and precision-recall curves; calibration
  (ECE and a reliability diagram); confusion matrices at 0.5 and at the Youden-J threshold chosen on validation
  (binary tasks); per-class metrics; a per-case table, worst first, with thumbnails; Grad-CAM of the worst and best;
- segmentation: Dice per structure and HD95 with 95% bootstrap intervals over cases; a per-case table, worst first,
  with overlays (ground truth outlined, prediction filled; 3D: the slice with the most foreground) of the worst and
  best few cases; the test split, or for a run without one the validation of the checkpoint kept;
- detection: AP per class and mAP at IoU 0.5 with 95% bootstrap intervals over images; the FROC curve; drawn
  detections; a per-image table (boxes, detections above the report's score threshold, matched), worst first;
- a sweep over folds or seeds (its parent run): each run's metrics, their mean ± std and the t interval of the mean.

Grad-CAM is MONAI's (``monai.visualize.GradCAM``): MONAI is already a dependency and its CAM takes the layer by name
for any of medexp's 2D/3D networks; the ``grad-cam`` package would add a dependency for the same map.
"""
from __future__ import annotations

import base64
import html
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medexp.reports import stats
from medexp.reports.plots import display_rgb, foreground_slice, plot_detections, plot_froc

WORST_SHOWN = 40  # rows of the classification per-case table
CAM_CASES = 4  # worst and best cases with Grad-CAM overlays
PICTURED_CASES = 4  # worst and best segmentation cases with overlays (the other rows are numbers only)
GROUND_TRUTH_RGB, PREDICTION_RGB = (0, 230, 0), (255, 0, 255)


@dataclass
class ClassificationReportData:
    """What the page shows, as computed by the tested model: probabilities of the validation and test splits,
    the test images as stored (for thumbnails) and Grad-CAM maps of a few test cases."""

    class_names: list[str]
    val_labels: np.ndarray
    val_probabilities: np.ndarray
    test_labels: np.ndarray
    test_probabilities: np.ndarray
    test_images: np.ndarray  # (N, C, H, W) as stored
    cams: dict[int, np.ndarray]  # test index -> (H, W) map in [0, 1]


def collect_classification(task, datamodule) -> ClassificationReportData:
    """Run the task's network (as tested) over the in-memory validation and test splits; Grad-CAM for the worst
    and best test cases."""
    import torch

    def probabilities(split: str) -> tuple[np.ndarray, np.ndarray]:
        images, labels = datamodule.tensors[split]
        with torch.no_grad():
            logits = torch.cat([task(images[i : i + 512].to(task.device)) for i in range(0, len(images), 512)])
        probs = torch.softmax(logits.float(), dim=1)
        return labels.cpu().numpy(), probs.cpu().numpy()

    was_training = task.training
    task.eval()
    val_labels, val_probs = probabilities("val")
    test_labels, test_probs = probabilities("test")
    order = worst_first(test_labels, test_probs)
    chosen = [*order[:CAM_CASES], *order[::-1][:CAM_CASES]]
    cams = grad_cam(task.net, datamodule.tensors["test"][0][chosen].to(task.device), test_probs[chosen].argmax(1))
    task.train(was_training)
    return ClassificationReportData(list(task.class_names), val_labels, val_probs, test_labels, test_probs,
                                    np.asarray(datamodule.arrays.images["test"]), dict(zip(chosen, cams, strict=True)))


def grad_cam(net, images, classes: np.ndarray) -> list[np.ndarray]:
    """MONAI's Grad-CAM at the network's last convolution, for the predicted class of each image."""
    import torch
    from monai.visualize import GradCAM

    last_conv = [name for name, module in net.named_modules() if isinstance(module, (torch.nn.Conv2d, torch.nn.Conv3d))][-1]
    cam = GradCAM(nn_module=net, target_layers=last_conv)
    maps = []
    with torch.inference_mode(False), torch.enable_grad():  # Lightning's test hooks run under inference mode
        for image, label in zip(images, classes, strict=True):
            heat = cam(image[None].clone().requires_grad_(True), class_idx=int(label))[0, 0]
            maps.append(heat.detach().cpu().numpy())
    return maps


def worst_first(labels: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    """Test indices by the probability given to the true class, lowest (worst) first."""
    return np.argsort(probabilities[np.arange(len(labels)), labels], kind="mergesort")


# -- shared HTML helpers: every page is built from these -------------------------------------------------------
_STYLE = ("body{font-family:sans-serif;margin:2em;max-width:1100px} table{border-collapse:collapse;margin:.5em 0} "
          "td,th{border:1px solid #ccc;padding:2px 8px;font-size:13px} td img{display:block} body>img{max-width:100%} "
          ".cams{display:flex;flex-wrap:wrap;gap:1em} figcaption{font-size:12px;max-width:240px}")


def _png(figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(figure)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _png_file(path: Path) -> str:
    """A PNG the run already wrote (FROC curve, drawn detections), inlined."""
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def _encode(rgb: np.ndarray, size: int) -> str:
    """An ``(H, W, 3)`` uint8 picture as an inline PNG, its longer side ``size`` pixels (nearest neighbour: masks
    stay crisp); drawn with PIL, not matplotlib: 40 figures would cost the run seconds."""
    from PIL import Image

    scale = size / max(rgb.shape[:2])
    picture = Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8))
    picture = picture.resize((max(1, round(rgb.shape[1] * scale)), max(1, round(rgb.shape[0] * scale))), Image.NEAREST)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _thumbnail(image: np.ndarray, cam: np.ndarray | None = None, size: int = 84) -> str:
    """A stored image (``(C, H, W)``, 0-255) as an inline PNG, the Grad-CAM map blended over it if given."""
    from matplotlib import colormaps

    pixels = np.clip(image, 0, 255).astype(np.uint8)
    rgb = np.repeat(pixels, 3, axis=0) if pixels.shape[0] == 1 else pixels[:3]
    rgb = np.moveaxis(rgb, 0, -1).astype(np.float32)
    if cam is not None:
        heat = colormaps["jet"](np.clip(cam, 0, 1))[..., :3] * 255
        rgb = 0.6 * rgb + 0.4 * heat
    return _encode(rgb.astype(np.uint8), size)


def _image(uri: str) -> str:
    return f"<img src='{uri}'>"


def _figure(uri: str, caption: str) -> str:
    return f"<figure>{_image(uri)}<figcaption>{caption}</figcaption></figure>"


def _number(value: float | None) -> str:
    return f"{value:.4f}" if value is not None and np.isfinite(value) else "n/a"


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _interval_rows(named: list[tuple[str, stats.Interval]]) -> list[list[str]]:
    return [[html.escape(name), _number(i.value), f"{_number(i.low)} - {_number(i.high)}"] for name, i in named]


def _write_page(folder: Path, title: str, sections: list[str]) -> Path:
    """``folder/index.html``: the sections under one title, styles inline, nothing to fetch."""
    folder.mkdir(parents=True, exist_ok=True)
    page = folder / "index.html"
    page.write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
                    f"<style>{_STYLE}</style></head><body>{''.join(sections)}</body></html>")
    return page


def _curves(data: ClassificationReportData) -> str:
    import matplotlib.pyplot as plt

    figure, (roc_ax, pr_ax) = plt.subplots(1, 2, figsize=(9, 4))
    classes = [1] if len(data.class_names) == 2 else range(len(data.class_names))
    for c in classes:
        truth, scores = (data.test_labels == c).astype(int), data.test_probabilities[:, c]
        fpr, tpr = stats.roc_points(truth, scores)
        recall, precision = stats.pr_points(truth, scores)
        roc_ax.plot(fpr, tpr, label=f"{data.class_names[c]} (AUROC {stats.auroc(truth, scores):.3f})")
        pr_ax.plot(recall, precision, label=data.class_names[c])
    roc_ax.plot([0, 1], [0, 1], ":", color="gray")
    roc_ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC (test)")
    pr_ax.set(xlabel="recall", ylabel="precision", title="Precision-recall (test)", ylim=(0, 1.02))
    roc_ax.legend(fontsize=8)
    pr_ax.legend(fontsize=8)
    return _png(figure)


def _reliability(bins: list[dict], ece: float) -> str:
    import matplotlib.pyplot as plt

    figure, ax = plt.subplots(figsize=(4, 4))
    ax.bar([b["low"] for b in bins], [b["accuracy"] for b in bins], width=[b["high"] - b["low"] for b in bins],
           align="edge", edgecolor="black", alpha=0.7, label="accuracy")
    ax.plot([0, 1], [0, 1], ":", color="gray", label="perfect calibration")
    ax.set(xlabel="confidence (predicted class probability)", ylabel="accuracy",
           title=f"Reliability (test), ECE {ece:.3f}")
    ax.legend(fontsize=8)
    return _png(figure)


def _matrix(matrix: np.ndarray, names: list[str]) -> str:
    return _table(["true \\ predicted", *names],
                  [[html.escape(name), *map(str, row)] for name, row in zip(names, matrix.tolist(), strict=True)])


def write_classification_page(data: ClassificationReportData, folder: Path, title: str = "Test report") -> Path:
    """Write ``folder/index.html``; return its path."""
    names, labels, probs = data.class_names, data.test_labels, data.test_probabilities
    classes = len(names)
    intervals = stats.bootstrap_intervals(labels, probs)
    ece, bins = stats.calibration(labels, probs)
    sections = [f"<h1>{html.escape(title)}</h1><p>{len(labels)} test cases, {len(data.val_labels)} validation "
                "cases. Intervals: 95% percentile bootstrap, 1,000 resamples stratified by class, seed 0.</p>"]
    sections.append("<h2 id='metrics'>Test metrics</h2>" + _table(["metric", "value", "95% CI"],
                                                                   _interval_rows(list(intervals.items()))))
    sections.append(f"<h2 id='curves'>ROC and precision-recall</h2>{_image(_curves(data))}")
    sections.append(f"<h2 id='calibration'>Calibration</h2><p>Expected calibration error (10 bins): {ece:.4f}</p>"
                    f"{_image(_reliability(bins, ece))}")
    predicted = probs.argmax(axis=1)
    matrices = f"<h3>At the argmax (0.5 for two classes)</h3>{_matrix(stats.confusion(labels, predicted, classes), names)}"
    if classes == 2:
        threshold = stats.youden_threshold(data.val_labels, data.val_probabilities[:, 1])
        at_j = (probs[:, 1] >= threshold).astype(int)
        chosen = stats.classification_metrics(labels, probs, threshold)
        matrices += (f"<h3>At the Youden-J threshold chosen on validation: {threshold:.4f}</h3>"
                     f"{_matrix(stats.confusion(labels, at_j, classes), names)}<p>At that threshold: "
                     + ", ".join(f"{k} {v:.4f}" for k, v in chosen.items() if k != "auroc") + "</p>")
    sections.append(f"<h2 id='confusion'>Confusion matrices</h2>{matrices}")
    per_class = []
    for c, name in enumerate(names):
        truth, hit = labels == c, predicted == c
        recall = float((hit & truth).sum() / max(truth.sum(), 1))
        precision = float((hit & truth).sum() / max(hit.sum(), 1))
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class.append([html.escape(name), str(int(truth.sum())), f"{precision:.4f}", f"{recall:.4f}", f"{f1:.4f}",
                          f"{stats.auroc(truth.astype(int), probs[:, c]):.4f}"])
    sections.append("<h2 id='per-class'>Per class</h2>" + _table(
        ["class", "cases", "precision", "recall", "F1", "AUROC (one vs rest)"], per_class))
    order = worst_first(labels, probs)
    rows = [[str(i), _image(_thumbnail(data.test_images[i])), html.escape(names[labels[i]]),
             html.escape(names[predicted[i]]), f"{probs[i, labels[i]]:.4f}"] for i in order[:WORST_SHOWN]]
    sections.append(f"<h2 id='cases'>Cases, worst first ({min(WORST_SHOWN, len(order))} of {len(order)})</h2>"
                    + _table(["case", "image", "label", "predicted", "probability of the label"], rows))
    cams = [_figure(_thumbnail(data.test_images[i], cam, 168), f"case {i}: {html.escape(names[labels[i]])}, predicted "
                    f"{html.escape(names[predicted[i]])} ({probs[i, predicted[i]]:.2f})") for i, cam in data.cams.items()]
    sections.append("<h2 id='gradcam'>Grad-CAM (MONAI), worst then best cases</h2>"
                    f"<div class='cams'>{''.join(cams)}</div>")
    return _write_page(folder, title, sections)


# -- segmentation ---------------------------------------------------------------------------------------------------
Picture = tuple[np.ndarray, np.ndarray, np.ndarray]  # (H, W, 3) uint8 image, (H, W) truth, (H, W) prediction


def segmentation_picture(image, truth, predicted) -> Picture:
    """What an overlay needs of one case (tensors or arrays: ``(C, *spatial)`` image, ``(*spatial)`` label maps):
    for 3D the slice with the most foreground, the image in display range; small, so a few can be kept."""
    import torch

    image, truth, predicted = (torch.as_tensor(a) for a in (image, truth, predicted))
    if truth.ndim == 3:
        index = foreground_slice(truth, predicted)
        image, truth, predicted = image[..., index], truth[..., index], predicted[..., index]
    return (display_rgb(image.float().cpu().numpy()), truth.cpu().numpy().astype(np.uint8),
            predicted.cpu().numpy().astype(np.uint8))


def _overlay(picture: Picture, size: int) -> str:
    """The image with the prediction filled (magenta) and the ground truth outlined (green) over it, drawn at the
    shown size so the outline stays one pixel wide whatever the image's own size."""
    from PIL import Image

    rgb, truth, predicted = picture
    scale = size / max(truth.shape)
    shape = (max(1, round(truth.shape[1] * scale)), max(1, round(truth.shape[0] * scale)))
    shown = np.asarray(Image.fromarray(rgb).resize(shape, Image.BILINEAR), dtype=np.float32)
    truth, predicted = (np.asarray(Image.fromarray((m > 0).astype(np.uint8)).resize(shape, Image.NEAREST)) > 0
                        for m in (truth, predicted))
    shown[predicted] = 0.55 * shown[predicted] + 0.45 * np.array(PREDICTION_RGB)
    inside = truth.copy()
    inside[1:] &= truth[:-1]
    inside[:-1] &= truth[1:]
    inside[:, 1:] &= truth[:, :-1]
    inside[:, :-1] &= truth[:, 1:]
    shown[truth & ~inside] = GROUND_TRUTH_RGB
    return _encode(shown.astype(np.uint8), size)


@dataclass
class SegmentationReportData:
    """Per-case results of one evaluation pass: Dice (and HD95 where computed) per foreground structure, and the
    pictures of its worst and best few cases."""

    split: str  # "test" | "validation"
    structures: list[str]
    case_ids: list[str]
    dice: np.ndarray  # (cases, structures)
    hd95: np.ndarray | None  # (cases, structures); NaN/inf where a mask is empty; None where not computed
    pictures: dict[str, Picture]  # case id -> overlay parts
    note: str = ""  # which model was evaluated, e.g. the epoch of the checkpoint kept


@dataclass
class SegmentationCases:
    """Collects an evaluation pass case by case: every case's Dice (and HD95) under its id, but pictures of only the
    ``pictured`` worst and best cases so far (by mean Dice), so memory stays bounded however large the split."""

    pictured: int = PICTURED_CASES
    rows: list[tuple[str, np.ndarray, np.ndarray | None]] = field(default_factory=list)
    pictures: list[tuple[float, str, Picture]] = field(default_factory=list)  # by mean Dice, worst first

    def add(self, case_id: str | None, dice: np.ndarray, hd95: np.ndarray | None, image, truth, predicted) -> None:
        case_id = case_id or f"case {len(self.rows)}"
        self.rows.append((case_id, dice, hd95))
        score, kept = float(np.mean(dice)), [p[0] for p in self.pictures]
        if len(kept) < 2 * self.pictured or score < kept[self.pictured - 1] or score > kept[-self.pictured]:
            self.pictures.append((score, case_id, segmentation_picture(image, truth, predicted)))
            self._keep_extremes()

    def _keep_extremes(self) -> None:
        self.pictures.sort(key=lambda p: p[0])
        if len(self.pictures) > 2 * self.pictured:
            self.pictures = self.pictures[: self.pictured] + self.pictures[-self.pictured :]

    @classmethod
    def merged(cls, parts: Sequence[SegmentationCases]) -> SegmentationCases:
        """The parts of all DDP ranks as one; a case twice (a sampler padding the last batch) counts once."""
        whole = cls(parts[0].pictured)
        for part in parts:
            seen = {row[0] for row in whole.rows}
            whole.rows += [row for row in part.rows if row[0] not in seen]
            whole.pictures += [p for p in part.pictures if p[1] not in {q[1] for q in whole.pictures}]
        whole._keep_extremes()
        return whole

    def report(self, split: str, structures: Sequence[str], note: str = "") -> SegmentationReportData:
        with_hd95 = bool(self.rows) and all(row[2] is not None for row in self.rows)
        empty = np.zeros((0, len(structures)))
        return SegmentationReportData(
            split, list(structures), [row[0] for row in self.rows],
            np.array([row[1] for row in self.rows]) if self.rows else empty,
            np.array([row[2] for row in self.rows], dtype=float) if with_hd95 else None,
            {case_id: picture for _, case_id, picture in self.pictures}, note)


def _with_overall(draws: np.ndarray) -> np.ndarray:
    """Per-structure bootstrap means with their mean over structures in front: the figure the run logs (MONAI's
    mean over cases per structure, then over structures)."""
    import warnings

    with warnings.catch_warnings():  # a resample without any finite HD95 has no mean
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.column_stack([np.nanmean(draws, axis=1), draws])


def write_segmentation_page(data: SegmentationReportData, folder: Path, title: str) -> Path:
    """Write ``folder/index.html``; return its path."""
    names, cases = data.structures, len(data.case_ids)
    several = len(names) > 1  # one structure: its Dice is the mean, shown once
    dice_name = "mean Dice" if several else "Dice"
    rows = []
    for metric, values in (("Dice", data.dice), ("HD95", data.hd95)):
        if values is None or not cases:
            continue
        labels = [f"{metric} (mean of structures)", *(f"{metric} {name}" for name in names)] if several else [metric]
        draws = _with_overall(stats.case_mean_draws(values))[:, : len(labels)]
        rows += list(zip(labels, stats.draw_intervals(draws), strict=True))
    missing = 0 if data.hd95 is None else int((~np.isfinite(data.hd95)).sum())
    sections = [f"<h1>{html.escape(title)}</h1><p>{cases} {data.split} cases"
                + (f" ({html.escape(data.note)})" if data.note else "") + f"; structures: {html.escape(', '.join(names))}."
                " Intervals: 95% percentile bootstrap over cases, 1,000 resamples, seed 0."
                + (f" HD95 counts the cases where both masks hold the structure ({missing} case-structure pairs "
                   "without)." if missing else "") + "</p>",
                f"<h2 id='metrics'>{data.split.capitalize()} metrics</h2>"
                + _table(["metric", "value", "95% CI"], _interval_rows(rows))]
    mean_dice = data.dice.mean(axis=1) if cases else np.zeros(0)
    header = ["case", "overlay", dice_name, *(f"Dice {n}" for n in names if several),
              *(f"HD95 {n}" for n in names if data.hd95 is not None)]
    table = []
    for i in np.argsort(mean_dice, kind="mergesort"):
        picture = data.pictures.get(data.case_ids[i])
        table.append([html.escape(data.case_ids[i]), "" if picture is None else _image(_overlay(picture, 96)),
                      _number(mean_dice[i]), *(_number(d) for d in data.dice[i] if several),
                      *(_number(h) for h in (data.hd95[i] if data.hd95 is not None else []))])
    sections.append(f"<h2 id='cases'>Cases, worst first (overlays of the {PICTURED_CASES} worst and best)</h2>"
                    + _table(header, table))
    shown = sorted((mean_dice[data.case_ids.index(case_id)], case_id) for case_id in data.pictures)
    figures = [_figure(_overlay(data.pictures[case_id], 240), f"{html.escape(case_id)}: {dice_name} {score:.3f}")
               for score, case_id in shown]
    sections.append("<h2 id='overlays'>Worst and best cases</h2><p>Ground truth outlined in green, prediction filled "
                    "in magenta (every structure); 3D: the slice with the most ground truth.</p>"
                    f"<div class='cams'>{''.join(figures)}</div>")
    return _write_page(folder, title, sections)


# -- detection ------------------------------------------------------------------------------------------------------
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


def write_detection_page(data: DetectionReportData, folder: Path, title: str) -> list[Path]:
    """Write the FROC curve and the drawn detections (PNGs) and ``folder/index.html`` holding them; return the paths."""
    iou_index = int(np.argmin(np.abs(np.asarray(data.iou_thresholds) - 0.5)))
    iou = data.iou_thresholds[iou_index]
    images, classes = len(data.case_ids), len(data.class_names)
    weights = np.vstack([np.ones(images), stats.case_weights(images)])
    per_class = np.column_stack([stats.average_precision(data.matches, c, iou_index, weights, data.max_detections)
                                 for c in range(classes)])
    labels = [f"AP@{iou:.2f} {name}" for name in data.class_names]
    if classes > 1:
        per_class, labels = _with_overall(per_class), [f"mAP@{iou:.2f} (mean of classes)", *labels]
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
                + _table(["metric", "value", "95% CI"], _interval_rows(list(zip(labels, stats.draw_intervals(per_class), strict=True)))),
                "<h2 id='logged'>As logged</h2>" + _table(["metric", "value"], [[html.escape(k), _number(v)]
                                                                              for k, v in sorted(data.logged.items())]),
                f"<h2 id='froc'>FROC</h2>{_image(_png_file(written[0]))}"]
    if data.drawn:
        sections.append(f"<h2 id='detections'>Detections</h2><p>Ground truth green, detections scoring at least "
                        f"{data.score_threshold:g} magenta.</p>{_image(_png_file(written[1]))}")
    rows = detection_image_rows(data, iou_index)
    columns = ["image", "boxes", "detections", "matched", "missed", "false positives"]
    sections.append(f"<h2 id='images'>Images, worst first</h2><p>Detections scoring at least {data.score_threshold:g};"
                    f" matched: to a ground-truth box of their class at IoU {iou:.2f}.</p>"
                    + _table(["image", "ground-truth boxes", f"detections >= {data.score_threshold:g}", "matched",
                              "missed", "false positives"],
                             [[html.escape(str(r["image"])), *(str(r[c]) for c in columns[1:])] for r in rows]))
    return [*written, _write_page(folder, title, sections)]


# -- sweeps over folds or seeds -------------------------------------------------------------------------------------
def write_sweep_page(runs: Sequence[Mapping], spread: Mapping[str, tuple[float, float, int]], folder: Path,
                     title: str, intro: str = "") -> Path:
    """``folder/index.html`` of a sweep that repeats one experiment: per metric each run's value (``runs``: rows
    with ``run`` and the metrics), the mean ± sample std (``spread``: ``summary.mean_and_std``) and the 95%
    interval of the mean (Student's t, n - 1 degrees of freedom)."""
    names = [html.escape(str(run["run"])) for run in runs]
    rows = []
    for metric, (mean, std, n) in spread.items():
        interval = stats.mean_interval(mean, std, n)
        values = [run.get(metric) for run in runs]
        rows.append([html.escape(metric), *(_number(v if isinstance(v, (int, float)) else None) for v in values),
                     f"{_number(mean)} ± {_number(std)}", f"{_number(interval.low)} - {_number(interval.high)}",
                     str(n)])
    sections = [f"<h1>{html.escape(title)}</h1><p>{html.escape(intro)} Mean ± sample standard deviation over the "
                "complete runs; the interval is the 95% confidence interval of the mean (t distribution with "
                "n - 1 degrees of freedom; cross-validation folds share training cases, so over folds it runs "
                "narrow).</p>",
                "<h2 id='metrics'>Metrics per run</h2>"
                + _table(["metric", *names, "mean ± std", "95% CI of the mean", "runs"], rows)]
    return _write_page(folder, title, sections)
