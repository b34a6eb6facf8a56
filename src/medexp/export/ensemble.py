"""Several trained models as one: their probabilities averaged before the argmax (nnU-Net's fold ensembles).

Members come as a list of checkpoints (paths or MLflow URIs) or as a sweep (``sweep:<parent run id or sweep
name>``: the best checkpoint of each finished child run, folds or seeds), found by ``medexp.checkpoints.members``.
They must share their test-time preprocessing, since ``medexp-predict`` reads each input once; classification and
segmentation outputs (sliding windows included) are averaged per image, detections are not (boxes need fusing, not
averaging).
"""
from __future__ import annotations

from collections.abc import Sequence

import pytorch_lightning as pl
import torch
from torch import nn

from medexp.errors import ConfigError

AVERAGED_KINDS = ("classification", "multilabel_classification", "segmentation")


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
