"""The run lifecycle's reliability matrix: one test per defect found by fault probes (D1-D10 of the lifecycle
issue), each of which failed on the main before the fix. Probes that already held are tested elsewhere:
SIGKILL -> FAILED and Ctrl-C -> KILLED (test_run_status), resume into the same run (test_training), NaN loss ->
FAILED (test_training), concurrent runs on one store (test_sweep_app), a killed Optuna sweep resumes
(test_optuna_sweeper). Probes whose fix lives in one module are tested with it: trusted checkpoint targets and
atomic checkpoint writes (unit/workflows/test_checkpoints.py), datalist paths that climb out (unit/data/test_datalist.py),
a resumed run's stale ended-by tag (unit/tracking/test_mlflow.py).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from tests.conftest import REPO
from tests.e2e.test_run_status import the_run, wait_for

BIN = Path(sys.executable).parent
SMALL = ["data.num_train=128", "data.num_val=32", "data.num_test=32", "callbacks.progress_bar.refresh_rate=0"]


def medexp(command: str, *args: str, cwd: Path, env: dict | None = None, timeout: float = 300):
    return subprocess.run([str(BIN / command), *args], cwd=cwd, env={**os.environ, **(env or {})},
                          capture_output=True, text=True, timeout=timeout)


def one_line_error(result) -> str:
    """The command failed with exit 2 and one ``error:`` line, no traceback; returns that line."""
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr[-2000:]
    return errors[0]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """One short default run (CSV logger) whose checkpoint several tests reuse."""
    out = tmp_path_factory.mktemp("trained")
    result = medexp("medexp-train", "trainer.max_epochs=1", "logger=csv", *SMALL, f"hydra.run.dir={out / 'run'}",
                    cwd=out)
    assert result.returncode == 0, result.stderr[-2000:]
    return out / "run"


# -- D1: a checkpoint is data --------------------------------------------------------------------------------------
def craft(checkpoint: Path, target: dict, out: Path) -> Path:
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
    ckpt["hyper_parameters"]["config"]["model"] = target
    torch.save(ckpt, out)
    return out


@pytest.mark.parametrize("command", ["medexp-eval", "medexp-predict"])
def test_a_foreign_target_in_a_checkpoint_runs_nothing(trained_run, tmp_path, command):
    flag = tmp_path / "PWNED"
    evil = craft(next((trained_run / "checkpoints").glob("best-*.ckpt")),
                 {"_target_": "shutil.copyfile", "src": str(REPO / "README.md"), "dst": str(flag)}, tmp_path / "e.ckpt")
    extra = ["log_to=none"] if command == "medexp-eval" else [f"inputs={REPO / 'README.md'}", f"output_dir={tmp_path}"]
    line = one_line_error(medexp(command, f"ckpt_path={evil}", *extra, cwd=tmp_path))
    assert not flag.exists()
    assert "shutil.copyfile" in line and "trusted_targets" in line


# -- D2: credentials never stored ----------------------------------------------------------------------------------
def test_secrets_are_masked_everywhere():
    from medexp.redact import redact, redact_text

    assert redact_text("- tracking.uri=http://alice:s3cret@host:5000") == "- tracking.uri=http://alice:***@host:5000"
    masked = redact({"tracking": {"uri": "postgresql://u:pw@db/x"}, "data": {"npz_key": "test_images"},
                     "x": {"api_token": "t0k", "password": "p", "monitor": "val/auroc"}})
    assert masked == {"tracking": {"uri": "postgresql://u:***@db/x"}, "data": {"npz_key": "test_images"},
                      "x": {"api_token": "***", "password": "***", "monitor": "val/auroc"}}


@pytest.mark.slow
def test_a_password_in_the_tracking_uri_is_stored_nowhere(tmp_path):
    from tests.e2e.test_tracking_server import free_loopback_port, server_command, wait_until_serving

    port = free_loopback_port()
    with open(tmp_path / "server.log", "w") as log:
        server = subprocess.Popen(server_command(port, tmp_path / "server"), stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until_serving(f"http://127.0.0.1:{port}", server, tmp_path / "server.log", timeout=90)
        uri = f"http://alice:Pl4ntedS3cret@127.0.0.1:{port}"
        result = medexp("medexp-train", "trainer.max_epochs=1", *SMALL, f"hydra.run.dir={tmp_path / 'run'}",
                        cwd=tmp_path, env={"MLFLOW_TRACKING_URI": uri})
        assert result.returncode == 0, result.stderr[-2000:]
        assert "alice:***@" in result.stdout  # the summary names the store, masked
        run = MlflowClient(f"http://127.0.0.1:{port}").search_runs(["1"])[0]
        assert run.info.status == "FINISHED"
        assert f"uri: http://alice:***@127.0.0.1:{port}" in (tmp_path / "run" / "config.yaml").read_text()
    finally:
        server.terminate()
        server.wait(timeout=30)
    leaks = [p for p in [*(tmp_path / "server").rglob("*"), *(tmp_path / "run").rglob("*")]
             if p.is_file() and b"Pl4ntedS3cret" in p.read_bytes()]
    assert leaks == []
    assert any((tmp_path / "run" / "checkpoints").glob("*.ckpt"))


# -- D4: SIGTERM / SIGUSR1 -----------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGUSR1])
def test_a_scheduler_signal_saves_last_ckpt_ends_killed_and_exits_nonzero(tmp_path, tracking_uri, stop):
    run_dir = tmp_path / "run"
    trainer = subprocess.Popen([str(BIN / "medexp-train"), "trainer.max_epochs=1000", *SMALL,
                                f"hydra.run.dir={run_dir}"], cwd=tmp_path,
                               env={**os.environ, "MLFLOW_TRACKING_URI": tracking_uri},
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = MlflowClient(tracking_uri)
    try:
        run = wait_for(lambda: (r := the_run(client)) and "train/loss" in r.data.metrics and r, 120, "an epoch")
        (run_dir / "checkpoints" / "last.ckpt").unlink()
        trainer.send_signal(stop)
        started = time.monotonic()
        code = trainer.wait(timeout=60)
    finally:
        trainer.kill()
    assert code == 128 + stop
    assert time.monotonic() - started < 30
    saved = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)  # written on the signal
    assert saved["global_step"] > 0
    assert client.get_run(run.info.run_id).info.status == "KILLED"


# -- D5: labels and pixels checked at load -------------------------------------------------------------------------
def test_labels_and_pixels_are_checked_at_load():
    from medexp.data.inmemory import check_finite, integer_labels
    from medexp.errors import DataError

    assert integer_labels(np.array([0.0, 1.0, 1.0]), "x").dtype == np.int64
    with pytest.raises(DataError, match=r"non-integer values such as 0.9 \(2 of them, first at indices \[1, 2\]\)"):
        integer_labels(np.array([0.0, 0.9, 0.9]), "train labels")
    with pytest.raises(DataError, match=r"NaN or infinite values \(1 of them, first at indices \[2\]\)"):
        integer_labels(np.array([0.0, 1.0, np.nan]), "val labels")
    images = np.zeros((4, 1, 2, 2), dtype=np.float32)
    images[3, 0, 1, 1] = np.inf
    with pytest.raises(DataError, match=r"infinite pixels \(1 of them, first at indices \[3\]\)"):
        check_finite(images, "test images")


def test_fractional_labels_stop_the_run_in_one_line(tmp_path, pneumonia_npz):
    arrays = dict(np.load(pneumonia_npz))
    for split in ("train", "val", "test"):
        arrays[f"{split}_labels"] = arrays[f"{split}_labels"].astype(np.float32) * 0.9
    (tmp_path / "frac").mkdir()
    np.savez(tmp_path / "frac" / "pneumoniamnist.npz", **arrays)
    line = one_line_error(medexp("medexp-train", "data=pneumoniamnist", f"data.root={tmp_path / 'frac'}",
                                 "data.download=false", "logger=csv", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path))
    assert "train labels hold non-integer values such as 0.9" in line


# -- D6: the tracking store is probed first, and results survive it --------------------------------------------
def test_an_unreachable_tracking_server_stops_the_run_before_training(tmp_path):
    started = time.monotonic()
    result = medexp("medexp-train", "trainer.max_epochs=1", *SMALL, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path,
                    env={"MLFLOW_TRACKING_URI": "http://127.0.0.1:9"})
    line = one_line_error(result)
    assert "127.0.0.1:9" in line and "tracking.on_unreachable=local" in line
    assert time.monotonic() - started < 60
    assert not (tmp_path / "run" / "checkpoints").exists()  # nothing trained


@pytest.mark.slow
def test_on_unreachable_local_falls_back_and_keeps_metrics(tmp_path):
    result = medexp("medexp-train", "trainer.max_epochs=1", *SMALL, "tracking.on_unreachable=local",
                    f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path,
                    env={"MLFLOW_TRACKING_URI": "http://127.0.0.1:9", "MEDEXP_OUTPUT_ROOT": str(tmp_path / "out")})
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stderr.count("cannot be reached") == 1
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())["metrics"]
    assert 0 <= metrics["test/auroc"] <= 1
    assert f"test/auroc: {metrics['test/auroc']:.4g}" in result.stdout  # printed, 4 significant digits
    runs = MlflowClient(f"sqlite:///{tmp_path / 'out' / 'mlflow.db'}").search_runs(["1"])
    assert [r.info.status for r in runs] == ["FINISHED"]


# -- D7: eval honours this command's store -------------------------------------------------------------------------
@pytest.mark.slow
def test_eval_logs_to_the_store_it_is_given_after_the_run_folder_moved(tmp_path, migrated_store):
    old, new = tmp_path / "old", tmp_path / "new"
    old.mkdir()
    shutil.copy(migrated_store, old / "mlflow.db")
    result = medexp("medexp-train", "trainer.max_epochs=1", *SMALL, f"hydra.run.dir={old / 'run'}", cwd=tmp_path,
                    env={"MLFLOW_TRACKING_URI": f"sqlite:///{old / 'mlflow.db'}"})
    assert result.returncode == 0, result.stderr[-2000:]
    shutil.move(old, new)
    ckpt = next((new / "run" / "checkpoints").glob("best-*.ckpt"))
    result = medexp("medexp-eval", f"ckpt_path={ckpt}", cwd=tmp_path,
                    env={"MLFLOW_TRACKING_URI": f"sqlite:///{new / 'mlflow.db'}"})
    assert result.returncode == 0, result.stderr[-2000:]
    # no empty store made at the old path (the eval report's artifacts do go there: a sqlite store keeps each
    # experiment's artifact folder as an absolute path, so moving a store moves only its database)
    assert not (old / "mlflow.db").exists()
    run = MlflowClient(f"sqlite:///{new / 'mlflow.db'}").search_runs(["1"])[0]
    client = MlflowClient(f"sqlite:///{new / 'mlflow.db'}")
    (trained,) = client.get_metric_history(run.info.run_id, "test/auroc")  # training's own test, left alone
    (evaluated,) = client.get_metric_history(run.info.run_id, "eval/test/auroc")
    assert evaluated.step == trained.step > 0  # at the run's last step, not at 0
    assert "logged to the training run" in result.stdout


# -- D8: the Makefile's bind address ------------------------------------------------------------------------------
def test_make_ui_ignores_a_host_variable_from_the_environment():
    result = subprocess.run(["make", "-n", "-W", "pyproject.toml", "ui", "server"], cwd=REPO, capture_output=True,
                            text=True, env={**os.environ, "HOST": "0.0.0.0"})
    hosts = [line.split("--host ")[1].split()[0] for line in result.stdout.splitlines() if "--host" in line]
    assert hosts == ["127.0.0.1", "127.0.0.1"], result.stdout


# -- D9: config values and set-up errors in one line, no empty FAILED runs -----------------------------------------
@pytest.mark.parametrize(("override", "expected"), [
    ("trainer.max_epochs=abc", "trainer.max_epochs='abc' is not valid: it must be a whole number >= 1"),
    ("data.batch_size=0", "data.batch_size=0 is not valid"),
    ("optimizer.lr=-0.1", "optimizer.lr=-0.1 is not valid: it must be a number > 0"),
])
def test_invalid_config_values_are_one_line_and_open_no_run(tmp_path, tracking_uri, override, expected):
    line = one_line_error(medexp("medexp-train", override, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path))
    assert expected in line
    assert MlflowClient(tracking_uri).get_experiment_by_name("medexp") is None  # no empty FAILED run


def test_yaml_syntax_errors_and_unwritable_outputs_are_one_line(tmp_path):
    (tmp_path / "my_conf" / "model").mkdir(parents=True)
    (tmp_path / "my_conf" / "model" / "bad.yaml").write_text("_target_: x.Y\n  width: [1\n")
    line = one_line_error(medexp("medexp-train", "--config-dir", str(tmp_path / "my_conf"), "model=bad", cwd=tmp_path))
    assert "bad.yaml is not valid YAML" in line and "line 2" in line
    line = one_line_error(medexp("medexp-train", "logger=csv", cwd=tmp_path, env={"MEDEXP_OUTPUT_ROOT": "/proc/x"}))
    assert "cannot write /proc/x" in line and "MEDEXP_OUTPUT_ROOT" in line


def test_resuming_from_a_checkpoint_of_another_model_is_one_line(trained_run, tmp_path):
    ckpt = next((trained_run / "checkpoints").glob("best-*.ckpt"))
    line = one_line_error(medexp("medexp-train", "model=resnet10", "logger=csv", f"ckpt_path={ckpt}",
                                 f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path))
    assert "does not fit this model" in line or "lacks" in line


# -- D10: sweep parents, stale tags, datalist paths ---------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("stop", [signal.SIGKILL, signal.SIGTERM])
def test_a_killed_sweep_leaves_no_parent_running(tmp_path, tracking_uri, stop):
    sweep = subprocess.Popen([str(BIN / "medexp-train"), "-m", "trainer.max_epochs=1000", *SMALL, "seed=0,1",
                              f"hydra.sweep.dir={tmp_path / 'sweep'}"], cwd=tmp_path,
                             env={**os.environ, "MLFLOW_TRACKING_URI": tracking_uri},
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    client = MlflowClient(tracking_uri)
    try:
        wait_for(lambda: (r := the_run(client)) and "train/loss" in r.data.metrics, 120, "a child's first epoch")
        sweep.send_signal(stop)
        assert sweep.wait(timeout=180) == (-stop if stop == signal.SIGKILL else 128 + stop)
    finally:
        sweep.kill()
    experiment = client.get_experiment_by_name("medexp").experiment_id
    wait_for(lambda: all(r.info.status != "RUNNING" for r in client.search_runs([experiment])), 60,
             "every run to be closed")
    parent = client.search_runs([experiment], filter_string="tags.`sweep.kind` = 'grid'")[0]
    assert parent.info.status == "FAILED"
    # SIGKILL: the writer closes the parent and says so; SIGTERM: the sweep closes it itself, with its summary
    assert ("medexp.ended_by" in parent.data.tags) == (stop == signal.SIGKILL)
    assert ("mlflow.note.content" in parent.data.tags) == (stop == signal.SIGTERM)
