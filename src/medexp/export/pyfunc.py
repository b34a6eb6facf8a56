"""A run's MLflow model: a pyfunc around the TorchScript ``DeployableClassifier`` (preprocessing, network,
probabilities), with the run's slimmed checkpoint beside it so ``medexp-predict``/``medexp-export`` accept the URI.

Split in two so a training run never waits on MLflow: ``medexp.export.model.write_model_files`` runs in the trainer
(torch is loaded there, MLflow is not) and writes the TorchScript file, the checkpoint and an input example to a
folder; ``log_model`` runs in the MLflow writer process (no torch there), which turns that folder into the run's
``model`` artifact and, if asked, a new version of a registered model.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import warnings
from pathlib import Path

import mlflow.pyfunc
import numpy as np

from medexp.export import CHECKPOINT, EXAMPLE, META, OUTPUT_NAME, TORCHSCRIPT

MODEL_ARTIFACT = "model"  # runs:/<run id>/model


class MedexpPyfunc(mlflow.pyfunc.PythonModel):
    """float32 ``(N, C, H, W)`` images as stored (0-255) -> float32 ``(N, classes)`` probabilities."""

    # validated by the model's tensor signature, not by type hints (MLflow warns on every import without either)
    _skip_type_hint_validation = True

    def load_context(self, context) -> None:
        import torch

        with warnings.catch_warnings():  # torch 2.14 marks TorchScript deprecated; the file is ours and loads fine
            warnings.filterwarnings("ignore", message=".*torch.jit.load.* is deprecated", category=FutureWarning)
            self.model = torch.jit.load(context.artifacts["torchscript"], map_location="cpu").eval()

    def predict(self, context, model_input, params=None) -> np.ndarray:
        import torch

        images = torch.as_tensor(np.asarray(model_input, dtype=np.float32))
        with torch.no_grad():
            return self.model(images).numpy()


def save_model(folder: Path, path: Path) -> None:
    """The MLflow model (pyfunc flavour, tensor signature, input example) at ``path`` from ``folder``'s files."""
    from importlib.metadata import version

    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    example = np.load(folder / EXAMPLE)
    classes = json.loads((folder / META).read_text())["class_names"]
    signature = ModelSignature(
        # unnamed: a served request's {"inputs": [...]} arrives as one array, not a dict of named tensors
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, *example.shape[1:]))]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, len(classes)), OUTPUT_NAME)]),
    )
    # requirements given, not inferred: inferring them loads the model in a subprocess (seconds per run)
    mlflow.pyfunc.save_model(
        path, python_model=MedexpPyfunc(), signature=signature, input_example=example,
        artifacts={"torchscript": str(folder / TORCHSCRIPT), "checkpoint": str(folder / CHECKPOINT)},
        pip_requirements=[f"torch=={version('torch').split('+')[0]}", f"mlflow=={mlflow.__version__}", "numpy"],
        metadata={"class_names": classes, "input": "float32 (N, C, H, W) as stored (0-255), not normalised",
                  "output": "float32 (N, classes) probabilities"},
    )


@contextlib.contextmanager
def quiet_mlflow():
    """Without MLflow's notes a medexp user cannot act on: the pickled python_model (it is medexp's own class),
    progress bars of local copies."""
    logger = logging.getLogger("mlflow.pyfunc")
    level, bars = logger.level, os.environ.get("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")
    logger.setLevel(logging.ERROR)
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    try:
        yield
    finally:
        logger.setLevel(level)
        if bars is None:
            os.environ.pop("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")
        else:
            os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = bars


def log_model(client, run_id: str, folder: Path, register_as: str | None = None) -> str | None:
    """Log ``folder`` as the run's ``model`` artifact; register it as a new version of ``register_as`` if given.
    Returns the new version (as a string) or None."""
    import tempfile

    from mlflow.exceptions import MlflowException

    with quiet_mlflow(), tempfile.TemporaryDirectory() as scratch:
        saved = Path(scratch) / MODEL_ARTIFACT
        save_model(folder, saved)
        client.log_artifacts(run_id, str(saved), MODEL_ARTIFACT)
        if not register_as:
            return None
        try:
            client.create_registered_model(register_as)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        version = client.create_model_version(register_as, f"runs:/{run_id}/{MODEL_ARTIFACT}", run_id=run_id)
    return str(version.version)
