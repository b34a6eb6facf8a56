"""Several trained models as one: their probabilities averaged before the argmax (nnU-Net's fold ensembles).

Members come as a list of checkpoints (paths or MLflow URIs) or as a sweep (``sweep:<parent run id or sweep
name>``: the best checkpoint of each finished child run, folds or seeds). They must share their test-time
preprocessing, since ``medexp-predict`` reads each input once; classification and segmentation outputs (sliding
windows included) are averaged per image, detections are not (boxes need fusing, not averaging).
"""
from __future__ import annotations

import os
from collections.abc import Sequence

import pytorch_lightning as pl
import torch
from torch import nn

from medexp.errors import ConfigError

SWEEP_PREFIX = "sweep:"
AVERAGED_KINDS = ("classification", "multilabel_classification", "segmentation")


def ensemble_members(ckpt_path: str | Sequence[str]) -> list[str]:
    """The checkpoints ``ckpt_path`` names: itself, a list, or a sweep's children."""
    if isinstance(ckpt_path, str):
        return sweep_members(ckpt_path.removeprefix(SWEEP_PREFIX)) if ckpt_path.startswith(SWEEP_PREFIX) else [ckpt_path]
    members = [str(path) for path in ckpt_path]
    if not members:
        raise ConfigError("ckpt_path=[] names no checkpoint: give one, a list, or sweep:<parent run id or name>")
    return members


def sweep_members(sweep: str) -> list[str]:
    """``runs:/<child>/checkpoints/<best>`` of every finished child of the sweep (searched in every experiment of
    the store ``MLFLOW_TRACKING_URI`` names)."""
    from mlflow.tracking import MlflowClient

    from medexp.tracking.compare import _find_parent

    # the environment's store, not a URI an earlier caller in this process set globally with mlflow.set_tracking_uri
    client = MlflowClient(os.environ.get("MLFLOW_TRACKING_URI") or None)
    for experiment in client.search_experiments():
        try:
            parent = _find_parent(client, [experiment.experiment_id], sweep)
        except ConfigError:
            continue
        children = client.search_runs([experiment.experiment_id],
                                      f"tags.mlflow.parentRunId = '{parent.info.run_id}' and status = 'FINISHED'")
        members = []
        for child in children:
            best = [a.path for a in client.list_artifacts(child.info.run_id, "checkpoints")
                    if a.path.rsplit("/", 1)[-1].startswith("best")]
            members += [f"runs:/{child.info.run_id}/{path}" for path in best[:1]]
        if not members:
            raise ConfigError(f"sweep {sweep!r} has no finished child run with a best checkpoint to ensemble")
        return members
    raise ConfigError(f"no sweep {sweep!r} (a parent run id or sweep name) in {client.tracking_uri}: set "
                      "MLFLOW_TRACKING_URI to the store it was logged to")


def check_same_preprocessing(datamodules: Sequence, members: Sequence[str]) -> None:
    """Members must read images alike: same data module class and the same learnt preprocessing state."""
    first = datamodules[0].state_dict()
    for datamodule, member in zip(datamodules[1:], members[1:], strict=True):
        state = datamodule.state_dict()
        differing = [key for key in first if state.get(key) != first[key]]
        if type(datamodule) is not type(datamodules[0]) or differing:
            what = differing[0] if differing else type(datamodule).__name__
            raise ConfigError(f"ensemble member {member} preprocesses images differently from {members[0]} "
                              f"({what}): ensemble models trained on the same data")


class Ensemble(pl.LightningModule):
    """Predicts the mean of its members' ``predict_step`` outputs (class or voxel probabilities)."""

    def __init__(self, tasks: Sequence[pl.LightningModule]):
        super().__init__()
        kinds = {task.prediction_kind for task in tasks}
        if len(kinds) > 1 or not kinds <= set(AVERAGED_KINDS):
            raise ConfigError(f"cannot ensemble {', '.join(sorted(kinds))} models: medexp averages the "
                              f"probabilities of {', '.join(AVERAGED_KINDS)} models of one kind")
        if len({tuple(task.class_names) for task in tasks}) > 1:
            raise ConfigError("ensemble members predict different classes: ensemble models of one task")
        self.members = nn.ModuleList(tasks)
        self.prediction_kind = tasks[0].prediction_kind
        self.class_names = list(tasks[0].class_names)

    def predict_step(self, batch, batch_idx):
        return torch.stack([member.predict_step(batch, batch_idx).float() for member in self.members]).mean(dim=0)
