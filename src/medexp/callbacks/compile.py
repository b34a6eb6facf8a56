"""``trainer.compile=true``: the task's network goes through ``torch.compile`` as fitting starts, on every rank
before DDP wraps it. The first steps then take the compilation (tens of seconds; a C++ compiler on the CPU), every
later one runs the generated kernels; the test after the fit reuses them."""
from __future__ import annotations

from pytorch_lightning import Callback


class CompileNetwork(Callback):
    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage == "fit":
            pl_module.compile_network()
