"""Pictures of a test evaluation (matplotlib, headless): ROC and FROC curves, the confusion matrix, overlays."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def foreground_slice(truth, predicted) -> int:
    """Of a 3D mask pair (``(H, W, D)`` numpy arrays or tensors), the slice along the last axis with the most
    ground-truth foreground; the prediction's if the truth is empty; the middle one if both are."""
    for mask in (truth, predicted):
        counts = (mask.reshape(-1, mask.shape[-1]) > 0).sum(0)
        if int(counts.max()) > 0:
            return int(counts.argmax())
    return truth.shape[-1] // 2


def display_rgb(image: np.ndarray) -> np.ndarray:
    """A ``(C, H, W)`` image in any intensity scale as ``(H, W, 3)`` uint8, stretched between its 0.5th and 99.5th
    percentiles (CT and z-scored MRI have no fixed display range)."""
    shown = np.asarray(image, dtype=np.float32)
    shown = np.repeat(shown[:1], 3, axis=0) if shown.shape[0] != 3 else shown
    low, high = np.percentile(shown, (0.5, 99.5))
    scaled = np.clip((shown - low) / max(float(high - low), 1e-6), 0, 1) * 255
    return np.moveaxis(scaled, 0, -1).astype(np.uint8)


def plot_roc(curves: Sequence[tuple[str, np.ndarray, np.ndarray]], path: Path, title: str = "ROC (test)") -> Path:
    """``curves``: (label, fpr, tpr) per class or label, or one for a binary task."""
    plt = _pyplot()
    many = len(curves) > 6  # the legend would hide the curves: it goes beside the axes
    fig, ax = plt.subplots(figsize=(7.5 if many else 4.5, 4.5), dpi=120)
    # matplotlib's default cycle repeats after 10 colours; ChestMNIST has 14 labels
    colours = plt.get_cmap("tab20").colors if len(curves) > 10 else [None] * len(curves)
    for (label, fpr, tpr), colour in zip(curves, colours, strict=False):
        auc = float(np.trapezoid(tpr, fpr))
        ax.plot(fpr, tpr, lw=1.5, color=colour, label=f"{label} (AUC {auc:.3f})")
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=0.8)
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", xlim=(0, 1), ylim=(0, 1.01), title=title)
    if many:
        ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1), fontsize=8, frameon=False)
    else:
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _draw_matrix(ax, matrix: np.ndarray, row_names: Sequence[str], column_names: Sequence[str], title: str) -> None:
    """Counts in their cells, true classes as rows, predicted as columns."""
    ax.imshow(matrix, cmap="Blues")
    middle = (matrix.min() + matrix.max()) / 2  # the colour scale spans min..max: white text on its darker half
    for i in range(matrix.shape[0]):
        for j in range(matrix.shape[1]):
            ax.text(j, i, int(matrix[i, j]), ha="center", va="center",
                    color="white" if matrix[i, j] > middle else "black")
    ax.set(xticks=range(len(column_names)), yticks=range(len(row_names)), xticklabels=column_names,
           yticklabels=row_names, xlabel="predicted", ylabel="true", title=title)


