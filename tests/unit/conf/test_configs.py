"""Every option of every config group composes, resolves and instantiates; typos fail with Hydra's message."""
from __future__ import annotations

import itertools

import pytest
import torch
from hydra.errors import ConfigCompositionException
from hydra.utils import instantiate
from omegaconf import OmegaConf

from medexp.factory import build_network, build_trainer
from tests.conftest import REPO

CONF = REPO / "conf"


SEGMENTATION = {"data": {"chasedb1", "decathlon", "folder_photos", "hc18", "hippocampus"},
                "model": {"unet", "segresnet", "attention_unet", "swin_unetr", "unetr", "dynunet"}}
SEGMENTATION_COMPANIONS = {"data": "data=chasedb1", "model": "model=unet", "task": "task=segmentation"}
DETECTION = {"data": {"synthetic_boxes", "detection_datalist", "voc"}, "model": {"retinanet"}, "task": {"detection"}}
DETECTION_COMPANIONS = {"data": "data=synthetic_boxes", "model": "model=retinanet", "task": "task=detection"}


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def companions(group: str, option: str) -> list[str]:
    """Segmentation (detection) options compose with segmentation (detection) data, model and task; the rest with
    the defaults."""
    if (group, option) == ("data", "medmnist"):  # the generic MedMNIST entry needs the set's name and classes
        return ["data.name=pathmnist", "data.num_classes=9", "data.in_channels=3"]
    if option in SEGMENTATION.get(group, set()) or (group == "task" and option.startswith("segmentation")):
        return [o for g, o in SEGMENTATION_COMPANIONS.items() if g != group]
    if option in DETECTION.get(group, set()):
        return [o for g, o in DETECTION_COMPANIONS.items() if g != group]
    return []


def test_config_groups_have_real_options():
    for group, at_least in {"data": 2, "augmentation": 3, "model": 3, "optimizer": 3, "scheduler": 3,
                            "trainer": 5, "logger": 3, "callbacks": 2, "debug": 3, "experiment": 1}.items():
        assert len(options(group)) >= at_least, f"conf/{group} has {options(group)}"


@pytest.mark.parametrize("group", ["data", "augmentation", "model", "optimizer", "scheduler", "task", "trainer",
                                   "logger", "callbacks", "debug", "experiment", "hparams_search"])
def test_every_option_composes_and_resolves(make_cfg, group):
    for option in options(group):
        cfg = make_cfg(f"{group}={option}", *companions(group, option))
        OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves


@pytest.mark.parametrize("data,model", list(itertools.product(["synthetic", "pneumoniamnist", "dermamnist"],
                                                                ["cnn", "resnet18", "densenet121"])))
def test_models_instantiate_for_each_data_shape(make_cfg, data, model):
    # DenseNet-121 halves the input 5 times: MedMNIST's 28 px files are too small, their 64 px versions are not
    cfg = make_cfg(f"data={data}", f"model={model}", *(["data.image_size=64"] if model == "densenet121" else []))
    net = build_network(cfg)
    size = cfg.data.image_size
    logits = net(torch.zeros(2, cfg.data.in_channels, size, size))
    assert logits.shape == (2, cfg.data.num_classes)


@pytest.mark.parametrize("model", sorted(SEGMENTATION["model"]))
@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_segmentation_models_instantiate_in_2d_and_3d(make_cfg, model, spatial_dims):
    patch = [64 if model == "swin_unetr" else 32] * spatial_dims  # SwinUNETR downsamples 32x
    cfg = make_cfg("data=chasedb1", f"model={model}", "task=segmentation", f"data.spatial_dims={spatial_dims}",
                   f"data.patch_size=[{','.join(map(str, patch))}]", "data.in_channels=1")
    overrides = {"feature_size": 12, "hidden_size": 96, "mlp_dim": 192, "num_heads": 4} if model == "unetr" else {}
    net = build_network(cfg, **overrides)
    assert net(torch.zeros(1, 1, *patch)).shape == (1, cfg.data.num_classes, *patch)


@pytest.mark.parametrize("optimizer,scheduler", list(itertools.product(options("optimizer"), options("scheduler"))))
def test_optimizers_and_schedulers_instantiate(make_cfg, optimizer, scheduler):
    cfg = make_cfg(f"optimizer={optimizer}", f"scheduler={scheduler}")
    params = [torch.nn.Parameter(torch.zeros(3))]
    opt = instantiate(cfg.optimizer)(params=params)
    assert opt.param_groups[0]["lr"] == cfg.optimizer.lr
    if cfg.scheduler:
        instantiate(cfg.scheduler)(optimizer=opt)


@pytest.mark.parametrize("trainer", ["default", "cpu", "ddp_cpu"])
def test_cpu_trainers_instantiate(make_cfg, trainer):

    cfg = make_cfg(f"trainer={trainer}")
    t = build_trainer(cfg, loggers=[], callbacks=[])  # as runs build it: less medexp's own trainer.budget
    assert t.max_epochs == cfg.trainer.max_epochs


def test_unknown_option_lists_the_valid_ones(make_cfg):
    with pytest.raises(ConfigCompositionException, match="resnet18"):
        make_cfg("model=resnet1800")


def test_misspelled_key_is_rejected(make_cfg):
    with pytest.raises(ConfigCompositionException, match="optimizr"):
        make_cfg("optimizr.lr=0.1")
