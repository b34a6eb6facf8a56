"""Fine-tuning from another medexp run: ``model.pretrained``, ``model.freeze`` and ``model.freeze_epochs``.

The network is built from ``cfg.model`` as always (these three keys are not constructor arguments:
``network_config`` drops them). Before training, the network of another run's checkpoint (a ``.ckpt``,
``runs:/<run id>/model`` or ``models:/<name>/<version>``), or a weights file (a state dict, e.g. MedicalNet's 3D
ResNets or torchvision's ImageNet weights, saved by ``torch.save``; ``weights_file``), lends it its weights where
they fit:

- same name, same shape: copied;
- a convolution that reads the input image, where the input channels differ (1 there, C here: repeated and divided
  by C; C there, 1 here: summed): adapted, so that on an image whose channels are all equal the network computes
  what the source computed on one of them (timm's ``adapt_input_conv`` sums the same way);
- any other shape (a head for another number of classes, a dense layer for another image size): skipped, left as
  initialised;
- names on one side only: left as they are.

One line says what was skipped, adapted or unmatched. The source is read by ``medexp.checkpoints.read_network``:
only tensors are taken from it (``weights_only``), nothing of its config is built.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from medexp.errors import ConfigError, DataError

FINETUNE_KEYS = ("pretrained", "freeze", "freeze_epochs")
SHOWN = 4  # keys named per kind in the report line; the rest are counted


def network_config(model_cfg: DictConfig) -> DictConfig:
    """``cfg.model`` without the fine-tuning keys: what the network's constructor takes."""
    resolved = OmegaConf.to_container(model_cfg, resolve=True)  # its ${data...} need the whole config
    return OmegaConf.create({k: v for k, v in resolved.items() if k not in FINETUNE_KEYS})


# -- freezing ----------------------------------------------------------------------------------------------------
def frozen_modules(net: nn.Module, names: Sequence[str]) -> list[nn.Module]:
    """The modules ``model.freeze`` names (``features``, ``layer1``, ``features.0``: a module and everything in it)."""
    found = dict(net.named_modules())
    unknown = [name for name in names if name not in found or name == ""]
    if unknown:
        top = [name for name, _ in net.named_children()]
        shown = ", ".join(top[:8]) + (f", ... ({len(top)} in all)" if len(top) > 8 else "")
        raise ConfigError(f"model.freeze=[{', '.join(names)}]: {type(net).__name__} has no module {unknown[0]!r}; its "
                          f"top-level modules are {shown} (nested ones by dotted name, e.g. {top[0]}.<child>)")
    return [found[name] for name in names]


def check_finetuning(cfg: DictConfig, net: nn.Module) -> None:
    """Refuse fine-tuning settings that cannot work, before anything runs: unknown module names, a freeze that
    freezes nothing, and freezing under plain DDP (frozen parameters get no gradient, which DDP rejects at the
    second step unless it looks for unused parameters)."""
    model = cfg.model
    names, epochs = list(model.get("freeze") or []), int(model.get("freeze_epochs") or 0)
    if not names:
        if epochs:
            raise ConfigError(f"model.freeze_epochs={epochs} but model.freeze is empty: name the modules to freeze, "
                              "e.g. model.freeze=[features]")
        return
    frozen_modules(net, names)
    if epochs <= 0:
        raise ConfigError(f"model.freeze=[{', '.join(names)}] with model.freeze_epochs={epochs} freezes nothing: set "
                          "model.freeze_epochs to the number of epochs to keep them frozen")
    strategy = (cfg.get("trainer") or {}).get("strategy")
    if isinstance(strategy, str) and strategy.startswith("ddp") and "find_unused_parameters_true" not in strategy:
        raise ConfigError(f"model.freeze with trainer.strategy={strategy}: DDP stops at frozen layers (they get no "
                          f"gradient); use trainer.strategy={strategy}_find_unused_parameters_true")


# -- loading -----------------------------------------------------------------------------------------------------
@dataclass
class SourceWeights:
    """A source run's network weights (without the ``net.`` prefix) and the input channels it was trained on."""

    source: str
    state: dict[str, torch.Tensor]
    in_channels: int | None


WRAPPER_PREFIXES = ("module.", "model.", "net.")  # DataParallel/DDP (MedicalNet), a LightningModule's attribute


