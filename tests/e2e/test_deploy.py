"""Deployable models: the MLflow model every run logs (pyfunc: stored images in, probabilities out), its registry
version, ``medexp-predict`` on ``runs:/``/``models:/`` URIs, and ``medexp-export`` (ONNX, TorchScript) parity.

One tiny synthetic run is trained per module with MLflow on and ``tracking.register_as`` set; every check compares
against ``medexp-predict``'s probabilities for the same stored images (what a user gets today), not against the
deployed code itself.
"""
from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig

from medexp.errors import ConfigError
from medexp.workflows.predict import predict
from medexp.workflows.train import run_experiment
from tests.conftest import compose_config

REGISTERED = "medexp_test_model"
TINY = ["trainer.max_epochs=1", "data.num_train=128", "data.num_val=32", "data.num_test=32",
        "callbacks.progress_bar.refresh_rate=0", f"tracking.register_as={REGISTERED}"]
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def logged_run(tmp_path_factory, migrated_store):
    """A trained run in its own MLflow store: (run folder, run id, tracking URI, stored test images as .npz)."""
    out = tmp_path_factory.mktemp("deploy")
    shutil.copy(migrated_store, out / "mlflow.db")
    uri = f"sqlite:///{out / 'mlflow.db'}"
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = uri
    try:
        run_experiment(compose_config(TINY, out))
    finally:
        GlobalHydra.instance().clear()
        HydraConfig.instance().cfg = None
    run_dir = out / "run"
    from medexp.export.model import stored_test_images
    from medexp.factory import load_for_inference

    (best,) = (run_dir / "checkpoints").glob("best-*.ckpt")
    images = stored_test_images(load_for_inference(str(best)).datamodule)[:6].astype(np.uint8)
    np.savez(out / "cases.npz", test_images=images[:, 0])  # MedMNIST layout: (N, H, W) uint8
    yield run_dir, (run_dir / "mlflow_run_id").read_text().strip(), uri, out / "cases.npz", best
    if previous is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = previous


def logged_models(uri: str, run_id: str, registered: str) -> list:
    """The run's MLflow model as its run URI and its first registered version load it, once the run's tags are
    checked to name both."""
    import mlflow

    tags = mlflow.MlflowClient(uri).get_run(run_id).data.tags
    assert tags["model.uri"] == f"runs:/{run_id}/model" and tags["model.registered"] == f"models:/{registered}/1"
    return [mlflow.pyfunc.load_model(model_uri) for model_uri in (tags["model.uri"], tags["model.registered"])]


def predicted(ckpt_path: str, cases: Path, out: Path) -> np.ndarray:
    """``medexp-predict``'s probabilities (one column per class) for the cases, in input order."""
    predict(ckpt_path, str(cases), out)
    with open(out / "predictions.csv") as file:
        rows = list(csv.DictReader(file))
    columns = [key for key in rows[0] if key.startswith("probability_")]
    return np.array([[float(row[c]) for c in columns] for row in rows])


def stored(cases: Path) -> np.ndarray:
    """The cases as the deployed models take them: float32 (N, C, H, W), 0-255, not normalised."""
    return np.load(cases)["test_images"][:, None].astype(np.float32)


def test_run_logs_a_registered_pyfunc_and_its_report(logged_run, tmp_path):
    import mlflow

    run_dir, run_id, uri, cases, best = logged_run
    reference = predicted(str(best), cases, tmp_path / "ckpt")
    assert reference.shape == (6, 2) and np.allclose(reference.sum(axis=1), 1, atol=1e-5)
    for model in logged_models(uri, run_id, REGISTERED):
        (spec,) = model.metadata.get_input_schema().inputs
        assert spec.type == np.dtype(np.float32) and spec.shape == (-1, 1, 32, 32)
        assert model.metadata.get_output_schema().inputs[0].shape == (-1, 2)
        np.testing.assert_allclose(model.predict(stored(cases)), reference, atol=TOLERANCE)
        # a different batch size than the traced example's
        np.testing.assert_allclose(model.predict(stored(cases)[:3]), reference[:3], atol=TOLERANCE)
    report = [a.path for a in mlflow.MlflowClient(uri).list_artifacts(run_id, "report")]
    assert "report/index.html" in report and (run_dir / "report" / "index.html").is_file()
    example = Path(mlflow.artifacts.download_artifacts(f"runs:/{run_id}/model/input_example.json",
                                                       dst_path=str(tmp_path / "example")))
    assert np.asarray(json.loads(example.read_text())).shape == (2, 1, 32, 32)


