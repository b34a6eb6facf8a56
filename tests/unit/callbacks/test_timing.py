"""The images/s clock waits for the device: CUDA kernels run after the host has queued them."""
from __future__ import annotations

from types import SimpleNamespace

import torch

from medexp.callbacks.timing import RunTimer


def epoch_with_validation(device: str, monkeypatch, tmp_path) -> list[str]:
    waited: list[str] = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: waited.append(str(device)))
    timer, module, trainer = RunTimer(tmp_path, 0.0), SimpleNamespace(device=torch.device(device)), \
        SimpleNamespace(training=True)
    timer.on_train_epoch_start(trainer, module)
    timer.on_train_batch_end(trainer, module, None, (torch.zeros(8, 1), torch.zeros(8)), 0)
    timer.on_validation_start(trainer, module)
    timer.on_validation_end(trainer, module)
    timer.on_train_epoch_end(trainer, module)
    assert timer.images == 8 and timer.train_seconds > 0
    return waited


def test_on_a_gpu_each_clock_reading_waits_for_the_device(monkeypatch, tmp_path):
    # epoch start, first step, validation start and end, epoch end
    assert epoch_with_validation("cuda:0", monkeypatch, tmp_path) == ["cuda:0"] * 5


def test_on_the_cpu_nothing_waits(monkeypatch, tmp_path):
    assert epoch_with_validation("cpu", monkeypatch, tmp_path) == []