def weights_file(source: str, content: Any) -> SourceWeights:
    """The weights of a file that is not a medexp checkpoint: a state dict (name -> tensor), or one under
    ``state_dict`` (MedicalNet, Lightning) or ``model``, without a prefix every name shares (``module.``,
    ``model.``, ``net.``); its input channels are those of its first convolution."""
    state = content
    for key in ("state_dict", "model"):
        state = state.get(key, state) if isinstance(state, Mapping) else state
    state = state if isinstance(state, Mapping) else None
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)} if isinstance(state, Mapping) else {}
    if not tensors:
        raise DataError(f"model.pretrained={source} holds no weights: give a state dict (names -> tensors, saved "
                          "with torch.save), one under 'state_dict' or 'model', or a .ckpt written by medexp-train")
    for prefix in WRAPPER_PREFIXES:
        if all(key.startswith(prefix) for key in tensors):
            tensors = {key.removeprefix(prefix): value for key, value in tensors.items()}
    first_convolution = next((value for value in tensors.values() if value.ndim >= 3), None)
    return SourceWeights(source, tensors, None if first_convolution is None else int(first_convolution.shape[1]))


def adapt_input_channels(weight: torch.Tensor, channels: int) -> torch.Tensor:
    """A convolution weight ``(out, C, ...)`` for ``channels`` inputs: C = 1 repeated and divided by ``channels``,
    ``channels`` = 1 summed over C. Either way the output on an image whose channels are equal is unchanged."""
    if weight.shape[1] == 1:
        return weight.repeat(1, channels, *([1] * (weight.ndim - 2))) / channels
    if channels == 1:
        return weight.sum(dim=1, keepdim=True)
    raise ValueError(f"no rule for {weight.shape[1]} -> {channels} input channels")


def _shape(t: torch.Tensor) -> str:
    return "x".join(map(str, t.shape)) or "scalar"


def _listed(items: list[str]) -> str:
    return ", ".join(items[:SHOWN]) + (f" (+{len(items) - SHOWN} more)" if len(items) > SHOWN else "")


@dataclass
class Transfer:
    """What ``load_pretrained`` did, key by key (network keys, without ``net.``)."""

    source: str
    total: int
    loaded: list[str] = field(default_factory=list)
    adapted: list[tuple[str, int, int]] = field(default_factory=list)  # key, input channels there, here
    skipped: list[tuple[str, str, str]] = field(default_factory=list)  # key, shape there, shape here
    only_here: list[str] = field(default_factory=list)
    only_there: list[str] = field(default_factory=list)

    def describe(self) -> str:
        """One line for the terminal."""
        parts = [f"medexp: model.pretrained={self.source}: {len(self.loaded) + len(self.adapted)} of {self.total} "
                 "weights loaded"]
        if self.adapted:
            there, here = self.adapted[0][1:]
            how = f"repeated / {here}" if there == 1 else "summed"
            parts.append(f"input channels {there} -> {here} ({how}): {_listed([k for k, _, _ in self.adapted])}")
        if self.skipped:
            parts.append("skipped, shape differs (trained from scratch): "
                         + _listed([f"{k} ({there} there, {here} here)" for k, there, here in self.skipped]))
        if self.only_here:
            parts.append(f"only in this network (trained from scratch): {_listed(self.only_here)}")
        if self.only_there:
            parts.append(f"only in the source (unused): {_listed(self.only_there)}")
        return "; ".join(parts)


def load_pretrained(net: nn.Module, weights: SourceWeights, in_channels: int | None) -> Transfer:
    """Copy ``weights`` into ``net`` where they fit (see the module docstring); ``in_channels`` is this network's
    input channels, which says which convolutions read the image."""
    own = net.state_dict()
    transfer = Transfer(weights.source, total=len(own))
    new: dict[str, torch.Tensor] = {}
    for key, ours in own.items():
        theirs = weights.state.get(key)
        if theirs is None:
            transfer.only_here.append(key)
        elif theirs.shape == ours.shape:
            new[key] = theirs
            transfer.loaded.append(key)
        elif _reads_input(theirs, ours, weights.in_channels, in_channels):
            new[key] = adapt_input_channels(theirs, ours.shape[1])
            transfer.adapted.append((key, theirs.shape[1], ours.shape[1]))
        else:
            transfer.skipped.append((key, _shape(theirs), _shape(ours)))
    transfer.only_there = [key for key in weights.state if key not in own]
    if not new:
        raise ConfigError(f"model.pretrained={weights.source}: none of its weights fit {type(net).__name__} (e.g. "
                          f"{next(iter(own))} here; {next(iter(weights.state))} there): pretrain with the same "
                          "model= choice")
    net.load_state_dict(new, strict=False)
    return transfer


def _reads_input(theirs: torch.Tensor, ours: torch.Tensor, channels_there: int | None,
                 channels_here: int | None) -> bool:
    """Whether a weight pair is a convolution over the input image that differs only in its input channels, 1 on
    one side (the case with a rule)."""
    if theirs.ndim < 3 or theirs.ndim != ours.ndim or channels_there is None or channels_here is None:
        return False
    same_elsewhere = theirs.shape[0] == ours.shape[0] and theirs.shape[2:] == ours.shape[2:]
    return (same_elsewhere and (theirs.shape[1], ours.shape[1]) == (channels_there, channels_here)
            and 1 in (channels_there, channels_here))

