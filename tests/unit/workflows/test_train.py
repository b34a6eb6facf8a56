"""The end-of-run block: the headline metric first, that quantity per class below it, then the other summaries;
every metric still in metrics.json."""
from __future__ import annotations

import json

from medexp.workflows.train import report

DETECTION = {"val/map": 0.61, "test/map": 0.58, "test/mar": 0.7, "test/froc": 0.66, "test/ap_iou50": 0.8,
             "test/ap_iou75": 0.5, **{f"test/{m}_{c}": 0.5 for m in ("map", "mar", "ap_iou50", "ap_iou75")
                                      for c in ("RBC", "WBC", "Platelets")}}


def test_detection_s_headline_map_comes_first_then_per_class_not_every_metric_alphabetically(tmp_path, capsys):
    report(DETECTION, tmp_path, None, "val/map", ["RBC", "WBC", "Platelets"])
    lines = capsys.readouterr().out.splitlines()
    start = lines.index("medexp: run finished") + 1
    assert lines[start:start + 7] == [
        "  val/map: 0.61", "  test/map: 0.58", "  per class (test/map):", "    test/map_RBC: 0.5",
        "    test/map_WBC: 0.5", "    test/map_Platelets: 0.5", "  test/ap_iou50: 0.8"]
    assert not any("mar_RBC" in line or "ap_iou50_WBC" in line for line in lines)
    assert json.loads((tmp_path / "metrics.json").read_text())["metrics"] == DETECTION


def test_a_run_without_test_lists_the_monitored_quantity_per_structure(tmp_path, capsys):
    metrics = {"val/dice": 0.889, "val/dice_anterior": 0.9, "val/dice_posterior": 0.878, "val/loss": 0.2,
               "train/loss": 0.3}
    report(metrics, tmp_path, None, "val/dice", ["background", "anterior", "posterior"])
    lines = capsys.readouterr().out.splitlines()
    start = lines.index("medexp: run finished") + 1
    assert lines[start:start + 4] == ["  val/dice: 0.889", "  per class (val/dice):", "    val/dice_anterior: 0.9",
                                      "    val/dice_posterior: 0.878"]


def test_multi_class_auroc_per_class(tmp_path, capsys):
    metrics = {"val/auroc": 0.9, "test/auroc": 0.88, "test/auroc/a b": 0.8, "test/auroc/c": 0.96, "test/loss": 0.4}
    report(metrics, tmp_path, None, "val/auroc", ["a b", "c"])
    out = capsys.readouterr().out
    assert out.index("test/auroc: 0.88") < out.index("    test/auroc/a b: 0.8") < out.index("  test/loss: 0.4")
