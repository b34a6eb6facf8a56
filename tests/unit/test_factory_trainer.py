"""medexp's own options of the ``trainer`` group: compile, float32 matmul precision, sync_batchnorm=auto."""
from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from medexp.callbacks.compile import CompileNetwork
from medexp.errors import ConfigError
from medexp.factory import build_trainer, sync_batchnorm
from medexp.tasks.base import BaseTask
from medexp.workflows.lifecycle import check_config_values


def test_compile_true_compiles_the_network_when_fitting_starts(make_cfg):
    trainer = build_trainer(make_cfg("trainer.compile=true"), loggers=[], callbacks=[])
    (compiler,) = [c for c in trainer.callbacks if isinstance(c, CompileNetwork)]
    task = BaseTask(nn.Linear(2, 2), torch.optim.SGD)
    compiler.setup(trainer, task, "test")
    assert task.net._compiled_call_impl is None  # medexp-eval and the like run as trained, uncompiled
    compiler.setup(trainer, task, "fit")
    assert task.net._compiled_call_impl is not None
    assert not [c for c in build_trainer(make_cfg(), [], []).callbacks if isinstance(c, CompileNetwork)]


def test_matmul_precision_is_set_where_cuda_is_and_left_alone_elsewhere(make_cfg, monkeypatch):
    before = torch.get_float32_matmul_precision()
    try:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
        build_trainer(make_cfg("trainer.float32_matmul_precision=medium"), loggers=[], callbacks=[])
        assert torch.get_float32_matmul_precision() == before  # the CPU keeps torch's default
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        build_trainer(make_cfg(), loggers=[], callbacks=[])  # trainer=default, on the CPU, still a CUDA machine
        assert torch.get_float32_matmul_precision() == "high"  # the default: TF32 on GPUs that have it
    finally:
        torch.set_float32_matmul_precision(before)


def test_sync_batchnorm_auto_for_small_batches_on_gpus_only(make_cfg):
    # 3D patches: 2 images x 8 patches = 16 a step; CHASEDB1's recipe 2 x 8; MedMNIST batches of 128
    assert not sync_batchnorm(make_cfg("trainer=ddp_cpu"))  # torch's SyncBatchNorm needs a GPU
    assert sync_batchnorm(make_cfg("trainer=ddp", "data=chasedb1", "data.batch_size=1")) is True  # 8 a step
    assert sync_batchnorm(make_cfg("trainer=ddp", "data=chasedb1")) is False  # 4 x 8 = 32
    assert sync_batchnorm(make_cfg("trainer=ddp", "data.batch_size=128")) is False
    assert sync_batchnorm(make_cfg("trainer=ddp", "data.batch_size=8")) is True


@pytest.mark.parametrize(("override", "message"), [
    ("trainer.sync_batchnorm=sometimes", "trainer.sync_batchnorm='sometimes' is not valid: it must be true, false or auto"),
    ("trainer.float32_matmul_precision=tf32", "it must be highest, high or medium"),
    ("trainer.compile=yes please", "trainer.compile='yes please' is not valid: it must be true or false"),
])
def test_bad_trainer_options_are_one_line_naming_the_valid_values(make_cfg, override, message):
    with pytest.raises(ConfigError, match=message):
        check_config_values(OmegaConf.to_container(make_cfg("trainer=ddp", override), resolve=True))
