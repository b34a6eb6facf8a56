"""Fine-tuning in training: another run's weights copied in before the first step (``model.pretrained``), named
layers frozen for the first epochs (``model.freeze``, ``model.freeze_epochs``). The weight logic itself lives in
``medexp.models.pretrained``; these callbacks only decide when it runs."""
from __future__ import annotations

from collections.abc import Sequence

from omegaconf import DictConfig
from pytorch_lightning import Callback
from pytorch_lightning.callbacks import BaseFinetuning
from torch.nn.modules.batchnorm import _BatchNorm

from medexp.checkpoints import read_network
from medexp.models.pretrained import frozen_modules, load_pretrained


def finetune_callbacks(cfg: DictConfig) -> list[Callback]:
    """The callbacks ``cfg.model``'s fine-tuning keys ask for (none by default)."""
    model = cfg.model
    callbacks: list[Callback] = []
    if model.get("pretrained"):
        callbacks.append(PretrainedWeights(str(model.pretrained), (cfg.get("data") or {}).get("in_channels")))
    if model.get("freeze"):
        callbacks.append(FreezeLayers(list(model.freeze), int(model.freeze_epochs)))
    return callbacks


class PretrainedWeights(Callback):
    """Copies a source run's weights into the network where they fit, before training starts."""

    def __init__(self, source: str, in_channels: int | None):
        self.in_channels = in_channels
        self.weights = read_network(source)  # read now: a missing source stops the run before it trains

    def setup(self, trainer, pl_module, stage: str) -> None:
        # a resumed fit restores its own checkpoint after this hook, so the copy would be overwritten anyway
        if stage != "fit" or self.weights is None or trainer.ckpt_path is not None:
            return
        transfer = load_pretrained(pl_module.net, self.weights, self.in_channels)
        self.weights = None  # the network holds them now
        if trainer.is_global_zero:
            print(transfer.describe(), flush=True)


class FreezeLayers(BaseFinetuning):
    """Keeps the named modules of the network frozen for the first ``epochs`` epochs, then trains them too.

    Frozen means running as at inference: no gradient (``requires_grad`` off) and eval mode, so BatchNorm normalises
    with the statistics it brought and does not update them, and dropout is off. The frozen layers then compute one
    fixed function in training and in validation alike, which is what a new head should learn on; letting BatchNorm
    re-estimate its statistics from the new data's batches would shift the features under the head every step.

    Unlike BaseFinetuning's own recipe (leave frozen parameters out of the optimizer, add them as a new param group
    when unfrozen), the optimizer here holds every parameter from the start and freezing happens at each epoch's
    start: torch's optimizers skip a parameter without a gradient (no step, no weight decay, no momentum), and an
    unfrozen layer then follows the LR schedule with the rest. A param group added later escapes the schedule, and
    ReduceLROnPlateau fails on it (Lightning #12141, #8720).
    """

    def __init__(self, names: Sequence[str], epochs: int):
        super().__init__()
        self.names, self.epochs = list(names), int(epochs)
        self.modules: list = []
        self.frozen = False

    def freeze_before_training(self, pl_module) -> None:
        # called in setup, before configure_optimizers: find the modules only (see the class docstring)
        self.modules = frozen_modules(pl_module.net, self.names)

    def finetune_function(self, pl_module, epoch: int, optimizer) -> None:
        freeze = epoch < self.epochs
        if freeze:  # every epoch: Lightning's validation loop restores modes, but a resume starts fresh
            self.freeze(self.modules, train_bn=False)
            for module in self.modules:
                module.eval()
        elif self.frozen:
            self._thaw()
        if freeze != self.frozen and pl_module.trainer.is_global_zero:
            count = sum(p.numel() for m in self.modules for p in m.parameters())
            norms = any(isinstance(m, _BatchNorm) for module in self.modules for m in module.modules())
            state = (f"frozen until epoch {self.epochs} ({count:,} parameters"
                     + (", BatchNorm statistics kept)" if norms else ")") if freeze else "unfrozen")
            print(f"medexp: epoch {epoch}: model.freeze=[{', '.join(self.names)}] {state}", flush=True)
        self.frozen = freeze

    def on_fit_end(self, trainer, pl_module) -> None:
        # the network leaves training as it came in (a run frozen to the end is tested and reported after this)
        if self.frozen:
            self._thaw()
            self.frozen = False

    def _thaw(self) -> None:
        self.make_trainable(self.modules)
        for module in self.modules:
            module.train()
