"""``report/index.html`` of a classification run: one self-contained page (figures inlined as base64 PNG, no
scripts, no network) that opens offline and travels as one MLflow artifact.

Sections: test metrics with 95% stratified bootstrap intervals; ROC and precision-recall curves; calibration (ECE and
a reliability diagram); confusion matrices at 0.5 and at the Youden-J threshold chosen on validation (binary tasks);
per-class metrics; a per-case table, worst first, with thumbnails; Grad-CAM overlays of the worst and best cases.

Grad-CAM is MONAI's (``monai.visualize.GradCAM``): MONAI is already a dependency and its CAM takes the layer by name
for any of medexp's 2D/3D networks; the ``grad-cam`` package would add a dependency for the same map.
"""
from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medexp.reports import stats

WORST_SHOWN = 40  # rows of the per-case table
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


# -- the page -------------------------------------------------------------------------------------------------------
def _png(figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(figure)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _thumbnail(image: np.ndarray, cam: np.ndarray | None = None, size: int = 84) -> str:
    """A stored image (``(C, H, W)``, 0-255) as an inline PNG, the Grad-CAM map blended over it if given; drawn
    with PIL, not matplotlib: 40 figures would cost the run seconds."""
    from matplotlib import colormaps
    from PIL import Image

    pixels = np.clip(image, 0, 255).astype(np.uint8)
    rgb = np.repeat(pixels, 3, axis=0) if pixels.shape[0] == 1 else pixels[:3]
    rgb = np.moveaxis(rgb, 0, -1).astype(np.float32)
    if cam is not None:
        heat = colormaps["jet"](np.clip(cam, 0, 1))[..., :3] * 255
        rgb = 0.6 * rgb + 0.4 * heat
    picture = Image.fromarray(rgb.astype(np.uint8)).resize((size, size), Image.NEAREST)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


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


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


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
    sections.append("<h2 id='metrics'>Test metrics</h2>" + _table(
        ["metric", "value", "95% CI"],
        [[name, f"{i.value:.4f}", f"{i.low:.4f} - {i.high:.4f}"] for name, i in intervals.items()]))
    sections.append(f"<h2 id='curves'>ROC and precision-recall</h2><img src='{_curves(data)}'>")
    sections.append(f"<h2 id='calibration'>Calibration</h2><p>Expected calibration error (10 bins): {ece:.4f}</p>"
                    f"<img src='{_reliability(bins, ece)}'>")
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
    rows = [[str(i), f"<img src='{_thumbnail(data.test_images[i])}'>", html.escape(names[labels[i]]),
             html.escape(names[predicted[i]]), f"{probs[i, labels[i]]:.4f}"] for i in order[:WORST_SHOWN]]
    sections.append(f"<h2 id='cases'>Cases, worst first ({min(WORST_SHOWN, len(order))} of {len(order)})</h2>"
                    + _table(["case", "image", "label", "predicted", "probability of the label"], rows))
    cams = [f"<figure><img src='{_thumbnail(data.test_images[i], cam, 168)}'><figcaption>case {i}: "
            f"{html.escape(names[labels[i]])}, predicted {html.escape(names[predicted[i]])} "
            f"({probs[i, predicted[i]]:.2f})</figcaption></figure>" for i, cam in data.cams.items()]
    sections.append("<h2 id='gradcam'>Grad-CAM (MONAI), worst then best cases</h2>"
                    f"<div class='cams'>{''.join(cams)}</div>")
    folder.mkdir(parents=True, exist_ok=True)
    page = folder / "index.html"
    page.write_text("<!doctype html><html><head><meta charset='utf-8'><title>" + html.escape(title) + "</title>"
                    "<style>body{font-family:sans-serif;margin:2em;max-width:1100px} table{border-collapse:collapse;"
                    "margin:.5em 0} td,th{border:1px solid #ccc;padding:2px 8px;font-size:13px} td img{display:block}"
                    " .cams{display:flex;flex-wrap:wrap;gap:1em} figcaption{font-size:12px;max-width:180px}</style>"
                    "</head><body>" + "".join(sections) + "</body></html>")
    return page


def write_test_page(task, datamodule, folder: Path, title: str) -> list[Path]:
    """The page for a tested run where there is one (single-label classification on in-memory sets so far)."""
    from medexp.export.model import is_deployable

    if not is_deployable(datamodule, task) or task.multi_label:
        return []
    return [write_classification_page(collect_classification(task, datamodule), folder, title)]
