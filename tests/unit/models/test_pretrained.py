"""Fine-tuning from another run: ``model.pretrained`` copies what fits, adapts input convolutions across 1 <-> 3
channels and reports what it skipped; ``model.freeze`` keeps named layers fixed for ``model.freeze_epochs`` epochs."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from pytorch_lightning import Callback

from medexp.checkpoints import read_network
from medexp.errors import ConfigError, DataError
from medexp.factory import build_callbacks, build_datamodule, build_network, build_task, build_trainer
from medexp.models.pretrained import check_finetuning, load_pretrained
from tests.conftest import compose_config
from tests.unit.cli.test_train import assert_clear_error, medexp
from tests.unit.workflows.test_predict import QUICK, train

TINY = ["data.num_train=96", "data.num_val=32", "data.num_test=32", "data.batch_size=32"]
TINY_RESNET = ["model=resnet10", "model.block_inplanes=[8,8,8,8]", "data.image_size=16"]


def network_state(ckpt: Path) -> dict[str, torch.Tensor]:
    state = torch.load(ckpt, weights_only=True)["state_dict"]
    return {k.removeprefix("net."): v for k, v in state.items() if k.startswith("net.")}


class Snapshots(Callback):
    """The network's weights and buffers when training starts and after each training epoch."""

    def __init__(self):
        self.states: list[dict[str, torch.Tensor]] = []

    def _take(self, pl_module) -> None:
        self.states.append({k: v.detach().clone() for k, v in pl_module.net.state_dict().items()})

    def on_train_start(self, trainer, pl_module) -> None:
        self._take(pl_module)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._take(pl_module)


def fit(cfg):
    """medexp-train's build steps, with snapshots of the network; the trainer and the snapshots."""
    datamodule = build_datamodule(cfg)
    task = build_task(cfg, datamodule, OmegaConf.to_container(cfg, resolve=True))
    snapshots = Snapshots()
    trainer = build_trainer(cfg, [], [*build_callbacks(cfg, has_logger=False), snapshots])
    trainer.fit(task, datamodule=datamodule)
    return trainer, task, snapshots.states


def save_source(net: torch.nn.Module, in_channels: int, path: Path) -> Path:
    """A checkpoint as medexp-train writes it, as far as ``model.pretrained`` reads one."""
    torch.save({"state_dict": {f"net.{k}": v for k, v in net.state_dict().items()},
                "hyper_parameters": {"config": {"data": {"in_channels": in_channels}}}}, path)
    return path


@pytest.fixture(scope="module")
def synthetic_ckpt(tmp_path_factory) -> Path:
    """The default experiment (synthetic lesions, 32 px, the classic CNN), briefly trained."""
    return train(tmp_path_factory.mktemp("source"), *TINY)


def test_synthetic_model_fine_tunes_on_pneumoniamnist(tmp_path, synthetic_ckpt, pneumonia_npz, capsys):
    cfg = compose_config([*QUICK, "data=pneumoniamnist", f"data.root={pneumonia_npz.parent}", "data.download=false",
                          f"model.pretrained={synthetic_ckpt}"], tmp_path)
    _, _, states = fit(cfg)
    before, source = states[0], network_state(synthetic_ckpt)
    # 32 px there, 28 px here: the first dense layer after the convolutions has another input size
    skipped = "classifier.0.weight"
    assert source[skipped].shape == (120, 64 * 6 * 6) and before[skipped].shape == (120, 64 * 5 * 5)
    assert set(before) == set(source)
    for key in before.keys() - {skipped}:
        assert torch.equal(before[key], source[key]), key
    report = [line for line in capsys.readouterr().out.splitlines() if "model.pretrained=" in line]
    assert len(report) == 1, report
    assert f"{len(source) - 1} of {len(source)} weights loaded" in report[0]
    assert "skipped, shape differs" in report[0] and f"{skipped} (120x2304 there, 120x1600 here)" in report[0]
    assert states[-1]["features.0.weight"].ne(source["features.0.weight"]).any()  # and then it trained