def plot_confusion_matrix(matrix: np.ndarray, class_names: Sequence[str], path: Path,
                          title: str = "Confusion matrix (test)") -> Path:
    plt = _pyplot()
    n = len(class_names)
    fig, ax = plt.subplots(figsize=(1.2 * n + 2.5, 1.2 * n + 2), dpi=120)
    _draw_matrix(ax, matrix, class_names, class_names, title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_label_confusion_matrices(matrices: np.ndarray, label_names: Sequence[str], path: Path,
                                  title: str = "Confusion matrix per label (test)") -> Path:
    """A multi-label task's ``(K, 2, 2)`` matrices (absent/present, at probability 0.5), one panel per label."""
    plt = _pyplot()
    columns = min(len(label_names), 5)
    rows = -(-len(label_names) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(2.4 * columns, 2.4 * rows + 0.4), dpi=120, squeeze=False)
    for ax, matrix, name in zip(axes.flat, matrices, label_names, strict=False):
        _draw_matrix(ax, matrix, ("absent", "present"), ("absent", "present"), name)
    for ax in axes.flat[len(label_names):]:
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_segmentation_overlay(image, truth, predicted, path: Path, title: str = "") -> Path:
    """Image | ground truth | prediction, side by side (image | prediction without a ground truth, ``truth=None``);
    3D volumes show the slice with the most foreground."""
    plt = _pyplot()
    masks = {} if truth is None else {"ground truth": np.asarray(truth, dtype=np.float32)}
    masks["prediction"] = predicted = np.asarray(predicted, dtype=np.float32)
    image = np.asarray(image, dtype=np.float32)
    if predicted.ndim == 3:  # (H, W, D): one slice along the last axis
        index = foreground_slice(masks.get("ground truth", predicted), predicted)
        image, masks = image[..., index], {name: mask[..., index] for name, mask in masks.items()}
    panels = [(None, "image"), *((mask, name) for name, mask in masks.items())]
    shown = display_rgb(image)
    fig, axes = plt.subplots(1, len(panels), figsize=(10 * len(panels) / 3, 3.6), dpi=110)
    for ax, (mask, name) in zip(axes, panels, strict=True):
        ax.imshow(shown)
        if mask is not None:
            ax.imshow(np.ma.masked_where(mask == 0, mask), cmap="autumn", alpha=0.6, interpolation="nearest")
        ax.set(title=name, xticks=[], yticks=[])
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_froc(fp_per_image: np.ndarray, sensitivity: np.ndarray, operating_points: Sequence[float], path: Path,
              title: str = "FROC (test)") -> Path:
    """Sensitivity against false positives per image (log axis), with the operating points read for the score."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 4), dpi=120)
    ax.step(np.maximum(fp_per_image, operating_points[0] / 2), sensitivity, where="post", lw=1.5)
    for point in operating_points:
        ax.axvline(point, ls=":", c="grey", lw=0.6)
    ax.set_xscale("log", base=2)
    ax.set(xlabel="false positives per image", ylabel="sensitivity", ylim=(0, 1.01), title=title,
           xlim=(operating_points[0] / 2, operating_points[-1] * 2))
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_detections(cases: Sequence[dict], class_names: Sequence[str], path: Path, score_thresh: float,
                    title: str = "Detections (test)") -> Path:
    """2D images with their ground-truth boxes (green) and the detections scoring at least ``score_thresh``
    (magenta, dashed, class and score written), one panel per case: ``{"image": (C, H, W), "box" (optional), "label",
    "pred_box", "pred_label", "pred_score"}``, boxes in MONAI's standard mode (row_min, col_min, row_max, col_max)."""
    plt = _pyplot()
    from matplotlib.patches import Rectangle

    columns = min(len(cases), 2)
    rows = -(-len(cases) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(6 * columns, 4.6 * rows), dpi=110, squeeze=False)
    for ax, case in zip(axes.flat, cases, strict=False):
        ax.imshow(display_rgb(case["image"]))
        for (r0, c0, r1, c1) in np.asarray(case.get("box", ())).reshape(-1, 4):  # none on new images
            ax.add_patch(Rectangle((c0, r0), c1 - c0, r1 - r0, fill=False, ec="lime", lw=1.4))
        keep = np.asarray(case["pred_score"]) >= score_thresh
        for (r0, c0, r1, c1), label, score in zip(np.asarray(case["pred_box"]).reshape(-1, 4)[keep],
                                                   np.asarray(case["pred_label"])[keep],
                                                   np.asarray(case["pred_score"])[keep], strict=True):
            ax.add_patch(Rectangle((c0, r0), c1 - c0, r1 - r0, fill=False, ec="magenta", lw=1.1, ls="--"))
            ax.text(c0, r0, f"{class_names[int(label)]} {score:.2f}", color="magenta", fontsize=6, va="bottom")
        ax.set(xticks=[], yticks=[], title=case.get("case_id", ""))
    for ax in axes.flat[len(cases):]:
        ax.axis("off")
    truth = "ground truth (green), " if any("box" in case for case in cases) else ""
    fig.suptitle(f"{title}: {truth}detections scoring >= {score_thresh:g} (magenta, dashed)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
