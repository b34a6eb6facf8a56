"""The run report: bootstrap intervals that cover a known AUROC at their stated rate, ECE and Youden's J on
constructed cases, and a page that holds every section, self-contained."""
from __future__ import annotations

import re

import numpy as np
import pytest
from scipy.stats import norm

from medexp.reports import stats
from medexp.reports.classification_page import ClassificationReportData, write_classification_page


def scores_with_auc(rng, n_pos: int, n_neg: int, separation: float):
    """Gaussian scores whose population AUROC is Phi(separation / sqrt 2)."""
    labels = np.r_[np.ones(n_pos, int), np.zeros(n_neg, int)]
    scores = np.r_[rng.normal(separation, 1, n_pos), rng.normal(0, 1, n_neg)]
    return labels, scores


def test_auroc_matches_the_pairwise_definition_with_ties():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 300)
    scores = rng.integers(0, 5, 300).astype(float)  # many ties
    pos, neg = scores[labels == 1], scores[labels == 0]
    pairwise = ((pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()) / (len(pos) * len(neg))
    assert stats.auroc(labels, scores) == pytest.approx(pairwise)


def test_bootstrap_interval_covers_the_true_auroc_at_about_95_percent():
    rng = np.random.default_rng(0)
    truth = float(norm.cdf(1.0 / np.sqrt(2)))  # 0.760
    covered, trials = 0, 150
    for trial in range(trials):
        labels, scores = scores_with_auc(rng, 60, 90, 1.0)
        probabilities = np.c_[1 - norm.cdf(scores), norm.cdf(scores)]  # monotone in the score: same AUROC
        interval = stats.bootstrap_intervals(labels, probabilities, resamples=400, seed=trial,
                                             metrics=lambda y, p: {"auroc": stats.auroc(y, p[:, 1])})["auroc"]
        covered += interval.low <= truth <= interval.high
    # binomial sd at 0.95 over 150 trials is 0.018; the percentile bootstrap runs slightly narrow at n=150
    assert 0.88 <= covered / trials <= 0.99, covered / trials


def test_bootstrap_is_seeded_and_stratified():
    labels = np.r_[np.ones(5, int), np.zeros(95, int)]
    probabilities = np.c_[np.linspace(1, 0, 100), np.linspace(0, 1, 100)]
    first = stats.bootstrap_intervals(labels, probabilities, seed=3)
    assert first == stats.bootstrap_intervals(labels, probabilities, seed=3)
    resamples = stats.stratified_resamples(labels, 50, seed=0)
    assert (labels[resamples].sum(axis=1) == 5).all()  # every resample keeps the 5 positives' count


def test_ece_of_constructed_cases():
    rng = np.random.default_rng(0)
    confidence = rng.uniform(0.5, 1.0, 200_000)
    right = rng.uniform(size=confidence.size) < confidence  # calibrated by construction
    labels = np.where(right, 1, 0)
    probabilities = np.c_[1 - confidence, confidence]  # predicted class 1 with probability `confidence`
    ece, bins = stats.calibration(labels, probabilities)
    assert ece < 0.01 and sum(b["count"] for b in bins) == confidence.size
    # always 0.9 sure, right half of the time: ECE = |0.5 - 0.9| = 0.4
    overconfident = np.tile([[0.1, 0.9]], (1000, 1))
    ece, _ = stats.calibration(np.r_[np.ones(500, int), np.zeros(500, int)], overconfident)
    assert ece == pytest.approx(0.4)


def test_youden_threshold_separates_a_separable_case():
    labels = np.array([0, 0, 0, 1, 1])
    scores = np.array([0.1, 0.2, 0.35, 0.4, 0.9])
    assert stats.youden_threshold(labels, scores) == pytest.approx(0.4)


def report_data(classes: int = 2) -> ClassificationReportData:
    rng = np.random.default_rng(0)

    def split(n):
        labels = rng.integers(0, classes, n)
        logits = rng.normal(size=(n, classes)) + 2 * np.eye(classes)[labels]
        probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        return labels, probs

    val_labels, val_probs = split(60)
    test_labels, test_probs = split(50)
    images = rng.integers(0, 255, (50, 1, 16, 16), dtype=np.uint8)
    cams = {0: rng.uniform(size=(16, 16)), 1: rng.uniform(size=(16, 16))}
    return ClassificationReportData([f"c{i}" for i in range(classes)], val_labels, val_probs, test_labels,
                                    test_probs, images, cams)


@pytest.mark.parametrize("classes", [2, 3])
def test_page_holds_every_section_and_nothing_external(tmp_path, classes):
    page = write_classification_page(report_data(classes), tmp_path, "Test report: x").read_text()
    for section in ("metrics", "curves", "calibration", "confusion", "per-class", "cases", "gradcam"):
        assert f"id='{section}'" in page
    assert "95% CI" in page and "Expected calibration error" in page
    assert ("Youden-J threshold chosen on validation" in page) == (classes == 2)
    assert page.count("data:image/png;base64,") >= 2 + 40 + 2  # curves, reliability, thumbnails, CAMs
    assert not re.search(r"(src|href)=['\"](?!data:)", page)  # nothing to fetch: opens offline