def test_one_channel_run_drives_a_three_channel_model(make_cfg, synthetic_ckpt):
    source = build_network(OmegaConf.create(torch.load(synthetic_ckpt, weights_only=True)["hyper_parameters"]["config"]))
    source.load_state_dict(network_state(synthetic_ckpt))
    cfg = make_cfg("data.in_channels=3")
    net = build_network(cfg)
    transfer = load_pretrained(net, read_network(str(synthetic_ckpt)), cfg.data.in_channels)
    assert torch.equal(net.features[0].weight, source.features[0].weight.repeat(1, 3, 1, 1) / 3)
    gray = torch.rand(4, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(net.eval()(gray.expand(-1, 3, -1, -1)), source.eval()(gray), atol=1e-5)
    assert transfer.adapted == [("features.0.weight", 1, 3)] and not transfer.skipped
    assert "input channels 1 -> 3 (repeated / 3): features.0.weight" in transfer.describe()


@pytest.mark.parametrize("channels_there,channels_here", [(1, 3), (3, 1)])
def test_input_adaptation_keeps_a_batchnorm_resnet_s_output_on_gray_images(make_cfg, tmp_path, channels_there,
                                                                          channels_here):
    """ResNet-10 (BatchNorm, evaluated with non-trivial running statistics): on a gray image, the adapted network
    computes what the source computed on that image with the source's channels."""
    torch.manual_seed(0)
    source = build_network(make_cfg(*TINY_RESNET, f"data.in_channels={channels_there}"))
    for module in source.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    path = save_source(source, channels_there, tmp_path / "source.ckpt")
    net = build_network(make_cfg(*TINY_RESNET, f"data.in_channels={channels_here}"))
    transfer = load_pretrained(net, read_network(str(path)), channels_here)
    assert [key for key, _, _ in transfer.adapted] == ["conv1.weight"]
    gray = torch.rand(2, 1, 16, 16)
    with torch.no_grad():
        here, there = net.eval()(gray.expand(-1, channels_here, -1, -1)), source.eval()(gray.expand(-1, channels_there, -1, -1))
    assert torch.allclose(here, there, atol=1e-5), (here - there).abs().max()


def test_a_head_for_other_classes_is_skipped_and_reported(make_cfg, tmp_path):
    source = build_network(make_cfg(*TINY_RESNET))
    path = save_source(source, 1, tmp_path / "source.ckpt")
    net = build_network(make_cfg(*TINY_RESNET, "data.num_classes=5"))
    transfer = load_pretrained(net, read_network(str(path)), 1)
    assert [key for key, _, _ in transfer.skipped] == ["fc.weight", "fc.bias"]
    for key, value in net.state_dict().items():
        assert key.startswith("fc.") or torch.equal(value, source.state_dict()[key]), key
    line = transfer.describe()
    assert "\n" not in line and "fc.weight (2x8 there, 5x8 here), fc.bias (2 there, 5 here)" in line


def test_frozen_layers_stay_fixed_for_the_first_epochs_then_train(tmp_path):
    cfg = compose_config([*QUICK, *TINY, *TINY_RESNET, "trainer.max_epochs=2", "model.freeze=[conv1,bn1,layer1]",
                          "model.freeze_epochs=1"], tmp_path)
    trainer, task, (start, epoch0, epoch1) = fit(cfg)
    frozen = [k for k in start if k.split(".")[0] in ("conv1", "bn1", "layer1")]
    assert any("running_mean" in k for k in frozen)
    for key in frozen:  # weights and BatchNorm statistics alike
        assert torch.equal(epoch0[key], start[key]), key
    assert any(not torch.equal(epoch1[k], epoch0[k]) for k in frozen if k.endswith("weight"))
    assert not torch.equal(epoch0["layer2.0.conv1.weight"], start["layer2.0.conv1.weight"])
    # one param group holds every parameter, so the LR schedule covers the unfrozen layers too
    (optimizer,) = trainer.optimizers
    assert len(optimizer.param_groups) == 1 and len(optimizer.param_groups[0]["params"]) == len(list(task.parameters()))
    assert all(p.requires_grad for p in task.parameters()) and task.net.layer1.training


@pytest.mark.parametrize("overrides,words", [
    (["model.freeze=[features.9]"], ["features.9", "features, classifier"]),
    (["model.freeze=[features]"], ["freezes nothing", "model.freeze_epochs"]),
    (["model.freeze_epochs=2"], ["model.freeze is empty"]),
    (["model.freeze=[features]", "model.freeze_epochs=1", "trainer=ddp"],
     ["ddp_find_unused_parameters_true"]),
])
def test_fine_tuning_settings_that_cannot_work_are_refused(make_cfg, overrides, words):
    cfg = make_cfg(*overrides)
    with pytest.raises(ConfigError) as error:
        check_finetuning(cfg, build_network(cfg))
    assert "\n" not in str(error.value) and all(word in str(error.value) for word in words), error.value


def test_missing_pretrained_checkpoint_is_one_line(tmp_path, tracking_uri):
    missing = tmp_path / "nope.ckpt"
    done = medexp(f"model.pretrained={missing}", *TINY, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert_clear_error(done, f"model.pretrained={missing}: no such file")
    assert len([line for line in done.stderr.splitlines() if "error:" in line]) == 1


def test_unknown_frozen_module_is_one_line(tmp_path):
    done = medexp("model.freeze=[backbone]", "model.freeze_epochs=1", "logger=none", *TINY,
                  f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert_clear_error(done, "model.freeze=[backbone]", "ClassicCNN has no module 'backbone'", "features, classifier")


# -- weights files (a state dict, not a medexp checkpoint) ---------------------------------------------------------
def medicalnet_like(path: Path, in_channels: int = 1) -> dict[str, torch.Tensor]:
    """A MedicalNet-style file for a 3D ResNet-10 layout: its 7x7x7 stem, a segmentation head (``conv_seg``) where
    a classifier has ``fc``, every name under ``module.`` (saved from DataParallel), all under ``state_dict``."""
    from monai.networks.nets import ResNet

    torch.manual_seed(1)
    source = ResNet("basic", [1, 1, 1, 1], [8, 8, 8, 8], spatial_dims=3, n_input_channels=in_channels,
                    conv1_t_size=7, conv1_t_stride=2, num_classes=2)
    state = {k: v for k, v in source.state_dict().items() if not k.startswith("fc.")}
    state["conv_seg.0.weight"] = torch.randn(4, 8, 3, 3, 3)
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 200}, path)
    return state


def test_a_medicalnet_style_weights_file_starts_a_3d_resnet_run(tmp_path, capsys):
    from tests.unit.data.test_medmnist import write_volumes

    write_volumes(tmp_path / "tinymnist3d.npz", n=8)
    weights = tmp_path / "resnet_10_23dataset.pth"
    source = medicalnet_like(weights)
    cfg = compose_config([*QUICK, "data=medmnist", "data.name=tinymnist3d", f"data.root={tmp_path}",
                          "data.download=false", "data.num_classes=2", "data.spatial_dims=3", "data.batch_size=4",
                          *TINY_RESNET[:2], f"model.pretrained={weights}"], tmp_path)
    _, _, states = fit(cfg)
    before = states[0]
    loaded = [key for key in before if key in source and key != "conv1.weight"]
    assert len(loaded) == len(before) - 3  # all but the stem (3x3x3 here) and the head (fc.weight, fc.bias)
    for key in loaded:
        assert torch.equal(before[key], source[key]), key
    (line,) = [line for line in capsys.readouterr().out.splitlines() if "model.pretrained=" in line]
    assert f"{len(loaded)} of {len(before)} weights loaded" in line
    assert "conv1.weight (8x1x7x7x7 there, 8x1x3x3x3 here)" in line
    assert "only in this network (trained from scratch): fc.weight, fc.bias" in line
    assert "only in the source (unused): conv_seg.0.weight" in line


@pytest.mark.parametrize("layout", ["plain", "model"])
def test_a_plain_state_dict_loads_into_a_3d_densenet_and_its_input_convolution_adapts(tmp_path, layout):
    from monai.networks.nets import DenseNet121

    torch.manual_seed(0)
    source = DenseNet121(spatial_dims=3, in_channels=1, out_channels=5)
    state = source.state_dict()
    torch.save({"model": state, "epoch": 3} if layout == "model" else state, tmp_path / "weights.pt")
    net = DenseNet121(spatial_dims=3, in_channels=2, out_channels=2)
    transfer = load_pretrained(net, read_network(str(tmp_path / "weights.pt")), 2)
    assert transfer.adapted == [("features.conv0.weight", 1, 2)]
    assert [key for key, _, _ in transfer.skipped] == ["class_layers.out.weight", "class_layers.out.bias"]
    assert torch.equal(net.features.conv0.weight, state["features.conv0.weight"].repeat(1, 2, 1, 1, 1) / 2)
    assert torch.equal(net.features.denseblock4.denselayer16.layers.conv2.weight,
                       state["features.denseblock4.denselayer16.layers.conv2.weight"])


def test_a_file_without_weights_is_one_line(tmp_path):
    torch.save({"epoch": 3, "optimizer": {"lr": 0.1}}, tmp_path / "notes.pt")
    with pytest.raises(DataError, match=r"notes.pt holds no weights: give a state dict"):
        read_network(str(tmp_path / "notes.pt"))
    (tmp_path / "text.pt").write_text("not a torch file")
    with pytest.raises(DataError, match=r"model.pretrained=.*text.pt: cannot read checkpoint"):
        read_network(str(tmp_path / "text.pt"))
