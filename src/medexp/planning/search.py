"""The search space a plan hands to a sweep: centred on the planned values, so that ``hparams_search=optuna`` on a
planned experiment looks around the plan (its values are the sweep's first trial) rather than over generic ranges.

Each entry is in ``hydra.sweeper.params`` syntax (``medexp.sweeps.space``); the written experiment keeps them under
``plan.search``, which the Optuna sweeper searches in place of the generic space of ``hparams_search/optuna.yaml``.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from medexp.planning.rules import Plan

LR_FACTOR = 3.0  # the learning rate searched log-uniformly between the plan's / 3 and x 3
SIZE_STEPS = (0.75, 1.25)  # image sizes a quarter smaller and larger than the plan's
AUGMENT_SPREAD = 0.3  # augmentation probabilities searched within +-0.3 of the plan's (inside 0..1)
DEPTHS = ([1, 1, 1, 1], [2, 2, 2, 2])  # ResNet-10 and ResNet-18 block layouts


def search_space(fp: Mapping[str, Any], plan: Plan) -> dict[str, Any]:
    """The planned experiment's sweep space: learning rate, image size, depth and augmentation strength."""
    values = {key: planned.value for key, planned in plan.items()}
    lr = float(values["optimizer.lr"])
    space: dict[str, Any] = {"optimizer.lr": {"type": "float", "low": _round(lr / LR_FACTOR),
                                              "high": _round(lr * LR_FACTOR), "log": True}}
    size_key, divisor = _size_key(fp, values)
    if size_key is not None:
        space[size_key] = {"type": "categorical", "choices": sizes_around(values[size_key], divisor)}
    depth_key = {"classification": "model.layers", "detection": "model.backbone.layers"}.get(fp["task"])
    if depth_key is not None:
        space[depth_key] = {"type": "categorical",
                            "choices": [values[depth_key], *(d for d in DEPTHS if d != values[depth_key])]}
    for key in ("augmentation.affine_prob", "augmentation.intensity_prob"):
        if values.get(key):
            space[key] = {"type": "float", "low": round(max(0.0, values[key] - AUGMENT_SPREAD), 3),
                          "high": round(min(1.0, values[key] + AUGMENT_SPREAD), 3)}
    return space


def _size_key(fp: Mapping[str, Any], values: Mapping[str, Any]) -> tuple[str | None, list[int]]:
    """The planned image size's key and what each searched size must divide by per axis (the network's pooling):
    2D whole images only (a patch-trained plan keeps its patch)."""
    dims = int(fp["spatial_dims"])
    if fp["task"] == "segmentation":
        if dims != 2 or values.get("data.patch_size") is not None:
            return None, []
        strides = [s if isinstance(s, list) else [s] * dims for s in values["model.strides"]]
        return "data.preprocessing.resize", [math.prod(s[axis] for s in strides) for axis in range(dims)]
    if fp["task"] == "detection":
        return "data.preprocessing.resize", [4 * 2 ** max(values["model.returned_layers"])] * dims
    if values.get("data.preprocessing.size"):
        return "data.preprocessing.size", [1] * dims
    return None, []


def sizes_around(size: Sequence[int], divisors: Sequence[int]) -> list[list[int]]:
    """The planned size first, then a quarter smaller and larger, each axis rounded to a multiple of its divisor."""
    sizes = [list(size)]
    for step in SIZE_STEPS:
        other = [max(d, round(s * step / d) * d) for s, d in zip(size, divisors, strict=True)]
        if other not in sizes:
            sizes.append(other)
    return sizes


def _round(value: float) -> float:
    return float(f"{value:.3g}")
