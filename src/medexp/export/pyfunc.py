"""A run's MLflow model, with the run's slimmed checkpoint inside so ``medexp-predict``/``medexp-export`` accept its
URI: for a classifier a pyfunc around the TorchScript ``DeployableClassifier`` (preprocessing, network,
probabilities); for a segmentation model a pyfunc that runs medexp's own pipeline from that checkpoint
(``SegmentationPredictor``: preprocessing, sliding windows, argmax; ``medexp.export.model`` says why not a graph).

Split in two so a training run never waits on MLflow: ``medexp.export.model.write_model_files`` runs in the trainer
(torch is loaded there, MLflow is not) and writes the checkpoint, an input example and a classifier's TorchScript
file to a folder; ``log_model`` runs in the MLflow writer process (no torch there), which turns that folder into the run's
MLflow 3 LoggedModel ``model`` (its Logged models tab; ``runs:/<run id>/model`` resolves to it) and, if asked, a new
version of a registered model.
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

from medexp.export import CHECKPOINT, CLASSIFICATION, DETECTION, EXAMPLE, LABELS_NAME, META, OUTPUT_NAME, TORCHSCRIPT

MODEL_ARTIFACT = "model"  # runs:/<run id>/model


class MedexpPyfunc(mlflow.pyfunc.PythonModel):
    """float32 ``(N, C, H, W)`` images as stored (0-255 for 8-bit data) -> float32 ``(N, classes)`` probabilities."""

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


class MedexpSegmentationPyfunc(mlflow.pyfunc.PythonModel):
    """float32 ``(N, C, *spatial)`` intensities as stored, on the training grid -> uint8 ``(N, *spatial)`` label maps;
    with ``params={"probabilities": True}`` a dict of those and the float32 ``(N, classes, *spatial)`` probabilities."""

    _skip_type_hint_validation = True

    def load_context(self, context) -> None:
        from medexp.export.model import SegmentationPredictor

        self.model = SegmentationPredictor.from_checkpoint(context.artifacts["checkpoint"])

    def predict(self, context, model_input, params=None):
        probabilities = bool((params or {}).get("probabilities", False))
        return self.model(np.asarray(model_input, dtype=np.float32), probabilities=probabilities)


class MedexpDetectionPyfunc(mlflow.pyfunc.PythonModel):
    """float32 ``(N, C, *spatial)`` intensities as stored -> per image ``{"boxes", "scores", "labels", "classes"}``,
    boxes on the input's own grid in the datalist's box convention (what ``medexp-predict`` writes)."""

    _skip_type_hint_validation = True

    def load_context(self, context) -> None:
        from medexp.export.model import DetectionPredictor

        self.model = DetectionPredictor.from_checkpoint(context.artifacts["checkpoint"])

    def predict(self, context, model_input, params=None) -> list[dict]:
        return self.model(np.asarray(model_input, dtype=np.float32))


def input_grid(meta: dict) -> str:
    """Which grid a file-based model's input must be on, in words."""
    grid = (f"already resampled to the training voxel spacing {meta['training_spacing']} (the model cannot resample "
            "an array: it has no spacing)" if meta["training_spacing"] else "on the stored grid (not resampled)")
    if meta["resize"]:
        grid += f"; any size: resized to {meta['resize']} inside the model"
    return grid


