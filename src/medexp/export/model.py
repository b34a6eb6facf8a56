"""A trained checkpoint as one self-contained inference model: raw stored images in, class probabilities out.

Deployed models (the MLflow model of every run, ``medexp-export``'s ONNX and TorchScript files) all trace the same
``DeployableClassifier``: the data module's test-time intensity preprocessing (8-bit scaling and the training set's
per-channel mean/std, baked in as constants), the network and the task's probability function. Its one input,
``image``, is float32 ``(N, C, H, W)`` in the stored intensity scale (0-255), with a dynamic batch axis; its output
is ``(N, classes)`` probabilities, what ``medexp-predict`` writes for the same images.

Checkpoints are found here too: a path, or an MLflow model URI (``runs:/<id>/model``, ``models:/<name>/<version>``)
whose model carries the run's checkpoint (``resolve_checkpoint``).
"""
from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from medexp.errors import ConfigError, DataError
from medexp.export import CHECKPOINT, EXAMPLE, META, TORCHSCRIPT

MODEL_URI_SCHEMES = ("runs:/", "models:/")
STORED_SCALE = 255.0  # medexp's in-memory sets (MedMNIST, synthetic) store 8-bit images; _as_float divides by it
EXAMPLE_SIZE = 2
SLIM_KEYS = ("state_dict", "hyper_parameters", "pytorch-lightning_version", "best_monitor")


@dataclass
class Loaded:
    """What a checkpoint rebuilds: its config, the data module (preprocessing state loaded) and the task."""

    cfg: DictConfig
    datamodule: Any
    task: Any
    checkpoint: dict


def resolve_checkpoint(ckpt_path: str) -> str:
    """A local checkpoint path for ``ckpt_path``: itself, the checkpoint inside an MLflow model (``runs:/<run
    id>/model``, ``models:/<name>/<version>``) or a checkpoint artifact (``runs:/<run id>/checkpoints/<file>``),
    downloaded from the store ``MLFLOW_TRACKING_URI`` names."""
    if not str(ckpt_path).startswith(MODEL_URI_SCHEMES):
        return str(ckpt_path)
    import mlflow

    store = os.environ.get("MLFLOW_TRACKING_URI") or mlflow.get_tracking_uri()
    try:
        folder = Path(mlflow.artifacts.download_artifacts(artifact_uri=str(ckpt_path), tracking_uri=store))
    except Exception as exc:  # noqa: BLE001 - MLflow raises many kinds; the user needs the URI and the store
        raise DataError(f"cannot fetch the MLflow model {ckpt_path} from {store}: "
                        f"{type(exc).__name__}: {str(exc).splitlines()[0]}; set MLFLOW_TRACKING_URI to the store "
                        "that holds it") from None
    if folder.is_file():  # a checkpoint artifact itself (runs:/<id>/checkpoints/best-epoch003.ckpt)
        return str(folder)
    found = sorted(folder.glob(f"**/{CHECKPOINT}"))
    if not found:
        raise DataError(f"the MLflow model {ckpt_path} holds no medexp checkpoint: it was not logged by medexp-train")
    return str(found[0])


def load_for_inference(ckpt_path: str, trusted_targets: Sequence[str] = (), trust: bool = False,
                       data_root: str | None = None) -> Loaded:
    """Rebuild a checkpoint's data module (its test-time preprocessing; the training data is not read when the
    checkpoint carries its statistics) and task, weights loaded, in eval mode."""
    from hydra.utils import instantiate

    from medexp.workflows.build import build_task
    from medexp.workflows.checkpoints import load_checkpoint

    ckpt = load_checkpoint(resolve_checkpoint(ckpt_path), trusted_targets, trust=trust)
    config = ckpt["hyper_parameters"]["config"]
    cfg = OmegaConf.create(config)
    if data_root is not None:  # only for checkpoints without the data module's state (see below)
        cfg.data.root = data_root
    datamodule = instantiate(cfg.data, augmentation=None, seed=cfg.seed)
    # what preprocessing learnt from the training set (e.g. its mean/std), saved by Lightning with the data module
    if type(datamodule).__qualname__ in ckpt:
        datamodule.load_state_dict(ckpt[type(datamodule).__qualname__])
    task = build_task(cfg, datamodule, config)
    task.load_state_dict(ckpt["state_dict"])
    task.eval()
    return Loaded(cfg, datamodule, task, ckpt)


