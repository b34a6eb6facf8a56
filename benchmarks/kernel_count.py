"""Kernels per training step, counted with torch.profiler: on a GPU the seed CNN's step is launch-bound, so the
number of kernels a step launches is what its time follows.

``count_step(step, device)`` profiles one call of ``step``; ``KernelCounter`` profiles one training step of a
``medexp-train`` run (add it with ``+callbacks.kernels._target_=kernel_count.KernelCounter
+callbacks.kernels.out=<file>`` and ``benchmarks/`` on PYTHONPATH) and writes ``{"kernels_per_step": n}``.
On a CPU there are no kernels: the count is of the outermost aten operators the step ran (``unit`` says which).
"""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch.profiler import ProfilerActivity, profile


def _count(prof, device: torch.device) -> dict:
    if device.type == "cuda":
        return {"kernels_per_step": sum(e.device_type == torch.autograd.DeviceType.CUDA for e in prof.events()),
                "unit": "cuda kernels, copies and memsets"}
    return {"kernels_per_step": sum(e.name.startswith("aten::") and not _inside_aten(e) for e in prof.events()),
            "unit": "outermost aten ops (cpu)"}


def _inside_aten(event) -> bool:
    """Whether an aten operator encloses this event (its own kernels are not counted apart)."""
    parent = event.cpu_parent
    while parent is not None:
        if parent.name.startswith("aten::"):
            return True
        parent = parent.cpu_parent
    return False


def _profiler(device: torch.device):
    return profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else []))


def count_step(step: Callable[[], None], device: torch.device) -> dict:
    with _profiler(device) as prof:
        step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    return _count(prof, device)


class KernelCounter(pl.Callback):
    """Profile one whole training step of the first epoch, ``at`` (not the first: warm caches, cuDNN's choice
    made): from the end of step ``at - 1`` to the end of step ``at``, so the batch's fetch, transfer and on-device
    augmentation count too."""

    def __init__(self, out: str, at: int = 5):
        self.out, self.at, self._prof = Path(out), at, None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.current_epoch or batch_idx not in (self.at - 1, self.at):
            return
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
        if batch_idx == self.at - 1:
            self._prof = _profiler(pl_module.device).__enter__()
        elif self._prof is not None:
            self._prof.__exit__(None, None, None)
            self.out.write_text(json.dumps(_count(self._prof, pl_module.device)))