def detection_metadata(meta: dict) -> dict:
    """What a caller must know about a detection model's input and output, in words (the MLmodel's metadata)."""
    axes = "(N, C, H, W)" if meta["spatial_dims"] == 2 else "(N, C, D, H, W)"
    windows = f", sliding windows of {meta['sw_roi_size']}" if meta["sw_roi_size"] else ""
    return {
        "kind": meta["kind"], "class_names": meta["class_names"], "preprocessing": meta["preprocessing"],
        "training_spacing": meta["training_spacing"], "box_mode": meta["box_mode"], "box_axes": meta["box_axes"],
        "input": f"float32 {axes} raw intensities as stored, channels first (no normalisation by the caller), "
                 f"{input_grid(meta)}",
        "output": f"per image a dict: boxes (MONAI box mode {meta['box_mode']}, axis order {meta['box_axes']}: "
                  "the datalist's convention, on the input's own pixel grid), scores, labels (indices into "
                  "class_names), classes; best first",
        "inference": f"RetinaNet{windows}; boxes scoring at least {meta['score_thresh']}, NMS at IoU "
                     f"{meta['nms_thresh']}, at most {meta['detections_per_image']} per image: what medexp-predict "
                     "writes to detections.json for the same image files",
    }


def segmentation_metadata(meta: dict) -> dict:
    """What a caller must know about a segmentation model's input and output, in words (the MLmodel's metadata)."""
    axes = "(N, C, H, W)" if meta["spatial_dims"] == 2 else "(N, C, D, H, W)"
    spatial = "(N, H, W)" if meta["spatial_dims"] == 2 else "(N, D, H, W)"
    grid = input_grid(meta) + (", the label map returned at the input size" if meta["resize"] else "")
    mirroring = f", mirrored along axes {meta['mirrored_axes']} and averaged" if meta["mirrored_axes"] else ""
    return {
        "kind": meta["kind"], "class_names": meta["class_names"], "preprocessing": meta["preprocessing"],
        "training_spacing": meta["training_spacing"], "roi_size": meta["roi_size"],
        "input": f"float32 {axes} raw intensities as stored (no normalisation by the caller), {grid}",
        "output": f"uint8 {spatial} class indices into class_names; with params {{'probabilities': true}} a dict of "
                  f"{LABELS_NAME} and float32 {OUTPUT_NAME} (N, classes, ...)",
        "inference": f"sliding windows of {meta['roi_size']}, overlap {meta['sw_overlap']}, {meta['sw_mode']} "
                     f"weighting{mirroring}, softmax, argmax: what medexp-predict writes for the same image files",
    }


