"""report/index.html: classification (every section, self-contained), segmentation (Dice/HD95 per case with bootstrap intervals and overlays,
the validation of the kept checkpoint when there is no test split), detection (AP per class with intervals over
images, per-image table) and a sweep over seeds or folds (mean ± std and the t interval of the mean)."""
from __future__ import annotations

import html
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from medexp.reports import stats
from medexp.reports.classification_page import ClassificationReportData, write_classification_page
from medexp.reports.detection_page import DetectionReportData, write_detection_page
from medexp.reports.plots import foreground_slice
from medexp.reports.segmentation_page import SegmentationCases, write_segmentation_page
from medexp.reports.sweep_page import write_sweep_page
from medexp.workflows.train import run_experiment
from tests.fixtures_data import write_chase_like, write_decathlon_like

QUIET = ["callbacks.progress_bar.refresh_rate=0"]
URI = re.compile(r"data:image/png;base64,[A-Za-z0-9+/=]+")


def section(page: str, name: str) -> str:
    """The HTML of section ``id=name`` up to the next section."""
    start = page.index(f"<h2 id='{name}'>")
    end = page.find("<h2 id=", start + 1)
    return page[start : end if end > 0 else len(page)]


def table_rows(part: str) -> list[list[str]]:
    """Data rows of the first table in ``part``: each cell's text, an image cell as 'IMG'."""
    rows = re.findall(r"<tr>(.*?)</tr>", part)[1:]
    return [[("IMG" if "<img" in cell else html.unescape(cell)) for cell in re.findall(r"<td>(.*?)</td>", row)]
            for row in rows]


def metric_rows(page: str) -> dict[str, tuple[float, float, float]]:
    """The metrics table: name -> (value, low, high); NaN for "n/a"."""
    out = {}
    for name, value, interval in table_rows(section(page, "metrics")):
        out[name] = tuple(float("nan") if v == "n/a" else float(v) for v in (value, *interval.split(" - ")))
    return out


def assert_self_contained(page: str) -> None:
    assert not re.search(r"(src|href)=['\"](?!data:)", page)  # nothing to fetch: opens offline


def run_artifacts(tracking_uri: str) -> list[str]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    return [a.path for a in client.list_artifacts(run.info.run_id, "report")]


# -- segmentation -------------------------------------------------------------------------------------------------
def test_a_2d_run_reports_test_dice_per_case_worst_first_with_overlays(make_cfg, tmp_path, tracking_uri):
    root = write_chase_like(tmp_path / "chase")
    cfg = make_cfg("data=chasedb1", f"data.root={root}", "model=unet", "task=segmentation",
                   "data.split.test_patients=['05','06']", "data.split.val_count=1", "data.patch_size=[32,32]",
                   "data.samples_per_image=2", "trainer.max_epochs=1", *QUIET)
    metrics = run_experiment(cfg)
    page = (Path(cfg.paths.output_dir) / "report" / "index.html").read_text()
    assert "<h1>Test report" in page and "95% percentile bootstrap over cases, 1,000 resamples" in page
    shown = metric_rows(page)
    for name, logged in (("Dice", "test/dice"), ("HD95", "test/hd95")):  # the run's own figures, with intervals
        value, low, high = shown[name]
        assert value == pytest.approx(metrics[logged], abs=1e-4) and low <= value <= high
    rows = table_rows(section(page, "cases"))
    assert {row[0] for row in rows} == {"Image_05L", "Image_05R", "Image_06L", "Image_06R"}  # ids: file names
    dice = [float(row[2]) for row in rows]
    assert dice == sorted(dice)  # worst first
    assert all(row[1] == "IMG" for row in rows)  # 4 cases: all among the 4 worst / 4 best pictured
    assert len(URI.findall(section(page, "overlays"))) == 4
    assert_self_contained(page)
    assert "report/index.html" in run_artifacts(tracking_uri)


def test_without_a_test_split_the_page_reports_the_validation_of_the_kept_checkpoint(make_cfg, tmp_path,
                                                                                   tracking_uri):
    root = write_decathlon_like(tmp_path / "Task", n_cases=6).parent
    cfg = make_cfg("data=decathlon", f"data.root={root}", "model=unet", "task=segmentation", "data.num_classes=3",
                   "data.preprocessing.spacing=[3.0,3.0,3.0]", "data.preprocessing.clip_percentiles=null",
                   "data.patch_size=[8,8,8]", "data.samples_per_image=2", "data.split.val_ratio=0.34",
                   "data.split.test_ratio=0", "model.channels=[8,16]", "model.strides=[2]", "model.num_res_units=0",
                   "trainer.max_epochs=3", "optimizer.lr=1e-2", "augmentation=none", "task.hd95_stages=[val]",
                   "test=false", *QUIET)
    metrics = run_experiment(cfg)
    page = (Path(cfg.paths.output_dir) / "report" / "index.html").read_text()
    assert "<h1>Validation report" in page and "the checkpoint kept" in page
    shown = metric_rows(page)
    # the kept checkpoint's validation: its Dice is the best one, whichever epoch was last
    assert shown["Dice (mean of structures)"][0] == pytest.approx(metrics["best/val/dice"], abs=1e-4)
    assert {"Dice 1", "Dice 2", "HD95 1", "HD95 2"} <= set(shown)
    rows = table_rows(section(page, "cases"))
    assert len(rows) == 2 and all(row[1] == "IMG" for row in rows)  # 3D: a slice each
    assert "report/index.html" in run_artifacts(tracking_uri)


