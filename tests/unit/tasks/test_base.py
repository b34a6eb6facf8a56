"""What every task shares: its own random numbers per DDP rank, fused optimizers on CUDA only, compiling."""
from __future__ import annotations

import functools
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from medexp.tasks.base import BaseTask, fused_on_cuda


def task() -> BaseTask:
    return BaseTask(nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4)), functools.partial(torch.optim.AdamW, lr=1e-3))


def draws_after_setup(rank: int, world_size: int, monkeypatch) -> torch.Tensor:
    monkeypatch.setenv("PL_GLOBAL_SEED", "3")  # what seed_everything(3) leaves for every rank
    torch.manual_seed(3)
    module = task()
    module.trainer = SimpleNamespace(world_size=world_size, global_rank=rank)
    module.setup("fit")
    return torch.rand(4)


def test_each_ddp_rank_draws_its_own_numbers(monkeypatch):
    rank0, rank1 = (draws_after_setup(rank, 2, monkeypatch) for rank in range(2))
    assert not torch.equal(rank0, rank1)
    assert torch.equal(rank0, draws_after_setup(0, 2, monkeypatch))  # seeded, not left to chance


def test_one_process_keeps_the_numbers_it_always_drew(monkeypatch):
    monkeypatch.setenv("PL_GLOBAL_SEED", "3")
    module = task()
    module.trainer = SimpleNamespace(world_size=1, global_rank=0)
    state = torch.get_rng_state()
    module.setup("fit")
    assert torch.equal(torch.get_rng_state(), state)


def test_cpu_parameters_keep_torchs_default_optimizer():
    optimizer = task().configure_optimizers()
    assert isinstance(optimizer, torch.optim.AdamW) and not optimizer.defaults["fused"]


def test_fused_only_for_cuda_parameters_an_optimizer_that_has_it_and_a_config_that_chose_nothing():
    on_cuda = [SimpleNamespace(is_cuda=True)]  # what the check reads of a parameter on a GPU
    adamw = functools.partial(torch.optim.AdamW, lr=1e-3)
    assert fused_on_cuda(adamw, on_cuda) == {"fused": True}
    assert fused_on_cuda(functools.partial(torch.optim.Adam, lr=1e-3), on_cuda) == {"fused": True}
    assert fused_on_cuda(adamw, [nn.Parameter(torch.zeros(2))]) == {}  # on the CPU
    assert fused_on_cuda(functools.partial(torch.optim.AdamW, lr=1e-3, foreach=True), on_cuda) == {}
    assert fused_on_cuda(functools.partial(torch.optim.AdamW, fused=False), on_cuda) == {}
    assert fused_on_cuda(functools.partial(torch.optim.Adamax, lr=1e-3), on_cuda) == {}  # no fused version


@pytest.mark.slow  # inductor compiles C++ for the forward and the backward: minutes on a busy 2-core CPU
@pytest.mark.timeout(900)
def test_compiled_network_trains_and_keeps_its_weight_names():
    module = task()
    names = list(module.state_dict())
    module.compile_network()
    optimizer = module.configure_optimizers()
    loss = module(torch.randn(2, 1, 8, 8)).square().mean()
    loss.backward()
    optimizer.step()
    assert module.net._compiled_call_impl is not None  # the forward above ran through torch.compile
    assert list(module.state_dict()) == names  # checkpoints load into an uncompiled network
