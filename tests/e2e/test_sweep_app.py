"""A toy Hydra app that sweeps like ``medexp-train`` without training anything, and the grid-sweep tests on it.

The app composes a small primary config beside copies of the project's ``conf/hparams_search`` and
``conf/hydra/launcher`` (so ``hparams_search=optuna`` and ``hydra/launcher=slurm`` are the real files), registers the sweep callback, logs one MLflow child run per job
with the name and tags the training entry point gives its ``MLFlowLogger``, and returns a metric computed from its
config. ``toy.epochs > 0`` runs a tiny Lightning fit whose validation metric follows the same formula, so the real
pruning callback can stop it. Other sweep tests import ``run_toy`` and ``mlflow_store`` from here.
"""
from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

TOY_CONFIG = """
defaults:
  - _self_
  - hparams_search: null
name: toy
seed: 0
optimized_metric: val/score
optuna_trial: null
paths:
  output_root: ???
tracking:
  uri: ${oc.env:MLFLOW_TRACKING_URI}
  experiment: toy
logger:
  mlflow: {}
task:
  monitor_mode: max
model: cnn
optimizer:
  lr: 1.0e-3
  weight_decay: 0.0
data:
  batch_size: 64
toy:
  epochs: 0            # > 0: a tiny Lightning fit reporting val/score each epoch
  fail_model: null     # this model value raises, to test failed jobs
hydra:
  run:
    dir: ${paths.output_root}/run
  sweep:
    dir: ${paths.output_root}/multirun
    subdir: ${hydra.job.num}
  job:
    chdir: false
  callbacks:
    mlflow_sweep:
      _target_: medexp.tracking.sweep_parent.MLflowSweepCallback
"""


def toy_objective(cfg, epoch: int | None = None) -> float:
    """Best near lr=1e-3 and batch 64; resnet18 a little better; grows with epochs when there are epochs."""
    value = 1.0 - abs(math.log10(cfg.optimizer.lr) + 3) / 3 - abs(cfg.data.batch_size - 64) / 640
    value += 0.05 if cfg.model == "resnet18" else 0.0
    return value if epoch is None else value * (epoch + 1) / cfg.toy.epochs


def toy_task(cfg) -> dict:
    """One job: an MLflow child run named and tagged by medexp.tracking.sweep_parent, the toy metric returned.

    It logs through MlflowClient rather than Lightning's MLFlowLogger (same run name and tags) so that joblib
    workers need not import Lightning unless the job trains.
    """
    from hydra.core.hydra_config import HydraConfig
    from mlflow.entities import Param
    from mlflow.tracking import MlflowClient

    from medexp.tracking.store import get_or_create_experiment
    from medexp.tracking.sweep_parent import child_run_context

    out = Path(HydraConfig.get().runtime.output_dir)
    with open(out / "invocations.txt", "a") as f:  # a job run twice would leave two lines
        f.write(f"{cfg.seed}\n")
    if cfg.model == cfg.toy.fail_model:
        raise RuntimeError(f"toy failure for model={cfg.model}")
    context = child_run_context() or {"run_name": "toy", "tags": {}}
    client = MlflowClient(cfg.tracking.uri)
    experiment_id = get_or_create_experiment(client, cfg.tracking.experiment, cfg.tracking.uri)
    run_id = client.create_run(experiment_id, run_name=context["run_name"], tags=context["tags"]).info.run_id
    params = {"seed": cfg.seed, "model": cfg.model, "optimizer.lr": cfg.optimizer.lr,
              "data.batch_size": cfg.data.batch_size, "optuna_trial": cfg.optuna_trial}
    client.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()])
    try:
        if cfg.toy.epochs:
            value = _toy_fit(cfg, client, run_id)
        else:
            value = toy_objective(cfg)
            client.log_metric(run_id, "val/score", value, step=0)
    finally:
        client.set_terminated(run_id, "FINISHED")
    return {"val/score": value, "test/score": value - 0.01}