def test_only_the_worst_and_best_cases_keep_a_picture():
    rng = np.random.default_rng(0)
    cases = SegmentationCases(pictured=3)
    scores = rng.permutation(30) / 30
    image, mask = torch.zeros(1, 6, 6), torch.zeros(6, 6, dtype=torch.long)
    for i, score in enumerate(scores):
        cases.add(f"c{i}", np.array([score, score]), None, image, mask, mask)
    assert len(cases.rows) == 30 and len(cases.pictures) == 6
    order = np.argsort(scores)
    assert {p[1] for p in cases.pictures} == {f"c{i}" for i in [*order[:3], *order[-3:]]}
    # DDP: each rank's share merged, a padded duplicate counted once, the extremes chosen again
    other = SegmentationCases(pictured=3)
    other.add("c-low", np.array([-1.0, -1.0]), None, image, mask, mask)
    other.add("c0", np.array([scores[0], scores[0]]), None, image, mask, mask)
    merged = SegmentationCases.merged([cases, other])
    assert len(merged.rows) == 31 and merged.pictures[0][1] == "c-low" and len(merged.pictures) == 6


def test_a_3d_overlay_shows_the_slice_with_the_most_foreground():
    truth, predicted = np.zeros((4, 4, 5)), np.zeros((4, 4, 5))
    truth[:2, :2, 1], truth[:, :, 3] = 1, 1
    predicted[:, :, 4] = 1
    assert foreground_slice(truth, predicted) == 3
    assert foreground_slice(np.zeros_like(truth), predicted) == 4  # no ground truth: the prediction's
    assert foreground_slice(np.zeros_like(truth), np.zeros_like(truth)) == 2  # neither: the middle


def test_segmentation_intervals_ignore_missing_hd95_and_are_seeded(tmp_path):
    rng = np.random.default_rng(1)
    dice = rng.uniform(0.5, 0.9, (40, 2))
    hd95 = rng.uniform(1, 5, (40, 2))
    hd95[:5, 1] = np.inf  # empty prediction: MONAI's HD95 is infinite
    hd95[5:8, 1] = np.nan  # empty ground truth
    cases = SegmentationCases()
    image, mask = torch.zeros(1, 4, 4), torch.zeros(4, 4, dtype=torch.long)
    for i in range(40):
        cases.add(f"c{i:02d}", dice[i], hd95[i], image, mask, mask)
    data = cases.report("test", ["head", "tail"])
    shown = metric_rows(write_segmentation_page(data, tmp_path / "a", "Test report").read_text())
    assert shown["Dice head"][0] == pytest.approx(dice[:, 0].mean(), abs=1e-4)
    assert shown["HD95 tail"][0] == pytest.approx(hd95[8:, 1].mean(), abs=1e-4)  # finite cases only
    assert shown["HD95 (mean of structures)"][0] == pytest.approx((hd95[:, 0].mean() + hd95[8:, 1].mean()) / 2,
                                                                  abs=1e-4)
    assert shown == metric_rows(write_segmentation_page(data, tmp_path / "b", "Test report").read_text())
    low, high = shown["Dice (mean of structures)"][1:]
    sd = dice.mean(axis=1).std(ddof=1) / np.sqrt(40)  # the bootstrap interval is about +-2 standard errors
    assert high - low == pytest.approx(2 * 1.96 * sd, rel=0.3)


