"""Numbers a report stands on: classification metrics from probabilities, stratified bootstrap confidence intervals,
calibration (ECE, reliability bins), the Youden-J threshold; per-case bootstrap intervals of means (segmentation) and of
COCO average precision (detection); the t interval of a mean over repeated runs (sweeps). Plain numpy, vectorised
over resamples.

Definitions follow MedMNIST's evaluator: a binary task scores the positive class's probability (accuracy at 0.5),
a multi-class task the argmax and the one-vs-rest AUROC averaged over classes.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

RESAMPLES = 1000
LEVEL = 0.95


def auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` for ``labels`` (0/1) by the rank-sum (ties counted half); NaN if a
    class is missing."""
    positives = labels == 1
    n_pos, n_neg = int(positives.sum()), int((~positives).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    # average ranks over ties
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    average = first + (counts + 1) / 2.0
    ranks[order] = np.repeat(average, counts)
    return float((ranks[positives].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def classification_metrics(labels: np.ndarray, probabilities: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """AUROC, accuracy, balanced accuracy, sensitivity, specificity, F1 (binary: positive class at ``threshold``;
    multi-class: argmax, macro one-vs-rest AUROC and macro recall)."""
    classes = probabilities.shape[1]
    if classes == 2:
        scores = probabilities[:, 1]
        predicted = (scores >= threshold).astype(int)
        tp = int(((predicted == 1) & (labels == 1)).sum())
        tn = int(((predicted == 0) & (labels == 0)).sum())
        fp = int(((predicted == 1) & (labels == 0)).sum())
        fn = int(((predicted == 0) & (labels == 1)).sum())
        sensitivity = tp / (tp + fn) if tp + fn else float("nan")
        specificity = tn / (tn + fp) if tn + fp else float("nan")
        return {"auroc": auroc(labels, scores), "accuracy": (tp + tn) / len(labels),
                "balanced_accuracy": (sensitivity + specificity) / 2, "sensitivity": sensitivity,
                "specificity": specificity, "f1": 2 * tp / (2 * tp + fp + fn) if tp else 0.0}
    predicted = probabilities.argmax(axis=1)
    recalls = [float((predicted[labels == c] == c).mean()) for c in range(classes) if (labels == c).any()]
    return {"auroc": float(np.nanmean([auroc((labels == c).astype(int), probabilities[:, c]) for c in range(classes)])),
            "accuracy": float((predicted == labels).mean()), "balanced_accuracy": float(np.mean(recalls))}


@dataclass(frozen=True)
class Interval:
    value: float
    low: float
    high: float


def stratified_resamples(labels: np.ndarray, resamples: int = RESAMPLES, seed: int = 0) -> np.ndarray:
    """``(resamples, N)`` indices, each resample drawn with replacement within each class (so every resample keeps
    the class counts and AUROC stays defined)."""
    rng = np.random.default_rng(seed)
    columns = [rng.choice(np.flatnonzero(labels == c), size=(resamples, int((labels == c).sum())))
               for c in np.unique(labels)]
    return np.concatenate(columns, axis=1)


def bootstrap_intervals(labels: np.ndarray, probabilities: np.ndarray,
                        metrics: Callable[[np.ndarray, np.ndarray], dict[str, float]] = classification_metrics,
                        resamples: int = RESAMPLES, level: float = LEVEL, seed: int = 0) -> dict[str, Interval]:
    """Each metric with its percentile bootstrap interval (stratified by class, ``resamples`` resamples, seeded)."""
    point = metrics(labels, probabilities)
    draws = [metrics(labels[idx], probabilities[idx]) for idx in stratified_resamples(labels, resamples, seed)]
    tail = (1 - level) / 2 * 100
    return {name: Interval(value, *np.nanpercentile([d[name] for d in draws], [tail, 100 - tail]))
            for name, value in point.items()}


def calibration(labels: np.ndarray, probabilities: np.ndarray, bins: int = 10) -> tuple[float, list[dict]]:
    """Expected calibration error of the predicted class's probability (confidence) against being right, over
    ``bins`` equal-width bins, and the bins (for a reliability diagram)."""
    confidence = probabilities.max(axis=1)
    correct = (probabilities.argmax(axis=1) == labels).astype(float)
    edges = np.linspace(0, 1, bins + 1)
    index = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    table, ece = [], 0.0
    for b in range(bins):
        members = index == b
        if not members.any():
            continue
        accuracy, mean_confidence = float(correct[members].mean()), float(confidence[members].mean())
        ece += members.mean() * abs(accuracy - mean_confidence)
        table.append({"low": float(edges[b]), "high": float(edges[b + 1]), "count": int(members.sum()),
                      "accuracy": accuracy, "confidence": mean_confidence})
    return float(ece), table


def youden_threshold(labels: np.ndarray, scores: np.ndarray) -> float:
    """The score threshold maximising sensitivity + specificity - 1 (predict positive at ``score >= t``)."""
    candidates = np.unique(scores)
    positives, negatives = max(int((labels == 1).sum()), 1), max(int((labels == 0).sum()), 1)
    at_or_above = scores[None, :] >= candidates[:, None]
    j = (at_or_above & (labels == 1)).sum(axis=1) / positives - (at_or_above & (labels == 0)).sum(axis=1) / negatives
    return float(candidates[int(np.argmax(j))])


def confusion(labels: np.ndarray, predicted: np.ndarray, classes: int) -> np.ndarray:
    """Rows: true class; columns: predicted class."""
    return np.bincount(labels * classes + predicted, minlength=classes * classes).reshape(classes, classes)


def roc_points(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(false positive rate, true positive rate) at every threshold, from (0, 0) to (1, 1)."""
    order = np.argsort(-scores, kind="mergesort")
    hits = labels[order] == 1
    tpr = np.concatenate([[0], np.cumsum(hits) / max(hits.sum(), 1)])
    fpr = np.concatenate([[0], np.cumsum(~hits) / max((~hits).sum(), 1)])
    return fpr, tpr


def pr_points(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(recall, precision) at every threshold, highest score first."""
    order = np.argsort(-scores, kind="mergesort")
    hits = (labels[order] == 1).astype(float)
    true_positives = np.cumsum(hits)
    return true_positives / max(hits.sum(), 1), true_positives / np.arange(1, len(hits) + 1)


# -- per-case bootstrap (segmentation, detection) and the mean of repeated runs (sweeps) --------------------------
def case_weights(cases: int, resamples: int = RESAMPLES, seed: int = 0) -> np.ndarray:
    """``(resamples, cases)`` counts: how often each case is drawn in each bootstrap resample (with replacement).
    Counts, not index lists, so a resampled mean or AP is a weighted one, vectorised over resamples."""
    return np.random.default_rng(seed).multinomial(cases, np.full(cases, 1 / cases), size=resamples)


def case_mean_draws(values: np.ndarray, resamples: int = RESAMPLES, seed: int = 0) -> np.ndarray:
    """``(1 + resamples, columns)``: each column's mean over the cases (rows) where it is finite, first over all
    cases, then over each bootstrap resample of the cases (seeded): Dice or HD95 per structure, one row per case."""
    finite = np.isfinite(values)
    weights = np.vstack([np.ones(len(values)), case_weights(len(values), resamples, seed)])
    with np.errstate(invalid="ignore", divide="ignore"):  # a column without finite values has no mean
        return (weights @ np.where(finite, values, 0.0)) / (weights @ finite)


def draw_intervals(draws: np.ndarray, level: float = LEVEL) -> list[Interval]:
    """Per column of ``draws`` (row 0 the value, the other rows its bootstrap resamples) the value and its
    percentile interval; NaN bounds where no resample is finite."""
    tail = (1 - level) / 2 * 100
    intervals = []
    for column in draws.T:
        value, resampled = float(column[0]), column[1:][np.isfinite(column[1:])]
        if not np.isfinite(value) or resampled.size == 0:
            intervals.append(Interval(value, float("nan"), float("nan")))
        else:
            intervals.append(Interval(value, *(float(p) for p in np.percentile(resampled, [tail, 100 - tail]))))
    return intervals


def average_precision(matches: Sequence[Mapping[int, Mapping[str, np.ndarray]]], cls: int, iou_index: int,
                      weights: np.ndarray, max_detections: int = 100, recall_points: int = 101) -> np.ndarray:
    """COCO average precision of class ``cls`` at IoU threshold ``iou_index`` (101-point interpolation, as MONAI's
    ``COCOMetric``) from MONAI's per-image ``matching_batch`` results, for each row of ``weights`` (``(R, images)``
    counts, a bootstrap resample each; a row of ones is the plain AP). NaN where a row holds no ground truth."""
    scores, hits, counted, image_of = [np.zeros(0)], [np.zeros(0, bool)], [np.zeros(0, bool)], [np.zeros(0, int)]
    truths = np.zeros(len(matches))
    for i, image in enumerate(matches):
        if cls not in image:
            continue
        found = image[cls]
        scores.append(found["dtScores"][:max_detections])
        hits.append(found["dtMatches"][iou_index, :max_detections].astype(bool))
        counted.append(~found["dtIgnore"][iou_index, :max_detections].astype(bool))
        image_of.append(np.full(len(scores[-1]), i))
        truths[i] = np.count_nonzero(found["gtIgnore"] == 0)
    order = np.argsort(-np.concatenate(scores), kind="mergesort")
    hit, use, image = (np.concatenate(a)[order] for a in (hits, counted, image_of))
    thresholds = np.linspace(0.0, 1.0, recall_points)
    ap = np.full(len(weights), np.nan)
    for start in range(0, len(weights), 100):  # 100 resamples at a time: (100, detections) arrays stay small
        rows = weights[start : start + 100]
        drawn = rows[:, image].astype(np.float32)  # each detection weighs as often as its image was drawn
        tp = np.cumsum(drawn * (hit & use), axis=1, dtype=np.float32)
        fp = np.cumsum(drawn * (~hit & use), axis=1, dtype=np.float32)
        total = (rows @ truths).astype(np.float32)
        precision = tp / (fp + tp + np.spacing(1))
        precision = np.maximum.accumulate(precision[:, ::-1], axis=1)[:, ::-1]  # envelope: best precision further on
        for r in np.flatnonzero(total > 0):
            at = np.searchsorted(tp[r] / total[r], thresholds, side="left")
            ap[start + r] = precision[r, at[at < len(hit)]].sum() / recall_points  # recall never reached: 0
    return ap


def mean_interval(mean: float, std: float, n: int, level: float = LEVEL) -> Interval:
    """The ``level`` confidence interval of a mean from ``n`` values with sample standard deviation ``std``
    (Student's t with n - 1 degrees of freedom): the spread of a result over folds or seeds."""
    from scipy.stats import t

    half = float(t.ppf((1 + level) / 2, n - 1)) * std / np.sqrt(n) if n > 1 else float("nan")
    return Interval(mean, mean - half, mean + half)


def with_overall(draws: np.ndarray) -> np.ndarray:
    """Per-structure bootstrap means with their mean over structures in front: the figure the run logs (MONAI's
    mean over cases per structure, then over structures)."""
    import warnings

    with warnings.catch_warnings():  # a resample without any finite HD95 has no mean
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.column_stack([np.nanmean(draws, axis=1), draws])
