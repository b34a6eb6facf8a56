"""End-to-end training through the same pipeline as ``medexp-train``: learning, repeatability, resume, tracking."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from medexp.workflows.train import run_experiment

SHORT = ["trainer.max_epochs=1", "+trainer.limit_train_batches=3", "+trainer.limit_val_batches=1",
         "+trainer.limit_test_batches=1", "callbacks.progress_bar.refresh_rate=0"]
SMALL_SYNTHETIC = ["data.num_train=256", "data.num_val=64", "data.num_test=64"]


@pytest.mark.parametrize("model", ["cnn", "resnet18", "densenet121"])
def test_fast_dev_run_per_model(make_cfg, model):
    cfg = make_cfg(f"model={model}", "debug=fast_dev_run", *SMALL_SYNTHETIC)
    metrics = run_experiment(cfg)
    assert "test/auroc" in metrics


def test_without_our_callbacks_the_last_weights_are_tested(make_cfg):
    no_bar = [o for o in SHORT if not o.startswith("callbacks.")] + ["+trainer.enable_progress_bar=false"]
    metrics = run_experiment(make_cfg(*no_bar, *SMALL_SYNTHETIC, "callbacks=none", "logger=none"))
    assert "test/auroc" in metrics


def test_short_training_beats_chance_by_a_wide_margin(make_cfg, tracking_uri):
    cfg = make_cfg("trainer.max_epochs=6", "callbacks.progress_bar.refresh_rate=0", "data.num_train=1200",
                   "data.num_val=200", "data.num_test=400")
    metrics = run_experiment(cfg)
    assert metrics["test/accuracy"] > 0.8 and metrics["test/auroc"] > 0.9, metrics


def test_same_seed_same_metrics(make_cfg, tmp_path):
    runs = [run_experiment(make_cfg(*SHORT, *SMALL_SYNTHETIC, "logger=none", "trainer.max_epochs=2",
                                    out=tmp_path / str(i))) for i in range(2)]
    assert runs[0]["test/auroc"] == runs[1]["test/auroc"] and runs[0]["val/loss"] == runs[1]["val/loss"]
    other = run_experiment(make_cfg(*SHORT, *SMALL_SYNTHETIC, "logger=none", "trainer.max_epochs=2", "seed=1",
                                    out=tmp_path / "other"))
    assert other["val/loss"] != runs[0]["val/loss"]


def test_mlflow_run_contents(make_cfg, tracking_uri):
    cfg = make_cfg(*SHORT, *SMALL_SYNTHETIC, "trainer.max_epochs=2")
    run_experiment(cfg)
    client = MlflowClient(tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("medexp").experiment_id])
    assert run.info.status == "FINISHED"
    assert run.info.run_name.startswith("cnn-synthetic-seed0")
    params = run.data.params
    assert params["optimizer.lr"] == "0.001" and params["model"] == "cnn" and params["data"] == "synthetic"
    assert params["data.batch_size"] and params["trainer.max_epochs"] == "2" and len(params) > 20
    # plumbing and paths stay in config.yaml: they would crowd the compare view
    assert not [k for k in params if k.endswith(("_target_", "dirpath", "_dir")) or k.startswith("callbacks.")]
    assert params["seed"] == "0"
    auroc = run.data.metrics["val/auroc"]
    assert auroc == float(str(np.float32(auroc)))  # float32's shortest decimal: 0.88, not 0.8799999952316284
    assert {"git.commit", "hydra.overrides", "dataset.sha256"} <= set(run.data.tags)
    assert {"val/auroc", "test/auroc", "test/accuracy", "train/loss"} <= set(run.data.metrics)
    # epoch-level metrics only: one value of train/loss per epoch
    assert len(client.get_metric_history(run.info.run_id, "train/loss")) == 2
    artifacts = {a.path for folder in ("", "config", "checkpoints", "report")
                 for a in client.list_artifacts(run.info.run_id, folder or None)}
    assert {"config/config.yaml", "dataset_fingerprint.json", "report/roc_test.png",
            "report/confusion_matrix_test.png"} <= artifacts
    assert any(a.startswith("checkpoints/") and a.endswith(".ckpt") for a in artifacts)


def test_crash_marks_the_run_failed(make_cfg, tracking_uri, monkeypatch):
    from medexp.tasks.classification import ClassificationTask

    def boom(self, batch, batch_idx):
        raise RuntimeError("injected crash")

    monkeypatch.setattr(ClassificationTask, "validation_step", boom)
    with pytest.raises(RuntimeError, match="injected crash"):
        run_experiment(make_cfg(*SHORT, *SMALL_SYNTHETIC))
    client = MlflowClient(tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("medexp").experiment_id])
    assert run.info.status == "FAILED"


def test_nan_loss_is_a_clear_error(make_cfg):
    from medexp.errors import MedexpError

    with pytest.raises(MedexpError, match="loss became nan .*optimizer.lr"):
        run_experiment(make_cfg(*SHORT, *SMALL_SYNTHETIC, "logger=none", "optimizer.lr=1e12", "optimizer=sgd",
                                "trainer.max_epochs=3", "callbacks.early_stopping.check_finite=false"))


def test_checkpoint_loads_weights_only_and_resume_continues(make_cfg, tracking_uri, tmp_path):
    cfg = make_cfg(*SHORT, *SMALL_SYNTHETIC, "trainer.max_epochs=2")
    run_experiment(cfg)
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    ckpt = torch.load(last, weights_only=True)  # plain containers only
    assert ckpt["epoch"] == 1 and ckpt["hyper_parameters"]["config"]["model"]["_target_"].endswith("ClassicCNN")
    resumed = make_cfg(*SHORT, *SMALL_SYNTHETIC, "trainer.max_epochs=4", "ckpt_path=last")
    run_experiment(resumed)
    assert torch.load(last, weights_only=True)["epoch"] == 3
    client = MlflowClient(tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("medexp").experiment_id])  # same MLflow run
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")][-1] > 2
    assert run.info.status == "FINISHED"


def test_eval_reproduces_the_test_metrics_of_the_best_checkpoint(make_cfg, tracking_uri, tmp_path):
    from medexp.workflows.evaluate import evaluate_checkpoint

    trained = run_experiment(make_cfg(*SHORT, *SMALL_SYNTHETIC, "trainer.max_epochs=2"))
    (best,) = (tmp_path / "run" / "checkpoints").glob("best-*.ckpt")
    client = MlflowClient(tracking_uri)
    (before,) = client.search_runs([client.get_experiment_by_name("medexp").experiment_id])
    histories = {key: client.get_metric_history(before.info.run_id, key) for key in before.data.metrics}
    again = evaluate_checkpoint(str(best), tracking_uri, "medexp-eval", log_to="same", report_dir=tmp_path / "eval")
    assert again["test/auroc"] == pytest.approx(trained["test/auroc"], abs=1e-6)
    assert (tmp_path / "eval" / "roc_test.png").is_file()
    # the training run gains the evaluation's metrics at its last step, and is otherwise left as training left it
    (run,) = client.search_runs([client.get_experiment_by_name("medexp").experiment_id])
    assert (run.info.status, run.info.start_time, run.info.end_time) == (
        before.info.status, before.info.start_time, before.info.end_time)
    assert {key: client.get_metric_history(run.info.run_id, key) for key in histories} == histories
    (evaluated,) = client.get_metric_history(run.info.run_id, "eval/test/auroc")
    assert evaluated.value == pytest.approx(trained["test/auroc"], abs=1e-6)
    assert evaluated.step == torch.load(best, weights_only=True)["global_step"]  # the checkpoint's last step
    assert "eval/epoch" not in run.data.metrics


def test_bf16_mixed_precision_smoke_on_cpu(make_cfg):
    metrics = run_experiment(make_cfg("debug=fast_dev_run", "trainer.precision=bf16-mixed", *SMALL_SYNTHETIC))
    assert 0.0 <= metrics["test/auroc"] <= 1.0


@pytest.mark.slow
def test_short_training_on_real_pneumoniamnist(make_cfg, pneumonia_npz):
    metrics = run_experiment(make_cfg(
        "data=pneumoniamnist", f"data.root={pneumonia_npz.parent}", "data.download=false", "model=cnn",
        "task.class_weights=balanced", "trainer.max_epochs=4", "logger=none", "callbacks.progress_bar.refresh_rate=0"))
    assert metrics["test/auroc"] >= 0.90, metrics


def test_channels_last_is_on_for_2d_cnns_and_gives_the_same_outputs(make_cfg):
    from medexp.factory import build_network
    from medexp.tasks.classification import ClassificationTask

    cfg = make_cfg()
    torch.manual_seed(0)
    net = build_network(cfg)
    reference = build_network(cfg)
    reference.load_state_dict(net.state_dict())
    task = ClassificationTask(net, torch.optim.Adam, num_classes=2)  # channels_last="auto"
    assert task.channels_last and net.features[0].weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.randn(4, 1, 32, 32)
    assert torch.allclose(task(x), reference(x), atol=1e-5)
    assert not ClassificationTask(build_network(cfg), torch.optim.Adam, 2, channels_last=False).channels_last