# -- detection ----------------------------------------------------------------------------------------------------
def random_matches(rng, images: int, classes: int = 3):
    from monai.apps.detection.metrics.coco import COCOMetric
    from monai.apps.detection.metrics.matching import matching_batch
    from monai.data.box_utils import box_iou

    def boxes(n):
        low = rng.uniform(0, 50, (n, 2))
        return np.c_[low, low + rng.uniform(5, 15, (n, 2))]

    truth, truth_classes, found, found_classes, scores = [], [], [], [], []
    for _ in range(images):
        truth.append(boxes(rng.integers(0, 4)))
        truth_classes.append(rng.integers(0, classes, len(truth[-1])))
        extra = boxes(rng.integers(0, 4))
        found.append(np.r_[truth[-1] + rng.uniform(-2, 2, truth[-1].shape), extra])  # boxes stay valid
        found_classes.append(np.r_[truth_classes[-1], rng.integers(0, classes, len(extra))])
        scores.append(rng.uniform(0, 1, len(found[-1])))
    coco = COCOMetric(classes=[f"k{c}" for c in range(classes)], iou_list=(0.1, 0.5, 0.75), iou_range=(0.1, 0.5, 0.05),
                      max_detection=(1, 5, 100), per_class=True, verbose=False)

    def match(index):
        return matching_batch(iou_fn=box_iou, iou_thresholds=coco.iou_thresholds,
                              pred_boxes=[found[i] for i in index], pred_classes=[found_classes[i] for i in index],
                              pred_scores=[scores[i] for i in index], gt_boxes=[truth[i] for i in index],
                              gt_classes=[truth_classes[i] for i in index], max_detections=100)

    return coco, match


def test_average_precision_is_monais_coco_ap_also_for_a_resample():
    rng = np.random.default_rng(0)
    coco, match = random_matches(rng, images=25)
    matches = match(range(25))
    at50 = list(np.round(coco.iou_thresholds, 2)).index(0.5)
    resample = rng.integers(0, 25, 25)  # the same images drawn with replacement, as a weight per image
    weights = np.vstack([np.ones(25), np.bincount(resample, minlength=25)])
    for c in range(3):
        ours = stats.average_precision(matches, c, at50, weights)
        assert ours[0] == pytest.approx(coco(matches)[0][f"k{c}_AP_IoU_0.50_MaxDet_100"], abs=1e-6)
        expanded = match(np.sort(resample))  # COCOMetric over the resampled list itself
        assert ours[1] == pytest.approx(coco(expanded)[0][f"k{c}_AP_IoU_0.50_MaxDet_100"], abs=1e-6)


def test_detection_page_holds_ap_with_intervals_froc_and_images_worst_first(tmp_path):
    rng = np.random.default_rng(2)
    coco, match = random_matches(rng, images=12, classes=2)
    matches = match(range(12))
    ids = [f"img{i:02d}" for i in range(12)]
    drawn = [{"image": rng.uniform(0, 1, (1, 64, 64)), "box": np.zeros((0, 4)), "label": np.zeros(0),
              "pred_box": np.zeros((0, 4)), "pred_label": np.zeros(0), "pred_score": np.zeros(0), "case_id": ids[0]}]
    data = DetectionReportData(["k0", "k1"], ids, matches, list(coco.iou_thresholds), 100, 0.5,
                               {"map": 0.3, "froc": 0.4}, (np.array([0.5, 1.0, 4.0]), np.array([0.2, 0.5, 0.7])),
                               (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0), drawn)
    written = write_detection_page(data, tmp_path, "Test report: boxes")
    assert [p.name for p in written] == ["froc_test.png", "detections_test.png", "index.html"]
    page = written[-1].read_text()
    for name in ("metrics", "logged", "froc", "detections", "images"):
        assert f"id='{name}'" in page
    shown = metric_rows(page)
    logged = coco(matches)[0]
    for c in range(2):
        value, low, high = shown[f"AP@0.50 k{c}"]
        assert value == pytest.approx(logged[f"k{c}_AP_IoU_0.50_MaxDet_100"], abs=1e-4) and low <= value <= high
    assert shown["mAP@0.50 (mean of classes)"][0] == pytest.approx((shown["AP@0.50 k0"][0] + shown["AP@0.50 k1"][0])
                                                                   / 2, abs=1e-4)
    rows = table_rows(section(page, "images"))
    assert sorted(row[0] for row in rows) == ids
    errors = [int(row[4]) + int(row[5]) for row in rows]  # missed + false positives
    assert errors == sorted(errors, reverse=True)
    assert_self_contained(page)


