"""Config checks of ``medexp.workflows.build`` that run before training: a class count the data does not have, a
network of another task, a GPU trainer without a GPU; each one line naming the fix."""
from __future__ import annotations

import pytest

from medexp.errors import ConfigError
from medexp.workflows.build import build_datamodule, check_accelerator, check_network_fits_task


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
