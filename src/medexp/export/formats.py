"""A checkpoint's inference graph (``medexp.export.model``) as an ONNX or TorchScript file, and how to check it
against PyTorch on the run's real cases (``medexp-export``, ``medexp.workflows.export``, does both).

Both files have one input, ``image``, with a free batch axis. A classifier's takes the MLflow model's input
(float32 ``(N, C, H, W)`` as stored: 0-255 for 8-bit data) and gives its output (``probabilities``: ``(N, classes)``); the
normalisation statistics are constants in the graph. A segmentation model's graph (``DeployableSegmenter``) takes
float32 ``(N, C, *spatial)`` stored intensities already on the working grid (the recipe's resampling and resizing
done by the caller) and gives ``probabilities`` ``(N, classes, *spatial)``: the intensity preprocessing (per image
and channel, computed in the graph) and the network run once over the whole input. Sliding windows (and the
task's mirroring) stay outside: with per-image statistics inside the graph, tiling an image through it would
normalise each tile on its own; give it whole images of a size the network takes (the training patch,
``roi_size``, always fits), or use the MLflow model for medexp-predict's tiled label maps. Its spatial axes are
free where the network allows (checked at a second size; ``spatial_axes`` in the result).
"""
from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from medexp.export import INPUT_NAME, OUTPUT_NAME, SEGMENTATION

PARITY_TOLERANCE = 1e-4  # max |exported - PyTorch| over the real cases' probabilities
PARITY_CASES = 8  # segmentation cases compared (whole 3D volumes: a few are enough, all would take minutes)
ONNX_OPSET = 18


def write_onnx(model: torch.nn.Module, example: torch.Tensor, output: Path, free_spatial: bool = False) -> None:
    # the TorchScript-based exporter: the networks are static graphs, and it needs no onnxscript at run time
    free = {0: "batch", **({axis: f"spatial{axis - 2}" for axis in range(2, example.ndim)} if free_spatial else {})}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        # shape checks traced as constants: whether the graph generalises is measured (takes_other_sizes), not assumed
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        # instance norm without running statistics uses the input's in eval too: "train=True" is the same operator
        warnings.filterwarnings("ignore", message=".*'instance_norm' is set to train=True")
        torch.onnx.export(model, (example,), str(output), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          dynamic_axes={INPUT_NAME: free, OUTPUT_NAME: free}, opset_version=ONNX_OPSET, dynamo=False)


def run_onnx(output: Path, images: np.ndarray) -> np.ndarray:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(output), providers=["CPUExecutionProvider"])
    return session.run([OUTPUT_NAME], {INPUT_NAME: images})[0]


def write_torchscript(model: torch.nn.Module, example: torch.Tensor, output: Path, free_spatial: bool = False) -> None:
    from medexp.export.model import trace  # a trace has no declared axes: free_spatial is checked, not declared

    trace(model, example).save(str(output))


def run_torchscript(output: Path, images: np.ndarray) -> np.ndarray:
    with warnings.catch_warnings():  # torch 2.14 marks TorchScript deprecated; the format is what was asked for
        warnings.filterwarnings("ignore", message=".*torch.jit.load.* is deprecated", category=FutureWarning)
        loaded = torch.jit.load(str(output), map_location="cpu")
    with torch.no_grad():
        return loaded(torch.from_numpy(images)).numpy()


# format -> (writer, runner, file suffix)
FORMATS: dict[str, tuple[Callable, Callable, str]] = {
    "onnx": (write_onnx, run_onnx, ".onnx"),
    "torchscript": (write_torchscript, run_torchscript, ".pt"),
}


def default_output(fmt: str, folder: str | Path) -> Path:
    return Path(folder) / f"model{FORMATS[fmt][2] if fmt in FORMATS else ''}"


def parity_inputs(loaded) -> tuple[np.ndarray, str]:
    """Real cases to compare the export with PyTorch on, and their split: the test split's stored images
    (classification); up to ``PARITY_CASES`` stored cases on the working grid, cut or padded to the sliding
    window's ROI, from the test split or, without one, the validation split (segmentation)."""
    from medexp.export.model import model_kind, stored_cases, stored_test_images

    datamodule, task = loaded.datamodule, loaded.task
    if model_kind(datamodule, task) != SEGMENTATION:
        return stored_test_images(datamodule), "test"
    datamodule.validate = False  # only the cases read here are needed: reading every case to check it first is not
    split = "test" if datamodule.split.test else "validation"
    return stored_cases(datamodule, ("spacing", "resize"), task.inferer.roi_size, PARITY_CASES), split


def max_difference(model: torch.nn.Module, run: Callable, output: Path, images: np.ndarray) -> float:
    """max |exported - PyTorch| over ``images``."""
    with torch.no_grad():
        reference = model(torch.from_numpy(images)).numpy()
    return float(np.abs(run(output, images) - reference).max())


def takes_other_sizes(model: torch.nn.Module, run: Callable, output: Path, images: np.ndarray) -> bool:
    """Whether the exported graph still gives PyTorch's answer at a size other than the traced one (twice it along
    the first spatial axis): fully convolutional networks do, networks with a fixed patch grid (UNETR) do not."""
    other = np.concatenate([images[:1], images[:1]], axis=2)
    try:
        return max_difference(model, run, output, other) <= PARITY_TOLERANCE
    except Exception:  # noqa: BLE001 - the network or the runtime refusing the size says the same
        return False