def test_medexp_predict_takes_runs_and_models_uris(logged_run, tmp_path, monkeypatch):
    import tempfile

    run_dir, run_id, uri, cases, best = logged_run
    reference = predicted(str(best), cases, tmp_path / "ckpt")
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    for name, model_uri in (("run", f"runs:/{run_id}/model"), ("registry", f"models:/{REGISTERED}/1")):
        np.testing.assert_allclose(predicted(model_uri, cases, tmp_path / name), reference, atol=1e-6)
    assert list((tmp_path / "tmp").iterdir()) == []  # the downloaded models are gone


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_matches_pytorch_and_medexp_predict_with_a_free_batch_axis(logged_run, tmp_path, fmt):
    import mlflow

    from medexp.export.formats import FORMATS
    from medexp.workflows.export import export

    run_dir, run_id, uri, cases, best = logged_run
    output = tmp_path / f"model.{fmt}"
    result = export(str(best), fmt, output, tracking_uri=uri)
    assert result["max_abs_difference"] <= TOLERANCE and result["parity_cases"] == 32 and result["parity_split"] == "test"
    reference = predicted(str(best), cases, tmp_path / "preds")
    run = FORMATS[fmt][1]
    for batch in (1, 6):
        np.testing.assert_allclose(run(output, stored(cases)[:batch]), reference[:batch], atol=TOLERANCE)
    if fmt == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(output), providers=["CPUExecutionProvider"])
        (only,) = session.get_inputs()
        assert only.name == "image" and only.shape[1:] == [1, 32, 32] and not isinstance(only.shape[0], int)
    logged = mlflow.MlflowClient(uri).get_run(run_id)
    assert f"export/{fmt}_max_abs_difference" in logged.data.metrics
    assert output.name in [a.path.split("/")[-1] for a in mlflow.MlflowClient(uri).list_artifacts(run_id, "export")]


def test_export_refuses_what_it_cannot_export_in_one_line(logged_run, tmp_path):
    from medexp.workflows.export import export

    with pytest.raises(ConfigError, match="format='tflite' is not known: use one of onnx, torchscript"):
        export(str(logged_run[4]), "tflite", tmp_path / "m")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serving(model_uri: str, tracking_uri: str, log: Path):
    """``mlflow models serve`` of ``model_uri`` on a free loopback port (no environment to build, the venv's
    ``bin`` on PATH for its uvicorn); yields a function that posts a JSON body to ``/invocations`` and returns
    the answer's ``predictions``."""
    from tests.e2e.test_tracking_server import wait_until_serving

    port, bin_dir = free_port(), Path(sys.executable).parent
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    server = subprocess.Popen([str(bin_dir / "mlflow"), "models", "serve", "-m", model_uri, "--env-manager", "local",
                               "-h", "127.0.0.1", "-p", str(port)],
                              env=env, stdout=subprocess.DEVNULL, stderr=open(log, "w"))

    def invoke(body: dict):
        request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        return json.load(urllib.request.urlopen(request, timeout=120))["predictions"]

    try:
        wait_until_serving(f"http://127.0.0.1:{port}", server, log, timeout=120)
        yield invoke
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.mark.slow
def test_registered_model_served_over_http_answers_invocations(logged_run, tmp_path):
    run_dir, run_id, uri, cases, best = logged_run
    reference = predicted(str(best), cases, tmp_path / "preds")
    with serving(f"models:/{REGISTERED}/1", uri, tmp_path / "serve.log") as invoke:
        answer = invoke({"inputs": stored(cases).tolist()})
    np.testing.assert_allclose(np.array(answer), reference, atol=TOLERANCE)
