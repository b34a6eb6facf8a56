"""``medexp-export``: write a checkpoint's inference graph as an ONNX or TorchScript file
(``medexp.export.formats``), check it against PyTorch on the run's real cases and, where the run is in an MLflow
store, log both to that run (through ``medexp.tracking.artifacts``)."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from medexp.errors import ConfigError, DataError
from medexp.export import DETECTION, SEGMENTATION
from medexp.export.formats import (
    FORMATS,
    PARITY_TOLERANCE,
    max_difference,
    outside_the_graph,
    parity_inputs,
    takes_other_sizes,
)
from medexp.export.model import deployable, model_kind
from medexp.factory import load_for_inference
from medexp.tracking.artifacts import log_export


def export(ckpt_path: str, fmt: str, output: str | Path, trusted_targets: Sequence[str] = (),
           trust_checkpoint: bool = False, data_root: str | None = None, tracking_uri: str | None = None) -> dict:
    """Write ``output`` in ``fmt`` and compare it with PyTorch on real cases; with ``tracking_uri``, log both to the
    checkpoint's run in that store. Returns what was measured."""
    if fmt not in FORMATS:
        raise ConfigError(f"format={fmt!r} is not known: use one of {', '.join(FORMATS)}")
    write, run, _ = FORMATS[fmt]
    # the store to log to is also where runs:/ and models:/ checkpoints are fetched from
    loaded = load_for_inference(ckpt_path, trusted_targets, trust=trust_checkpoint, data_root=data_root,
                                store=tracking_uri)
    model = deployable(loaded)
    images, split = parity_inputs(loaded)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    kind = model_kind(loaded.datamodule, loaded.task)
    example = torch.from_numpy(images[:2])
    spatial = kind in (SEGMENTATION, DETECTION)  # whole images of any size, where the network allows
    write(model, example, output, free_spatial=spatial)
    difference = max_difference(model, run, output, images)
    result = {"format": fmt, "output": str(output.resolve()), "checkpoint": str(ckpt_path),
              "parity_cases": len(images), "parity_split": split, "max_abs_difference": difference, "tolerance": PARITY_TOLERANCE}
    if spatial:
        free = takes_other_sizes(model, run, output, images)
        if not free and fmt == "onnx":  # declared fixed, so that a runtime refuses other sizes instead of erring
            write(model, example, output, free_spatial=False)
        result["spatial_axes"] = "free" if free else f"fixed {list(images.shape[2:])}"
    if kind == DETECTION:
        result["outside_graph"] = outside_the_graph(loaded.task, model.output_names, images.shape[2:])
    if tracking_uri is not None:
        result["mlflow_run"] = log_export(ckpt_path, output, fmt, difference, tracking_uri)
    if not difference <= PARITY_TOLERANCE:
        raise DataError(f"the {fmt} model differs from PyTorch by up to {difference:.2e} on real cases (more "
                        f"than {PARITY_TOLERANCE:g}); it was written to {output} but should not be used")
    return result