def save_model(folder: Path, path: Path, mlflow_model=None) -> None:
    """The MLflow model (pyfunc flavour, tensor signature, input example) at ``path`` from ``folder``'s files;
    ``mlflow_model``: the ``Model`` whose MLmodel file it writes (the LoggedModel's ids), a new one if None."""
    from importlib.metadata import version

    from mlflow.models import ModelSignature
    from mlflow.types import ParamSchema, ParamSpec, Schema, TensorSpec

    example = np.load(folder / EXAMPLE)
    meta = json.loads((folder / META).read_text())
    # unnamed input: a served request's {"inputs": [...]} arrives as one array, not a dict of named tensors
    requirements = [f"torch=={version('torch').split('+')[0]}", f"mlflow=={mlflow.__version__}", "numpy"]
    if meta["kind"] == CLASSIFICATION:
        python_model, artifacts = MedexpPyfunc(), {"torchscript": str(folder / TORCHSCRIPT)}
        signature = ModelSignature(
            inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, *example.shape[1:]))]),
            outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, len(meta["class_names"])), OUTPUT_NAME)]),
        )
        metadata = {"class_names": meta["class_names"], "input": "float32 (N, C, H, W) as stored (0-255 for 8-bit data), not "
                    "normalised", "output": "float32 (N, classes) probabilities"}
    else:  # segmentation, detection: channels fixed, spatial axes free
        free = (-1,) * meta["spatial_dims"]
        inputs = Schema([TensorSpec(np.dtype(np.float32), (-1, example.shape[1], *free))])
        if meta["kind"] == DETECTION:  # a list of dicts out, as many boxes as found: no tensor schema describes it
            python_model, artifacts = MedexpDetectionPyfunc(), {}
            signature, metadata = ModelSignature(inputs=inputs), detection_metadata(meta)
        else:
            python_model, artifacts = MedexpSegmentationPyfunc(), {}
            signature = ModelSignature(
                inputs=inputs, outputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, *free), LABELS_NAME)]),
                params=ParamSchema([ParamSpec("probabilities", "boolean", False)]),
            )
            metadata = segmentation_metadata(meta)
        requirements.append(f"medexp=={version('medexp')}")  # the pipeline is medexp's own code
    # requirements given, not inferred: inferring them loads the model in a subprocess (seconds per run)
    mlflow.pyfunc.save_model(
        path, python_model=python_model, signature=signature, input_example=example,
        artifacts={**artifacts, "checkpoint": str(folder / CHECKPOINT)}, pip_requirements=requirements,
        metadata=metadata, mlflow_model=mlflow_model,
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


def log_model(client, run_id: str, folder: Path, register_as: str | None = None, monitor: str | None = None,
              monitor_mode: str = "max") -> str | None:
    """Log ``folder`` as the run's MLflow model: one MLflow 3 LoggedModel named ``model`` (the Logged models tab;
    ``runs:/<run id>/model`` finds it), with the run's params, linked to the run at the step of the best
    ``monitor`` value (the checkpoint it holds) and to that step's metrics; registered as a new version of
    ``register_as`` if given. Returns the new version (as a string) or None."""
    import tempfile

    from mlflow.entities import LoggedModelOutput, LoggedModelStatus
    from mlflow.exceptions import MlflowException
    from mlflow.models import Model

    run = client.get_run(run_id)
    meta = json.loads((folder / META).read_text())
    model = client.create_logged_model(run.info.experiment_id, name=MODEL_ARTIFACT, source_run_id=run_id,
                                       params=run.data.params, model_type=meta["kind"])
    try:
        with quiet_mlflow(), tempfile.TemporaryDirectory() as scratch:
            saved = Path(scratch) / MODEL_ARTIFACT
            save_model(folder, saved, Model(artifact_path=model.artifact_location, run_id=run_id,
                                            model_uuid=model.model_id, model_id=model.model_id))
            client.log_model_artifacts(model.model_id, str(saved))
    except BaseException:
        client.finalize_logged_model(model.model_id, LoggedModelStatus.FAILED)  # not left "pending" in the UI
        raise
    client.finalize_logged_model(model.model_id, LoggedModelStatus.READY)
    step = best_step(client, run_id, monitor, monitor_mode)
    client.log_outputs(run_id, [LoggedModelOutput(model.model_id, step=step)])
    link_metrics(client, run, model.model_id, step)
    if not register_as:
        return None
    try:
        client.create_registered_model(register_as)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    # the artifacts' own location, not models:/<model id>: the sqlite registry looks that URI up through the
    # process's default tracking URI, which need not be this store's
    version = client.create_model_version(register_as, model.artifact_location, run_id=run_id,
                                          model_id=model.model_id)
    return str(version.version)


def best_step(client, run_id: str, monitor: str | None, mode: str) -> int:
    """The step at which ``monitor`` first reached its best value (the evaluation the kept checkpoint is from: a
    checkpoint is replaced only by a better one); 0 where it was never logged."""
    history = client.get_metric_history(run_id, monitor) if monitor else []
    if not history:
        return 0
    best = (max if mode == "max" else min)(metric.value for metric in history)
    return min(metric.step for metric in history if metric.value == best)


def link_metrics(client, run, model_id: str, step: int) -> None:
    """The run's metrics logged at ``step`` as the LoggedModel's (the Logged models table's columns): the same
    entries again with the model's id, which MLflow keeps once in the run's history (as its own ``log_model``)."""
    from mlflow.entities import Metric

    linked = [Metric(entry.key, entry.value, entry.timestamp, entry.step, model_id=model_id, run_id=run.info.run_id)
              for key in run.data.metrics for entry in client.get_metric_history(run.info.run_id, key)
              if entry.step == step]
    if linked:
        client.log_batch(run.info.run_id, metrics=linked)
