"""What the build layer adds to Hydra's instantiation: class weights from the training labels, the callbacks a run
without a logger can use, and checkpoints to resume from that must fit the model.

Config checks of ``medexp.factory`` that run before training: a class count the data does not have, a
network of another task, a GPU trainer without a GPU; each one line naming the fix."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from pytorch_lightning.callbacks import LearningRateMonitor
from torch import nn

from medexp.checkpoints import check_resumable
from medexp.data.medmnist import MedMNISTDataModule
from medexp.errors import ConfigError, DataError
from medexp.factory import (
    build_callbacks,
    build_datamodule,
    check_accelerator,
    check_network_fits_task,
    class_weights,
)


def medmnist_with_labels(root: Path, train_labels: list[int]) -> MedMNISTDataModule:
    """A PneumoniaMNIST-format file whose training split has these labels, read as medexp-train reads it."""
    arrays = {}
    for split, labels in (("train", train_labels), ("val", [0, 1]), ("test", [0, 1])):
        arrays[f"{split}_images"] = np.zeros((len(labels), 28, 28), np.uint8)
        arrays[f"{split}_labels"] = np.array(labels)[:, None]
    np.savez(root / "pneumoniamnist.npz", **arrays)
    datamodule = MedMNISTDataModule(name="pneumoniamnist", root=str(root), download=False, image_size=28,
                                    batch_size=4, num_classes=2, in_channels=1, spatial_dims=2)
    datamodule.setup("fit")
    return datamodule


def test_balanced_class_weights_are_n_over_k_times_the_class_count(tmp_path):
    datamodule = medmnist_with_labels(tmp_path, [0] * 30 + [1] * 10)
    assert class_weights("balanced", datamodule) == pytest.approx([40 / (2 * 30), 40 / (2 * 10)])
    assert class_weights(None, datamodule) is None
    assert class_weights([1, 2.5], datamodule) == [1.0, 2.5]


def test_class_weights_that_cannot_work_are_one_line_config_errors(tmp_path):
    datamodule = medmnist_with_labels(tmp_path, [0] * 8)
    with pytest.raises(ConfigError, match=r"a class has no training samples \(counts \[8, 0\]\)"):
        class_weights("balanced", datamodule)
    with pytest.raises(ConfigError, match="task.class_weights='inverse' is not understood"):
        class_weights("inverse", datamodule)


def test_the_lr_monitor_is_only_built_where_a_logger_receives_it(make_cfg):
    cfg = make_cfg()
    assert any(isinstance(c, LearningRateMonitor) for c in build_callbacks(cfg, has_logger=True))
    assert not any(isinstance(c, LearningRateMonitor) for c in build_callbacks(cfg, has_logger=False))


MEDEXP_CONFIG = {"hyper_parameters": {"config": {"seed": 0}}}  # a checkpoint is medexp's when it carries its config


def test_a_checkpoint_to_resume_from_must_hold_this_models_weights(tmp_path):
    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    fits = tmp_path / "fits.ckpt"
    torch.save({**MEDEXP_CONFIG, "state_dict": nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2)).state_dict(),
                "epoch": 2, "global_step": 40}, fits)
    assert check_resumable(str(fits), model) == "saved in epoch 2, step 40"
    other = tmp_path / "other.ckpt"
    torch.save({**MEDEXP_CONFIG, "state_dict": nn.Sequential(nn.Linear(4, 5), nn.Linear(5, 2)).state_dict()}, other)
    with pytest.raises(DataError, match=r"does not fit this model: 0.weight is \[5, 4\] there but \[3, 4\] here "
                                        r"\(3 such weights\)"):
        check_resumable(str(other), model)
    partial = tmp_path / "partial.ckpt"
    torch.save({**MEDEXP_CONFIG, "state_dict": nn.Sequential(nn.Linear(4, 3)).state_dict()}, partial)
    with pytest.raises(DataError, match=r"lacks 2 weights of this model \(first: 1.weight\)"):
        check_resumable(str(partial), model)
    broken = tmp_path / "broken.ckpt"
    broken.write_bytes(b"not a checkpoint")
    with pytest.raises(DataError, match=r"cannot read checkpoint .*broken.ckpt: ") as error:
        check_resumable(str(broken), model)
    assert "\n" not in str(error.value)


def test_a_class_count_the_labels_do_not_have_is_refused_once_the_data_is_read(make_cfg, pneumonia_npz):
    cfg = make_cfg("data=pneumoniamnist", f"data.root={pneumonia_npz.parent}", "data.num_classes=3")
    with pytest.raises(ConfigError, match=r"data.num_classes=3 but the labels of .* span 0..1 \(2 classes\): "
                                          r"set data.num_classes=2"):
        build_datamodule(cfg)


def test_class_names_of_another_count_are_refused(make_cfg):
    cfg = make_cfg("data.num_train=32", "data.num_val=16", "data.num_test=16", "+data.class_names=[a,b,c]")
    with pytest.raises(ConfigError, match=r"data.num_classes=2 but data.class_names names 3 classes \(a, b, c\)"):
        build_datamodule(cfg)


def test_a_matching_class_count_builds(make_cfg):
    datamodule = build_datamodule(make_cfg("data.num_train=32", "data.num_val=16", "data.num_test=16"))
    assert datamodule.num_classes == 2


@pytest.mark.parametrize(("overrides", "fix"), [
    (["experiment=chasedb1_vessels", "model=resnet18"], "model=resnet18 is a classification network but the task "
                                                         "is segmentation: add model=unet"),
    (["model=unet"], "model=unet is a segmentation network but the task is classification: add model=cnn"),
    (["experiment=bccd_cells", "model=cnn"], "model=cnn is a classification network but the task is detection: "
                                             "add model=retinanet"),
])
def test_a_network_of_another_task_is_one_line(make_cfg, overrides, fix):
    with pytest.raises(ConfigError, match="^" + fix.replace("(", r"\(")):
        check_network_fits_task(make_cfg(*overrides))


@pytest.mark.parametrize("overrides", [[], ["experiment=chasedb1_vessels"], ["experiment=bccd_cells"],
                                       ["experiment=hippocampus"], ["model=densenet121"]])
def test_the_shipped_pairs_pass(make_cfg, overrides):
    check_network_fits_task(make_cfg(*overrides))


def test_a_gpu_trainer_without_a_gpu_is_one_line(make_cfg, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    with pytest.raises(ConfigError, match="trainer.accelerator=gpu but this machine has no CUDA GPU .*use trainer=cpu"):
        check_accelerator(make_cfg("trainer=gpu"))
    check_accelerator(make_cfg())  # the CPU default needs none
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ConfigError, match=r"trainer.devices=2 but this machine has 1 GPU\(s\)"):
        check_accelerator(make_cfg("trainer=gpu", "trainer.devices=2"))
    check_accelerator(make_cfg("trainer=gpu"))


def test_trainer_budget_is_medexps_option_not_lightnings(make_cfg):
    from omegaconf import OmegaConf

    from medexp.callbacks.budget import TimeBudget
    from medexp.factory import budget_callbacks, build_trainer
    from medexp.workflows.lifecycle import check_config_values

    cfg = make_cfg("trainer.budget=2m", "scheduler=none")
    trainer = build_trainer(cfg, [], [])  # Lightning's Trainer would reject a `budget` argument
    assert trainer.max_epochs == cfg.trainer.max_epochs
    [callback] = budget_callbacks(cfg, launched_at=100.0)
    assert isinstance(callback, TimeBudget) and callback.deadline == 220.0
    assert budget_callbacks(make_cfg("scheduler=none"), launched_at=0.0) == []
    with pytest.raises(ConfigError, match="scheduler=none"):
        budget_callbacks(make_cfg("trainer.budget=2m", "scheduler=cosine"), launched_at=0.0)
    with pytest.raises(ConfigError, match="trainer.budget='soon' is not valid"):
        check_config_values(OmegaConf.to_container(make_cfg("trainer.budget=soon"), resolve=True))