def slim_checkpoint(loaded: Loaded, path: Path) -> Path:
    """The checkpoint without optimizer and loop state: what inference (and fine-tuning) needs, a third the size."""
    from medexp.workflows.checkpoints import atomic_torch_save

    ckpt = loaded.checkpoint
    keep = [*SLIM_KEYS, type(loaded.datamodule).__qualname__]
    atomic_torch_save({key: ckpt[key] for key in keep if key in ckpt}, path)
    return path


class DeployableClassifier(nn.Module):
    """Stored images -> class (or label) probabilities, the way ``medexp-predict`` computes them."""

    def __init__(self, net: nn.Module, mean: Sequence[float], std: Sequence[float], multi_label: bool):
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))
        self.multi_label = multi_label

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        # the same operations, in the same order, as InMemoryClassificationDataModule.standardise: bit-identical input
        x = (image / STORED_SCALE - self.mean) / self.std
        logits = self.net(x).float()
        return torch.sigmoid(logits) if self.multi_label else torch.softmax(logits, dim=1)


def is_deployable(datamodule, task) -> bool:
    """Whether a run has an inference model: so far classification on in-memory sets (their preprocessing is a
    fixed intensity transform; file-based sets resample and crop, which the model does not yet hold)."""
    from medexp.data.inmemory import InMemoryClassificationDataModule
    from medexp.tasks.classification import ClassificationTask

    return isinstance(datamodule, InMemoryClassificationDataModule) and isinstance(task, ClassificationTask)


def deployable(loaded: Loaded) -> DeployableClassifier:
    """The inference model of a rebuilt checkpoint."""
    datamodule, task = loaded.datamodule, loaded.task
    if not is_deployable(datamodule, task):
        raise ConfigError(f"a {type(task).__name__} on {type(datamodule).__name__} cannot be exported yet (only "
                          "classification on in-memory sets: MedMNIST, synthetic): use medexp-predict for it")
    if datamodule.mean is None:
        datamodule.setup()  # an old checkpoint without its normalisation statistics: read the training set
    return DeployableClassifier(task.net, datamodule.mean, datamodule.std, task.multi_label).eval()


def input_shape(loaded: Loaded) -> list[int]:
    """``(C, H, W)`` of one input image."""
    return list(loaded.datamodule.image_shape)


def stored_test_images(datamodule, limit: int | None = None) -> np.ndarray:
    """The test split's stored images as float32 (the deployed model's input), read from the run's data."""
    if datamodule.arrays is None:
        datamodule.arrays = datamodule.load_arrays()
    return np.asarray(datamodule.arrays.images["test"][:limit], dtype=np.float32)


def trace(model: DeployableClassifier, example: torch.Tensor) -> torch.jit.ScriptModule:
    """TorchScript by tracing (the networks are static graphs); the batch axis stays free."""
    import warnings

    # torch 2.14 marks TorchScript deprecated: still what torch.jit.load users (and the MLflow model) run
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.jit.trace.* is deprecated", category=FutureWarning)
        return torch.jit.trace(model, example, check_trace=False)


def write_model_files(ckpt_path: str, folder: Path, example: np.ndarray | None = None) -> Path:
    """Write what the MLflow model is made of into ``folder``: TorchScript, slimmed checkpoint, input example
    (``example``: a few stored images; zeros of the right shape if none), and the class names."""
    folder.mkdir(parents=True, exist_ok=True)
    loaded = load_for_inference(ckpt_path, trust=True)  # written by this very run: nothing foreign in it
    model = deployable(loaded)
    if example is None:
        example = np.zeros((EXAMPLE_SIZE, *input_shape(loaded)), dtype=np.float32)
    example = np.ascontiguousarray(example[:EXAMPLE_SIZE], dtype=np.float32)
    trace(model, torch.from_numpy(example)).save(str(folder / TORCHSCRIPT))
    slim_checkpoint(loaded, folder / CHECKPOINT)
    np.save(folder / EXAMPLE, example)
    (folder / META).write_text(json.dumps({"class_names": list(loaded.task.class_names),
                                           "source_checkpoint": str(ckpt_path)}))
    return folder