def test_per_image_counts_of_hand_made_boxes():
    from monai.apps.detection.metrics.matching import matching_batch
    from monai.data.box_utils import box_iou

    from medexp.reports.detection_page import detection_image_rows

    truth = np.array([[0, 0, 10, 10], [20, 20, 30, 30]], float)
    found = np.array([[0, 0, 10, 10], [40, 40, 50, 50], [20, 20, 30, 30], [1, 1, 10, 10]], float)
    # a hit, a false positive, a hit below the score threshold, a duplicate of the first hit (a false positive)
    scores = np.array([0.9, 0.8, 0.3, 0.6])
    matches = matching_batch(iou_fn=box_iou, iou_thresholds=[0.1, 0.5], pred_boxes=[found, found[:1], found[:0]],
                             pred_classes=[np.zeros(4), np.zeros(1), np.zeros(0)],
                             pred_scores=[scores, scores[:1], scores[:0]], gt_boxes=[truth, truth[:1], truth[:0]],
                             gt_classes=[np.zeros(2), np.zeros(1), np.zeros(0)], max_detections=100)
    data = DetectionReportData(["k"], ["two", "one", "none"], matches, [0.1, 0.5], 100, 0.5, {}, (None, None), (), [])
    rows = detection_image_rows(data, iou_index=1)
    assert [(r["image"], r["boxes"], r["detections"], r["matched"], r["missed"], r["false positives"])
            for r in rows] == [("two", 2, 3, 1, 1, 2), ("one", 1, 1, 1, 0, 0), ("none", 0, 0, 0, 0, 0)]


@pytest.mark.slow
def test_a_detection_run_writes_its_page(make_cfg, tracking_uri):
    cfg = make_cfg("experiment=synthetic_detection", "data.num_train=16", "data.num_val=8", "data.num_test=8",
                   "trainer.max_epochs=1", *QUIET)
    metrics = run_experiment(cfg)
    page = (Path(cfg.paths.output_dir) / "report" / "index.html").read_text()
    assert metric_rows(page)["AP@0.50 lesion"][0] == pytest.approx(metrics["test/ap_iou50"], abs=1e-4)
    assert len(table_rows(section(page, "images"))) == 8
    assert {"report/index.html", "report/froc_test.png"} <= set(run_artifacts(tracking_uri))


# -- sweeps over seeds or folds -----------------------------------------------------------------------------------
def sweep_rows(page: str) -> dict[str, list[str]]:
    return {row[0]: row[1:] for row in table_rows(section(page, "metrics"))}


def test_sweep_page_shows_each_run_the_mean_std_and_the_t_interval_of_the_mean(tmp_path):
    from scipy.stats import t

    from medexp.sweeps.summary import mean_and_std

    values = {"test/dice": [0.81, 0.78, 0.84, 0.80], "val/dice": [0.9, 0.88, 0.91, 0.86]}
    runs = [{"run": f"data.fold={i}", **{k: v[i] for k, v in values.items()}} for i in range(4)]
    page = write_sweep_page(runs, mean_and_std(runs, list(values)), tmp_path, "Sweep report: cv").read_text()
    assert all(f"<th>data.fold={i}</th>" in page for i in range(4))
    for metric, column in values.items():
        *each, mean_std, interval, n = sweep_rows(page)[metric]
        assert [float(v) for v in each] == column and n == "4"
        mean, std = np.mean(column), np.std(column, ddof=1)
        assert mean_std == f"{mean:.4f} ± {std:.4f}"
        half = t.ppf(0.975, 3) * std / np.sqrt(4)  # 3.182 standard errors: wider than 1.96 with 4 runs
        assert interval == f"{mean - half:.4f} - {mean + half:.4f}"


@pytest.mark.parametrize("keys,reported", [(["seed"], True), (["data.fold"], True), (["optimizer.lr"], False)])
def test_only_a_sweep_over_seeds_or_folds_gets_a_report(tracking_uri, tmp_path, keys, reported):
    from mlflow.tracking import MlflowClient

    from medexp.tracking.sweep_parent import OBJECTIVE_METRIC, SweepRecord, close_parent_run

    client = MlflowClient(tracking_uri)
    experiment = client.create_experiment("repeats")
    parent = client.create_run(experiment, run_name="cv").info.run_id
    record = SweepRecord(tracking_uri, experiment, parent, "cv", "grid", keys, "val/dice", True, 0)
    for trial, dice in enumerate([0.8, 0.7, 0.9]):
        child = client.create_run(experiment, run_name=f"{keys[0]}={trial}", tags={
            "mlflow.parentRunId": parent, "sweep.trial": str(trial), "sweep.state": "COMPLETE"}).info.run_id
        client.log_metric(child, OBJECTIVE_METRIC, dice)  # what the job returned: the sweep's val/dice
        client.log_metric(child, "test/dice", dice - 0.1)
        client.set_terminated(child, "FINISHED")
    close_parent_run(record)
    listed = [a.path for a in client.list_artifacts(parent, "report")]
    assert listed == (["report/index.html"] if reported else [])
    if reported:
        page = Path(client.download_artifacts(parent, "report/index.html", str(tmp_path))).read_text()
        assert sweep_rows(page)["test/dice"][:4] == ["0.7000", "0.6000", "0.8000", "0.7000 ± 0.1000"]
        assert sweep_rows(page)["val/dice"][3] == "0.8000 ± 0.1000"


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
