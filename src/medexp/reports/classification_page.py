"""The classification page of a tested run: test metrics with 95% stratified bootstrap intervals; ROC and
precision-recall curves; calibration (ECE and a reliability diagram); confusion matrices at 0.5 and at the Youden-J
threshold chosen on validation (binary tasks); per-class metrics; a per-case table, worst first, with thumbnails;
Grad-CAM (``medexp.reports.saliency``) of the worst and best."""
from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medexp.reports import stats
from medexp.reports.html_helpers import (
    figure_tag,
    img_tag,
    interval_rows,
    png_uri,
    table_html,
    thumbnail_uri,
    write_page,
)
from medexp.reports.saliency import grad_cam

WORST_SHOWN = 40  # rows of the classification per-case table
CAM_CASES = 4  # worst and best cases with Grad-CAM overlays


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
    """Run the task (as tested: its mirrored copies averaged) over the in-memory validation and test splits;
    Grad-CAM for the worst and best test cases."""
    import torch

    def probabilities(split: str) -> tuple[np.ndarray, np.ndarray]:
        images, labels = datamodule.tensors[split]
        with torch.no_grad():
            probs = torch.cat([task.predict_probabilities(datamodule.standardise(images[i : i + 512].to(task.device)))
                               for i in range(0, len(images), 512)])
        return labels.cpu().numpy(), probs.cpu().numpy()

    was_training = task.training
    task.eval()
    val_labels, val_probs = probabilities("val")
    test_labels, test_probs = probabilities("test")
    order = worst_first(test_labels, test_probs)
    chosen = [*order[:CAM_CASES], *order[::-1][:CAM_CASES]]
    inputs = datamodule.standardise(datamodule.tensors["test"][0][chosen].to(task.device))
    cams = grad_cam(task.net, inputs, test_probs[chosen].argmax(1))
    task.train(was_training)
    return ClassificationReportData(list(task.class_names), val_labels, val_probs, test_labels, test_probs,
                                    np.asarray(datamodule.arrays.images["test"]), dict(zip(chosen, cams, strict=True)))


def worst_first(labels: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    """Test indices by the probability given to the true class, lowest (worst) first."""
    return np.argsort(probabilities[np.arange(len(labels)), labels], kind="mergesort")


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
    return png_uri(figure)


def _reliability(bins: list[dict], ece: float) -> str:
    import matplotlib.pyplot as plt

    figure, ax = plt.subplots(figsize=(4, 4))
    ax.bar([b["low"] for b in bins], [b["accuracy"] for b in bins], width=[b["high"] - b["low"] for b in bins],
           align="edge", edgecolor="black", alpha=0.7, label="accuracy")
    ax.plot([0, 1], [0, 1], ":", color="gray", label="perfect calibration")
    ax.set(xlabel="confidence (predicted class probability)", ylabel="accuracy",
           title=f"Reliability (test), ECE {ece:.3f}")
    ax.legend(fontsize=8)
    return png_uri(figure)


def _matrix(matrix: np.ndarray, names: list[str]) -> str:
    return table_html(["true \\ predicted", *names],
                  [[html.escape(name), *map(str, row)] for name, row in zip(names, matrix.tolist(), strict=True)])


def write_classification_page(data: ClassificationReportData, folder: Path, title: str = "Test report",
                              about: str = "") -> Path:
    """Write ``folder/index.html``; return its path."""
    names, labels, probs = data.class_names, data.test_labels, data.test_probabilities
    classes = len(names)
    intervals = stats.bootstrap_intervals(labels, probs)
    ece, bins = stats.calibration(labels, probs)
    sections = [f"<h1>{html.escape(title)}</h1><p>{len(labels)} test cases, {len(data.val_labels)} validation "
                "cases. Intervals: 95% percentile bootstrap, 1,000 resamples stratified by class, seed 0.</p>"]
    sections.append("<h2 id='metrics'>Test metrics</h2>" + table_html(["metric", "value", "95% CI"],
                                                                   interval_rows(list(intervals.items()))))
    sections.append(f"<h2 id='curves'>ROC and precision-recall</h2>{img_tag(_curves(data))}")
    sections.append(f"<h2 id='calibration'>Calibration</h2><p>Expected calibration error (10 bins): {ece:.4f}</p>"
                    f"{img_tag(_reliability(bins, ece))}")
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
    sections.append("<h2 id='per-class'>Per class</h2>" + table_html(
        ["class", "cases", "precision", "recall", "F1", "AUROC (one vs rest)"], per_class))
    order = worst_first(labels, probs)
    rows = [[str(i), img_tag(thumbnail_uri(data.test_images[i])), html.escape(names[labels[i]]),
             html.escape(names[predicted[i]]), f"{probs[i, labels[i]]:.4f}"] for i in order[:WORST_SHOWN]]
    sections.append(f"<h2 id='cases'>Cases, worst first ({min(WORST_SHOWN, len(order))} of {len(order)})</h2>"
                    + table_html(["case", "image", "label", "predicted", "probability of the label"], rows))
    cams = [figure_tag(thumbnail_uri(data.test_images[i], cam, 168), f"case {i}: {html.escape(names[labels[i]])}, predicted "
                    f"{html.escape(names[predicted[i]])} ({probs[i, predicted[i]]:.2f})") for i, cam in data.cams.items()]
    sections.append("<h2 id='gradcam'>Grad-CAM (MONAI), worst then best cases</h2>"
                    f"<div class='cams'>{''.join(cams)}</div>")
    return write_page(folder, title, sections, about)
