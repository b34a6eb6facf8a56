"""Plan then train: ``medexp-plan`` on a tiny folder of PNG disks writes a commented experiment that
``medexp-train --config-dir`` runs within its budget; ``trainer.budget`` alone ends a run on time with its best
checkpoint tested; ``experiment=auto`` plans and trains a classification set in one command, its run and a sweep
over the plan carry the plan (tags, artifacts) and the sweep's first trial is the plan; a detection set is planned
and trained."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from medexp.workflows.train import run_experiment
from tests.fixtures_data import write_chase_like, write_disks_like

BIN = Path(sys.executable).parent
QUIET = ["callbacks.progress_bar.refresh_rate=0"]


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "MEDEXP_OUTPUT_ROOT": str(cwd / "outputs")}
    return subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_plan_then_train_a_folder_of_disks_within_the_budget(tmp_path):
    root = write_disks_like(tmp_path / "disks", n_cases=16)
    data = ["data=folder_photos", f"data.root={root}", "data.datalist.image_glob=images/*.png",
            "data.datalist.label_pattern=masks/{stem}.png", "data.split.val_ratio=0.25", "data.split.test_ratio=0.25"]
    planned = run(BIN / "medexp-plan", *data, "budget=90s", f"output={tmp_path / 'conf'}", cwd=tmp_path)
    assert planned.returncode == 0, planned.stderr[-2000:]
    experiment = Path(planned.stdout.strip().splitlines()[-1].split()[-1])
    assert experiment == tmp_path / "conf" / "experiment" / "disks_plan.yaml" and experiment.is_file()
    text = experiment.read_text()
    assert text.startswith("# @package _global_") and "override /data: disks_plan" in text
    assert "in_channels: 1  # channels of the stored images" in text  # folder_photos says 3; the PNGs are gray
    assert "budget: \"90s\"" in text and (tmp_path / "conf" / "disks_plan.fingerprint.json").is_file()
    assert "{stem}" in (tmp_path / "conf" / "data" / "disks_plan.yaml").read_text()  # the pattern arrived as typed

    started = time.time()
    trained = run(BIN / "medexp-train", "--config-dir", tmp_path / "conf", "experiment=disks_plan", "logger=none",
                  f"hydra.run.dir={tmp_path / 'run'}", *QUIET, cwd=tmp_path)
    elapsed = time.time() - started
    assert trained.returncode == 0, trained.stderr[-2000:]
    result = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert result["metrics"]["test/dice"] > 0.5, result  # bright disks on noise: an untrained net scores ~0.3
    assert Path(result["best_checkpoint"]).is_file()
    assert elapsed <= 90 * 1.25, elapsed


def test_budget_ends_a_run_on_time_with_its_best_checkpoint_tested(make_cfg, tmp_path, capsys):
    root = write_chase_like(tmp_path / "chase")
    cfg = make_cfg("data=chasedb1", f"data.root={root}", "model=unet", "task=segmentation",
                   "data.split.test_patients=['05','06']", "data.split.val_count=1", "data.patch_size=[32,32]",
                   "model.channels=[8,16]", "model.strides=[2]", "trainer.max_epochs=100000",
                   "trainer.budget=60s", "logger=none", *QUIET)
    import medexp.data.segmentation  # noqa: F401 - imports (a minute on a busy machine) outside the timed run
    import medexp.tasks.segmentation  # noqa: F401

    started = time.time()
    metrics = run_experiment(cfg, launched_at=started)
    elapsed = time.time() - started
    assert "test/dice" in metrics and elapsed <= 60 * 1.25, (elapsed, metrics)
    assert "medexp: time budget" in capsys.readouterr().out  # stopped by the budget, not by max_epochs
    assert list((tmp_path / "run" / "checkpoints").glob("best-*.ckpt"))



@pytest.mark.slow
def test_experiment_auto_plans_a_classification_set_trains_it_and_a_sweep_starts_from_the_plan(tmp_path,
                                                                                            tracking_uri):
    from mlflow.tracking import MlflowClient

    data = ["data=synthetic", "data.num_train=200", "data.num_val=50", "data.num_test=50"]
    trained = run(BIN / "medexp-train", "experiment=auto", *data, "budget=60s", f"hydra.run.dir={tmp_path / 'run'}",
                  *QUIET, cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr[-2000:]
    experiment = next((tmp_path / "outputs" / "plans" / "experiment").glob("*.yaml"))
    text = experiment.read_text()
    assert "override /model: resnet10" in text and "search:" in text and "class_weights" in text
    result = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert result["metrics"]["test/auroc"] > 0.8, result  # round against lobulated blobs: learnable in a minute
    client = MlflowClient(tracking_uri)
    (single,) = client.search_runs(["1"])
    assert single.data.tags["medexp.plan"] == experiment.stem and single.data.tags["medexp.plan.digest"]
    artifacts = {a.path for a in client.list_artifacts(single.info.run_id, "plan")}
    assert f"plan/{experiment.stem}.yaml" in artifacts and f"plan/{experiment.stem}.fingerprint.json" in artifacts

    swept = run(BIN / "medexp-train", "-m", "--config-dir", tmp_path / "outputs" / "plans",
                f"experiment={experiment.stem}", "hparams_search=optuna", "hydra.sweeper.n_trials=2",
                "trainer.budget=null", "trainer.max_epochs=1", f"hydra.sweep.dir={tmp_path / 'sweep'}", *QUIET,
                cwd=tmp_path)
    assert swept.returncode == 0, swept.stderr[-2000:]
    planned = yaml.safe_load(text)
    first = next(line for line in swept.stdout.splitlines() if line.startswith("trial 0 "))
    assert f"optimizer.lr={planned['optimizer']['lr']}" in first and "model.layers=[1,1,1,1]" in first
    parent = client.search_runs(["1"], filter_string="tags.`sweep.kind` = 'optuna'")[0]
    assert parent.data.tags["medexp.plan"] == experiment.stem
    assert "optimizer.lr" in parent.data.params and "model.layers" in parent.data.params  # the plan's space
    assert {a.path for a in client.list_artifacts(parent.info.run_id, "plan")} == artifacts


@pytest.mark.slow
def test_plan_then_train_synthetic_boxes(tmp_path):
    data = ["data=synthetic_boxes", f"data.root={tmp_path / 'boxes'}", "data.num_train=48", "data.num_val=12",
            "data.num_test=12"]
    planned = run(BIN / "medexp-plan", *data, "budget=120s", f"output={tmp_path / 'conf'}", cwd=tmp_path)
    assert planned.returncode == 0, planned.stderr[-2000:]
    experiment = Path(planned.stdout.strip().splitlines()[-1].split()[-1])
    text = experiment.read_text()
    assert "override /model: retinanet" in text and "anchor_sizes" in text and "returned_layers" in text
    trained = run(BIN / "medexp-train", "--config-dir", tmp_path / "conf", f"experiment={experiment.stem}",
                  "logger=none", f"hydra.run.dir={tmp_path / 'run'}", *QUIET, cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr[-2000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())["metrics"]
    assert "test/ap_iou50" in metrics and "val/ap_iou50" in metrics, metrics