def _toy_fit(cfg, client, run_id: str) -> float:
    """A Lightning fit of nothing whose val/score per epoch follows toy_objective; the pruning callback watches it."""
    import pytorch_lightning as pl
    import torch

    from medexp.callbacks.pruning import make_pruning_callback, raise_if_pruned

    class Toy(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def training_step(self, batch, batch_idx):
            return (self.w * batch[0]).sum()

        def validation_step(self, batch, batch_idx):
            value = toy_objective(cfg, self.current_epoch)
            self.log("val/score", value)
            client.log_metric(run_id, "val/score", value, step=self.current_epoch)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.0)

    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.ones(1, 1)), batch_size=1)
    callbacks = [cb for cb in [make_pruning_callback(cfg)] if cb is not None]
    trainer = pl.Trainer(max_epochs=cfg.toy.epochs, logger=False, callbacks=callbacks, enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False, num_sanity_val_steps=0,
                         accelerator="cpu", devices=1)
    trainer.fit(Toy(), data, data)
    if any(cb.pruned for cb in callbacks):
        client.set_tag(run_id, "trial_state", "PRUNED")  # as the training entry point does
    raise_if_pruned(callbacks)
    return toy_objective(cfg, cfg.toy.epochs - 1)


def run_toy(tmp_path: Path, *overrides: str, check: bool = True, multirun: bool = True) -> int:
    """Run the toy app (``-m`` unless ``multirun=False``) in this process; returns Hydra's exit code (0 or 1)."""
    import hydra
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    from medexp.hydra_setup import prepare_hydra

    # as medexp-train does: the sweeper registered (an editable install hides the plugin from Hydra's scan), a
    # sweeper's user errors in one line (without it the outcome depended on whether an earlier test had prepared)
    prepare_hydra()
    conf = tmp_path / "toy_conf"
    for group in ("hparams_search", "hydra/launcher"):
        shutil.copytree(REPO / "conf" / group, conf / group, dirs_exist_ok=True)
    (conf / "toy.yaml").write_text(TOY_CONFIG)
    argv = ["toy", *(["-m"] if multirun else []), f"paths.output_root={tmp_path / 'outputs'}", *overrides]
    GlobalHydra.instance().clear()
    old_argv, sys.argv = sys.argv, argv
    try:
        hydra.main(version_base="1.3", config_path=str(conf), config_name="toy")(toy_task)()
        code = 0
    except SystemExit as e:
        code = int(e.code or 0)
    finally:
        sys.argv = old_argv
        GlobalHydra.instance().clear()
        HydraConfig.instance().cfg = None  # no stale MULTIRUN config for the tests that follow
    if check:
        assert code == 0, f"toy sweep failed: {overrides}"
    return code


@pytest.fixture
def mlflow_store(tracking_uri):
    """A client on this test's copy of the migrated store, which MLFLOW_TRACKING_URI points the toy app at."""
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri)


def sweep_runs(client, experiment: str = "toy"):
    """(parents, children) of an experiment, as MLflow returns them."""
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return parents, children


def artifact_paths(client, run_id: str, path: str | None = None) -> set[str]:
    found = set()
    for f in client.list_artifacts(run_id, path):
        found |= artifact_paths(client, run_id, f.path) if f.is_dir else {f.path}
    return found


def test_grid_sweep_is_one_parent_with_named_children(tmp_path, mlflow_store, capsys):
    run_toy(tmp_path, "model=cnn,resnet18", "optimizer.lr=1e-3,3e-4", "data.batch_size=32")
    printed = capsys.readouterr().out

    parents, children = sweep_runs(mlflow_store)
    assert len(parents) == 1 and len(children) == 4
    parent = parents[0]
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    assert sorted(c.info.run_name for c in children) == [
        "model=cnn,optimizer.lr=1e-3", "model=cnn,optimizer.lr=3e-4",
        "model=resnet18,optimizer.lr=1e-3", "model=resnet18,optimizer.lr=3e-4"]
    assert {c.data.tags["sweep.id"] for c in children} == {parent.info.run_id}
    assert {c.data.tags["sweep.name"] for c in children} == {parent.info.run_name}
    assert all(c.info.status == "FINISHED" and c.data.tags["sweep.state"] == "COMPLETE" for c in children)
    assert all(c.data.metrics["sweep/objective"] == pytest.approx(c.data.metrics["val/score"]) for c in children)

    assert parent.info.status == "FINISHED"
    tags = parent.data.tags
    assert tags["sweep.kind"] == "grid" and tags["sweep.keys"] == "model,optimizer.lr"
    assert (tags["best.model"], tags["best.optimizer.lr"]) == ("resnet18", "0.001")
    assert parent.data.metrics["best/val/score"] == pytest.approx(max(c.data.metrics["val/score"] for c in children))
    assert artifact_paths(mlflow_store, parent.info.run_id) == {
        "sweep/sweep.yaml", "summary/summary.csv", "summary/summary.md", "summary/objective.png",
        "summary/best_params.yaml"}
    table = Path(mlflow_store.download_artifacts(parent.info.run_id, "summary/summary.md", str(tmp_path))).read_text()
    assert table.index("model=resnet18,optimizer.lr=1e-3") < table.index("model=cnn,optimizer.lr=3e-4")
    assert json.loads((tmp_path / "outputs/multirun/mlflow_sweep.json").read_text())["parent_run_id"] == \
        parent.info.run_id
    # the terminal gets the ranking, best first, and the best overrides; no mean over different models
    ranking = printed[printed.index("best first by val/score"):]
    assert ranking.index("model=resnet18,optimizer.lr=1e-3") < ranking.index("model=cnn,optimizer.lr=3e-4")
    assert "Best: model=resnet18 optimizer.lr=0.001" in printed
    assert not any(key.startswith(("mean/", "std/")) for key in parent.data.metrics)


