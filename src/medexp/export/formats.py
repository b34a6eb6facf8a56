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

A detection model's graph (``DeployableDetector``) takes the same kind of input (on the working grid, e.g. BCCD's
240 x 320 after the recipe's resize) and holds the intensity preprocessing, the padding to the network's stride, the
RetinaNet and the decoding of every anchor's box; it gives per pyramid level ``boxes_<level>`` ``(N, anchors,
2 * dims)`` and ``scores_<level>`` ``(N, anchors, classes)``; its spatial axes are free where the network allows, as
a segmentation graph's (the anchors follow the input's size). Box selection (score threshold, top-k per level, clipping, NMS, detections per image)
has outputs whose size depends on the data, and MONAI's NMS is a Python loop: it stays outside
(``outside_the_graph`` says it in words, ``medexp.export.model.select_detections`` runs it).
"""
from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from medexp.export import DETECTION, INPUT_NAME, SEGMENTATION

PARITY_TOLERANCE = 1e-4  # max |exported - PyTorch| over the real cases' probabilities (boxes: relative)
PARITY_CASES = 8  # segmentation cases compared (whole 3D volumes: a few are enough, all would take minutes)
ONNX_OPSET = 18


def write_onnx(model: torch.nn.Module, example: torch.Tensor, output: Path, free_spatial: bool = False) -> None:
    # the TorchScript-based exporter: the networks are static graphs, and it needs no onnxscript at run time
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        # shape checks traced as constants: whether the graph generalises is measured (takes_other_sizes), not assumed
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        # instance norm without running statistics uses the input's in eval too: "train=True" is the same operator
        warnings.filterwarnings("ignore", message=".*'instance_norm' is set to train=True")
        # MONAI's anchor generator makes a tensor of a (traced) size: the graph still follows the size
        warnings.filterwarnings("ignore", message="To copy construct from a tensor")
        torch.onnx.export(model, (example,), str(output), input_names=[INPUT_NAME],
                          output_names=list(model.output_names), opset_version=ONNX_OPSET, dynamo=False,
                          dynamic_axes=model.dynamic_axes(example.ndim - 2, free_spatial))


def run_onnx(output: Path, images: np.ndarray) -> np.ndarray | list[np.ndarray]:
    """The graph's output, or the list of its outputs where it has several (detection)."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(output), providers=["CPUExecutionProvider"])
    outputs = session.run(None, {INPUT_NAME: images})
    return outputs[0] if len(outputs) == 1 else outputs


def write_torchscript(model: torch.nn.Module, example: torch.Tensor, output: Path, free_spatial: bool = False) -> None:
    from medexp.export.model import trace  # a trace has no declared axes: free_spatial is checked, not declared

    trace(model, example).save(str(output))


def run_torchscript(output: Path, images: np.ndarray) -> np.ndarray:
    with warnings.catch_warnings():  # torch 2.14 marks TorchScript deprecated; the format is what was asked for
        warnings.filterwarnings("ignore", message=".*torch.jit.load.* is deprecated", category=FutureWarning)
        loaded = torch.jit.load(str(output), map_location="cpu")
    with torch.no_grad():
        return as_numpy(loaded(torch.from_numpy(images)))


def as_numpy(result: torch.Tensor | tuple[torch.Tensor, ...]) -> np.ndarray | list[np.ndarray]:
    return result.numpy() if isinstance(result, torch.Tensor) else [part.numpy() for part in result]


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
    window's ROI (segmentation) or to the size the detection graph is written for (``detection_grid``), from the
    test split or, without one, the validation split."""
    from medexp.export.model import detection_grid, model_kind, stored_cases, stored_test_images

    datamodule, task = loaded.datamodule, loaded.task
    kind = model_kind(datamodule, task)
    if kind not in (SEGMENTATION, DETECTION):
        return stored_test_images(datamodule), "test"
    datamodule.validate = False  # only the cases read here are needed: reading every case to check it first is not
    split = "test" if datamodule.split.test else "validation"
    size = task.inferer.roi_size if kind == SEGMENTATION else detection_grid(task, datamodule)
    return stored_cases(datamodule, ("spacing", "resize"), size, PARITY_CASES), split


def max_difference(model: torch.nn.Module, run: Callable, output: Path, images: np.ndarray) -> float:
    """max |exported - PyTorch| over ``images``, over every output of the graph; an output whose values reach
    beyond 1 (a detector's box coordinates, in pixels) relative to its largest value, so that float32 rounding
    of a coordinate near 300 (3e-5 a step) is not taken for a difference, while probabilities stay absolute."""
    with torch.no_grad():
        reference = as_numpy(model(torch.from_numpy(images)))
    exported = run(output, images)
    pairs = [(exported, reference)] if isinstance(reference, np.ndarray) else zip(exported, reference, strict=True)
    return max(float(np.abs(np.asarray(ours) - theirs).max() / max(1.0, float(np.abs(theirs).max())))
               for ours, theirs in pairs)


def outside_the_graph(task, output_names: Sequence[str], size: Sequence[int]) -> str:
    """What a detection graph's user does around it (``DeployableDetector``), in words: its input, its outputs, then
    the box selection that has data-dependent sizes."""
    selector = task.net.box_selector
    levels = len(output_names) // 2
    return (f"input: stored intensities on the working grid {list(size)} (resampled or resized as the recipe says); "
            f"outputs boxes_0..{levels - 1} (every anchor's decoded box: corners in the image's axis order, on that "
            f"grid) and scores_0..{levels - 1} (per class); outside the graph, per image: per level the scores "
            f"above {selector.score_thresh} and the {selector.topk_candidates_per_level} best, boxes clipped to the "
            f"image, NMS at IoU {selector.nms_thresh} per class, the {selector.detections_per_img} best "
            "(medexp.export.model.select_detections)")


def takes_other_sizes(model: torch.nn.Module, run: Callable, output: Path, images: np.ndarray) -> bool:
    """Whether the exported graph still gives PyTorch's answer at a size other than the traced one (twice it along
    the first spatial axis): fully convolutional networks do, networks with a fixed patch grid (UNETR) do not."""
    other = np.concatenate([images[:1], images[:1]], axis=2)
    try:
        return max_difference(model, run, output, other) <= PARITY_TOLERANCE
    except Exception:  # noqa: BLE001 - the network or the runtime refusing the size says the same
        return False