def test_failed_grid_job_is_a_failed_child_and_fails_the_parent(tmp_path, mlflow_store):
    from medexp.tracking.sweep_parent import close_unfinished_sweeps

    assert run_toy(tmp_path, "model=cnn,resnet18", "toy.fail_model=resnet18", check=False) == 1
    # Hydra's basic sweeper raises after the failed job and skips on_multirun_end: the exit hook closes the parent
    close_unfinished_sweeps()

    parents, children = sweep_runs(mlflow_store)
    failed = [c for c in children if c.data.tags["sweep.state"] == "FAIL"]
    assert len(children) == 2 and [c.info.run_name for c in failed] == ["model=resnet18"]
    assert failed[0].info.status == "FAILED" and "toy failure" in failed[0].data.tags["sweep.error"]
    assert parents[0].info.status == "FAILED"
    assert "best.model" in parents[0].data.tags  # the summary still ranks the jobs that ran


def test_single_run_is_a_top_level_run(tmp_path, mlflow_store):
    run_toy(tmp_path, multirun=False)

    parents, children = sweep_runs(mlflow_store)
    assert children == [] and [p.info.run_name for p in parents] == ["toy"]


def test_a_sweep_into_a_new_store_prints_no_store_creation_chatter(tmp_path, monkeypatch):
    """The parent run is the first to open a new store: MLflow's table-creation INFO lines are not the user's."""
    import logging

    from mlflow.tracking import MlflowClient

    class Kept(logging.Handler):
        def __init__(self):
            super().__init__()
            self.messages = []

        def emit(self, record):
            self.messages.append(record.getMessage())

    store = f"sqlite:///{tmp_path / 'new.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    db_logger = logging.getLogger("mlflow.store.db.utils")  # MLflow's loggers do not propagate to the root's
    kept, level = Kept(), db_logger.level
    db_logger.setLevel(logging.NOTSET)  # as a fresh process has it
    db_logger.addHandler(kept)
    try:
        run_toy(tmp_path, "model=cnn,resnet18")
    finally:
        db_logger.removeHandler(kept)
        db_logger.setLevel(level)
    assert len(sweep_runs(MlflowClient(store))[1]) == 2
    assert not kept.messages


def test_a_sweep_parent_carries_its_search_space_as_params_and_the_best_run_s_figures(tmp_path, mlflow_store,
                                                                                     tracking_uri):
    """The runs table shows parents beside their children: the space searched as params (not 0 of them), and the
    best child's value of the sort key (best/<objective>) so a parent does not sort to the bottom with '-'."""
    run_toy(tmp_path, "model=cnn,resnet18", "optimizer.lr=1e-3,3e-4")
    (parent,), children = sweep_runs(mlflow_store)
    assert parent.data.params == {"model": "cnn,resnet18", "optimizer.lr": "1e-3,3e-4"}
    best = max(child.data.metrics["sweep/objective"] for child in children)
    assert parent.data.metrics["best/val/score"] == pytest.approx(best)
