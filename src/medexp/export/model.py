"""A trained checkpoint as one self-contained inference model: raw stored images in, predictions out.

Classification (``DeployableClassifier``): the data module's test-time intensity preprocessing (8-bit scaling and
the training set's per-channel mean/std, baked in as constants), the network and the task's probability function,
one traced graph. Its one input, ``image``, is float32 ``(N, C, H, W)`` in the stored intensity scale (0-255 for
8-bit sets; a set stored as floats, e.g. windowed CT, as its floats), with a dynamic batch axis; its output is ``(N, classes)`` probabilities, what ``medexp-predict`` writes for the same images.
The MLflow model, ONNX and TorchScript files all hold that graph.

Segmentation (``SegmentationPredictor``, the MLflow model): float32 ``(N, C, *spatial)`` intensities as stored, on
the model's working grid, in; uint8 ``(N, *spatial)`` label maps out, equal to ``medexp-predict``'s for the same
files. It runs medexp's own Python pipeline from the slimmed checkpoint rather than a traced graph: the same MONAI
transforms (channels, resize, percentile clipping, window, per-image z-score or min-max), the task's own
``predict_probabilities`` (sliding windows with the trained ROI, overlap and Gaussian weighting, mirroring) and the
same ``Invertd`` that maps probabilities back to the input size, then the argmax; so parity is exact by construction,
and no part of the chain has to be re-implemented in graph form (MONAI's sliding window and its inverse resize do
not trace to a graph with free spatial axes). The price: serving it needs medexp installed (its pip requirements
name it). The spacing step is left out: a model cannot resample an array that carries no voxel spacing, so inputs
of a recipe that resamples must already be on the training spacing (the model's metadata says which).
``medexp-export`` writes ``DeployableSegmenter`` instead: the intensity preprocessing and the network as one graph
over whole inputs, sliding windows and resampling left to the caller.

Detection (``DetectionPredictor``, the MLflow model) works the same way: stored images in (any size where the recipe
resizes), per image the boxes, labels and scores ``medexp-predict`` writes, on the input's own pixel grid in the
datalist's box convention (VOC's column-first ``xmin, ymin, xmax, ymax`` for a VOC folder). ``medexp-export`` writes
``DeployableDetector``: the intensity preprocessing, the network and the box decoding as one graph, every anchor's
box and scores per pyramid level out; choosing boxes (score threshold, top-k, NMS) has data-dependent output sizes
and stays outside (``select_detections`` runs MONAI's own selection on the graph's outputs).

Checkpoints are found and read by ``medexp.checkpoints`` (a path, or an MLflow model URI whose model carries the
run's checkpoint) and rebuilt by ``medexp.factory.load_for_inference``.
"""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from medexp.data.inmemory import INTEGER_SCALE
from medexp.errors import ConfigError
from medexp.export import (
    CHECKPOINT,
    CLASSIFICATION,
    DETECTION,
    EXAMPLE,
    INPUT_NAME,
    META,
    OUTPUT_NAME,
    SEGMENTATION,
    TORCHSCRIPT,
)
from medexp.factory import Loaded, load_for_inference
from medexp.tasks.mirroring import mirrored_mean

EXAMPLE_SIZE = 2


def slim_checkpoint(loaded: Loaded, path: Path) -> Path:
    """The checkpoint without optimizer and loop state: what inference (and fine-tuning) needs, a third the size."""
    from medexp.checkpoints import slim

    return slim(loaded.checkpoint, path, type(loaded.datamodule).__qualname__)


class DeployedGraph(nn.Module):
    """A graph ``medexp-export`` writes: one input, ``image`` ``(N, C, *spatial)``, and the outputs ``output_names``."""

    output_names: tuple[str, ...] = (OUTPUT_NAME,)

    def dynamic_axes(self, spatial_dims: int, free_spatial: bool) -> dict[str, dict[int, str]]:
        """ONNX's free axes of the input and of each output: the batch; the spatial axes where the graph takes
        other sizes (outputs on the input's axes)."""
        spatial = {axis: f"spatial{axis - 2}" for axis in range(2, 2 + spatial_dims)} if free_spatial else {}
        free = {0: "batch", **spatial}
        return {INPUT_NAME: free, **{name: free for name in self.output_names}}


class DeployableClassifier(DeployedGraph):
    """Stored images -> class (or label) probabilities, the way ``medexp-predict`` computes them."""

    def __init__(self, net: nn.Module, mean: Sequence[float], std: Sequence[float], multi_label: bool,
                 spatial_dims: int = 2, scale: float = INTEGER_SCALE, flips: Sequence[Sequence[int]] = ()):
        super().__init__()
        self.net = net
        self.flips = [list(dims) for dims in flips]  # the task's tta_flips (tensor dims): copies averaged as it does
        self.scale = float(scale)  # the training images' (InMemoryClassificationDataModule.input_scale)
        shape = (1, -1) + (1,) * spatial_dims  # per channel, over (N, C, *spatial)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(shape))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(shape))
        self.multi_label = multi_label

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        # the same operations, in the same order, as InMemoryClassificationDataModule.standardise: bit-identical input
        x = (image / self.scale - self.mean) / self.std
        return mirrored_mean(self.probabilities, x, self.flips)

    def probabilities(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.net(x).float()
        return torch.sigmoid(logits) if self.multi_label else torch.softmax(logits, dim=1)


def percentile(flat: torch.Tensor, q: float) -> torch.Tensor:
    """The ``q``-th percentile along the last axis, linearly interpolated as numpy's and ``torch.quantile`` (MONAI's
    ``ClipIntensityPercentiles``) compute it, from a sort: ``torch.quantile`` has no ONNX export. Keeps that axis."""
    ordered = flat.sort(dim=-1).values
    last = torch._shape_as_tensor(flat)[-1] - 1  # a graph value, not a constant: the voxel count stays free
    position = last.to(flat.dtype) * (q / 100.0)
    below = position.floor()
    low = ordered.index_select(-1, below.long().view(1))
    high = ordered.index_select(-1, torch.minimum(below.long() + 1, last).view(1))
    return low + (position - below) * (high - low)


class IntensityPreprocessing(nn.Module):
    """The intensity steps of a file-based recipe (``preprocessing_transforms``: channels, percentile clipping,
    window, z-score or min-max, per image and channel) as tensor operations over ``(N, C, *spatial)``."""

    def __init__(self, preprocessing: Mapping[str, Any]):
        super().__init__()
        self.channels = list(preprocessing.get("channels") or [])
        self.clip = preprocessing.get("clip_percentiles")
        self.window = preprocessing.get("window")
        self.normalize = preprocessing.get("normalize", "zscore")

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = image[:, self.channels] if self.channels else image
        spatial = list(range(2, x.ndim))
        voxels = [None] * (x.ndim - 3)  # (N, C, 1) statistics -> (N, C, 1, ..., 1)
        if self.clip:
            flat = x.flatten(2)
            lower, upper = (percentile(flat, q)[(..., *voxels)] for q in self.clip)
            x = torch.minimum(torch.maximum(x, lower), upper)
        if self.window:
            low, high = self.window
            x = ((x - low) / (high - low)).clamp(0.0, 1.0)
        if self.normalize == "zscore":  # MONAI: population std, 1 where it is 0
            mean = x.mean(dim=spatial, keepdim=True)
            std = (x - mean).square().mean(dim=spatial, keepdim=True).sqrt()
            x = (x - mean) / torch.where(std == 0, torch.ones_like(std), std)
        elif self.normalize == "minmax":  # MONAI: a constant channel becomes 0
            low, high = x.amin(dim=spatial, keepdim=True), x.amax(dim=spatial, keepdim=True)
            x = (x - low) / torch.where(high == low, torch.ones_like(high), high - low)
        return x


class DeployableSegmenter(DeployedGraph):
    """Stored images on the working grid -> class probabilities per voxel, the network run once over the whole
    input (``medexp-export``'s graph): the recipe's intensity steps (``IntensityPreprocessing``), the network, the
    softmax. Resampling, resizing and sliding windows are not in it."""

    def __init__(self, net: nn.Module, preprocessing: Mapping[str, Any]):
        super().__init__()
        self.net = net
        self.preprocess = IntensityPreprocessing(preprocessing)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.net(self.preprocess(image)).float(), dim=1)


class DeployableDetector(DeployedGraph):
    """Stored images on the working grid -> every anchor's box and class scores, per level of the feature pyramid
    (``medexp-export``'s graph): the recipe's intensity steps, the zero padding to the network's ``size_divisible``
    that MONAI's detector adds, the RetinaNet, the anchors of that input size, the box decoding and the sigmoid.
    Outputs ``boxes_<level>`` float32 ``(N, anchors, 2 * dims)`` (MONAI's standard mode: corners, the image's axis
    order, on the graph's input grid) and ``scores_<level>`` float32 ``(N, anchors, classes)``, for levels 0 (finest)
    up. What follows has data-dependent output sizes and stays outside (``select_detections``): per level the scores
    above ``score_thresh`` and the ``topk_candidates_per_level`` best, boxes clipped to the image, NMS per class, the
    ``detections_per_img`` best."""

    def __init__(self, detector, preprocessing: Mapping[str, Any]):
        super().__init__()
        self.detector = detector
        self.preprocess = IntensityPreprocessing(preprocessing)
        levels = len(detector.anchor_generator.cell_anchors)  # one cell per pyramid level
        self.output_names = tuple(f"{kind}_{level}" for level in range(levels) for kind in ("boxes", "scores"))

    def dynamic_axes(self, spatial_dims: int, free_spatial: bool) -> dict[str, dict[int, str]]:
        """The input's as ``DeployedGraph``'s; each output's anchor count follows a free input size."""
        axes = super().dynamic_axes(spatial_dims, free_spatial)
        for name in self.output_names:
            axes[name] = {0: "batch", **({1: f"anchors_{name.split('_')[-1]}"} if free_spatial else {})}
        return axes

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        detector = self.detector
        x = self.preprocess(image)
        size, divisible = x.shape[2:], detector.size_divisible
        x = F.pad(x, [pad for s, d in zip(reversed(size), reversed(divisible), strict=True) for pad in (0, -s % d)])
        maps = detector.network(x)
        anchors = detector.anchor_generator(x[:1], maps[detector.cls_key])[0]  # the same for every image
        outputs, start = [], 0
        for logits, regression in zip(maps[detector.cls_key], maps[detector.box_reg_key], strict=True):
            scores = torch.sigmoid(detector._reshape_maps([logits]).float())
            deltas = detector._reshape_maps([regression]).float()
            level = anchors[start:start + deltas.shape[1]]
            start += deltas.shape[1]
            boxes = detector.box_coder.decode_single(deltas.flatten(0, 1), level.expand_as(deltas).flatten(0, 1))
            outputs += [boxes.view_as(deltas), scores]
        return tuple(outputs)


def select_detections(task, outputs: Sequence[np.ndarray], size: Sequence[int]) -> list[dict[str, torch.Tensor]]:
    """``DeployableDetector``'s outputs for images of spatial ``size`` -> per image what the task's detector gives
    (``{"box", "label", "label_scores"}``): MONAI's own box selection (``task.net.box_selector``) on the scores."""
    import copy

    selector = copy.copy(task.net.box_selector)
    selector.apply_sigmoid = False  # the graph gave scores
    net = task.net
    detections = []
    for index in range(len(outputs[0])):
        boxes = [torch.as_tensor(np.asarray(level[index])) for level in outputs[0::2]]
        scores = [torch.as_tensor(np.asarray(level[index])) for level in outputs[1::2]]
        box, score, label = selector.select_boxes_per_image(boxes, scores, list(size))
        detections.append({net.target_box_key: box, net.pred_score_key: score, net.target_label_key: label})
    return detections


def model_kind(datamodule, task) -> str | None:
    """The deployed model a run has (asked of the data module's and the task's declared kinds): ``classification``
    on in-memory sets (their preprocessing is a fixed intensity transform, one graph), ``segmentation`` and
    ``detection`` on file-based sets; None for the rest (classification from files)."""
    if datamodule.task_kind != task.task_kind:
        return None
    if task.task_kind == CLASSIFICATION and datamodule.holds_arrays:
        return CLASSIFICATION
    return task.task_kind if task.task_kind in (SEGMENTATION, DETECTION) else None


def deployable(loaded: Loaded) -> nn.Module:
    """The graph ``medexp-export`` writes for a rebuilt checkpoint."""
    datamodule, task = loaded.datamodule, loaded.task
    kind = model_kind(datamodule, task)
    if kind == SEGMENTATION:
        return DeployableSegmenter(task.net, datamodule.preprocessing).eval()
    if kind == DETECTION:
        return DeployableDetector(task.net, datamodule.preprocessing).eval()
    if kind is None:
        raise ConfigError(f"a {type(task).__name__} on {type(datamodule).__name__} cannot be exported (only "
                          "classification on arrays, segmentation and detection): use medexp-predict for it")
    if datamodule.mean is None:
        datamodule.setup()  # an old checkpoint without its normalisation statistics: read the training set
    # a checkpoint from before the scale was saved: its sets were 8-bit (the only kind it exported correctly)
    scale = datamodule.input_scale if datamodule.input_scale is not None else INTEGER_SCALE
    return DeployableClassifier(task.net, datamodule.mean, datamodule.std, task.multi_label,
                                datamodule.spatial_dims, scale, task.tta_flips).eval()


def stored_test_images(datamodule, limit: int | None = None) -> np.ndarray:
    """The test split's stored images as float32 (the deployed model's input), read from the run's data."""
    if datamodule.arrays is None:
        datamodule.arrays = datamodule.load_arrays()
    return np.asarray(datamodule.arrays.images["test"][:limit], dtype=np.float32)


def stored_cases(datamodule, steps: Sequence[str], size: Sequence[int] | None, limit: int | None = None) -> np.ndarray:
    """Cases of the test split (the validation split where there is none) as medexp reads them, stored intensities,
    after the recipe's spatial preprocessing ``steps`` (``spacing``, ``resize``) and centred on ``size`` (cropped
    or zero-padded, so that they stack and fit the network; None: the first case's size), float32 ``(N, C, *size)``."""
    from monai.transforms import Compose, ResizeWithPadOrCrop

    from medexp.data.io import LoadCased
    from medexp.data.transforms import preprocessing_transforms

    split = datamodule.split
    options = {step: datamodule.preprocessing.get(step) for step in steps}
    pipeline = Compose([LoadCased(label_key=None, mask_keys=()),
                        *preprocessing_transforms({**options, "normalize": "none"}, ("image",))])
    cases = [pipeline({"image": record["image"]})["image"] for record in (split.test or split.val)[:limit]]
    centred = ResizeWithPadOrCrop(list(size or cases[0].shape[1:]))
    return np.stack([centred(case).numpy() for case in cases]).astype(np.float32)


def detection_grid(task, datamodule) -> list[int] | None:
    """The size a detection graph is written for: the sliding window where the task detects by windows (the graph
    holds one window), the recipe's resize when it fixes one, else None (the first case's)."""
    resize = datamodule.preprocessing.get("resize")
    return task.sw_roi_size or (list(resize) if isinstance(resize, Sequence) else None)


def input_example(datamodule, task) -> np.ndarray:
    """Inputs as the run's MLflow model takes them, for its signature and input example: stored test images
    (classification); one stored case on the training grid, centred on the sliding window's ROI so that the
    example and its JSON copy stay small whatever the image size (segmentation); one stored case centred on four
    times the detector's coarsest stride (detection: the model takes any size)."""
    kind = model_kind(datamodule, task)
    if kind == SEGMENTATION:
        return stored_cases(datamodule, ("spacing",), task.inferer.roi_size, limit=1)
    if kind == DETECTION:
        return stored_cases(datamodule, ("spacing",), [4 * d for d in task.net.size_divisible], limit=1)
    return stored_test_images(datamodule, EXAMPLE_SIZE)


class StoredArrayd:
    """An image array in, as ``LoadCased`` gives a file's image: a float32 ``(C, *spatial)`` MetaTensor, named (for
    the one-line errors of the checks that follow) by the item's ``name``. (A plain callable, not a MONAI
    ``MapTransform``: this module loads without MONAI for classifiers.)"""

    image_key = "image"

    def __call__(self, data: Mapping) -> dict:
        from monai.data import MetaTensor

        case = dict(data)
        image = torch.tensor(np.asarray(case[self.image_key]), dtype=torch.float32)
        case[self.image_key] = MetaTensor(image, meta={"filename_or_obj": case.pop("name")})
        return case


class ArrayPredictor:
    """Stored images -> what ``medexp-predict`` writes for the same files: each image through the run's prediction
    pipeline, the spacing step left out (an array carries no voxel spacing to resample from: inputs come on the
    training grid)."""

    def __init__(self, datamodule, task):
        from medexp.data.transforms import prediction_pipeline

        preprocessing = {**datamodule.preprocessing, "spacing": None}
        self.pipeline = prediction_pipeline(StoredArrayd(), preprocessing, datamodule.in_channels,
                                            datamodule.spatial_dims)
        self.datamodule, self.task = datamodule, task.eval()

    @classmethod
    def from_checkpoint(cls, path: str) -> ArrayPredictor:
        # loading an MLflow pyfunc runs the code pickled in it already: its checkpoint is trusted no less
        loaded = load_for_inference(path, trust=True)
        return cls(loaded.datamodule, loaded.task)

    def preprocessed(self, images: np.ndarray):
        """Each image preprocessed, one at a time as ``medexp-predict`` reads files (a MetaTensor that knows its
        resize)."""
        for index, image in enumerate(images):
            yield self.pipeline({"image": image, "name": f"input[{index}]"})["image"]


class SegmentationPredictor(ArrayPredictor):
    """Stored images -> label maps, the way ``medexp-predict`` computes them (see the module docstring): each
    image through the prediction pipeline (spacing left out), the task's sliding windows, ``Invertd``, argmax."""

    def __init__(self, datamodule, task):
        from monai.transforms import Invertd, InvertibleTransform

        super().__init__(datamodule, task)
        # the resize undone on the probabilities; nothing to undo (and MONAI would warn) without one
        invertible = any(isinstance(step, InvertibleTransform) for step in self.pipeline.flatten().transforms)
        self.to_input_grid = Invertd("probabilities", transform=self.pipeline, orig_keys="image",
                                     nearest_interp=False) if invertible else None

    def __call__(self, images: np.ndarray, probabilities: bool = False) -> np.ndarray | dict[str, np.ndarray]:
        """uint8 ``(N, *spatial)`` class indices; with ``probabilities``, also the float32 ``(N, classes,
        *spatial)`` probabilities they are the argmax of, as ``{"label_map": …, "probabilities": …}``."""
        from monai.data import MetaTensor

        from medexp.export import LABELS_NAME, OUTPUT_NAME

        labels, probs = [], []
        with torch.inference_mode():
            for image in self.preprocessed(images):  # one at a time, as medexp-predict: the same windows and sums
                predicted = self.task.predict_probabilities(image.as_tensor()[None])[0]
                restored = MetaTensor(predicted.float().cpu())
                if self.to_input_grid is not None:
                    restored = self.to_input_grid({"image": image, "probabilities": restored})["probabilities"]
                restored = restored.numpy()
                labels.append(restored.argmax(axis=0).astype(np.uint8))
                probs += [restored.astype(np.float32)] if probabilities else []
        if not probabilities:
            return np.stack(labels)
        return {LABELS_NAME: np.stack(labels), OUTPUT_NAME: np.stack(probs)}


def detection_record(task, datamodule, detected: Mapping[str, torch.Tensor], image) -> tuple[dict, dict]:
    """One image's detections (``task.predict_step``'s, on ``image`` as the prediction pipeline gave it) as
    ``medexp-predict`` writes them: ``boxes`` on the input's own grid in the datalist's box mode and axis order
    (``world_boxes`` too where the image has a place in the world), ``scores``, ``labels``, ``classes``; and
    ``boxes_on_input``'s boxes (``standard`` mode, for drawing)."""
    net = task.net
    boxes = datamodule.boxes_on_input(detected[net.target_box_key].float().cpu(), image)
    labels = detected[net.target_label_key].cpu().tolist()
    record = {"boxes": boxes["voxels"].tolist(), "scores": detected[net.pred_score_key].float().cpu().tolist(),
              "labels": labels, "classes": [task.class_names[label] for label in labels]}
    if "world" in boxes:
        record["world_boxes"] = boxes["world"].tolist()
    return record, boxes


class DetectionPredictor(ArrayPredictor):
    """Stored images -> per image its detections, the way ``medexp-predict`` computes and writes them: the
    prediction pipeline (spacing left out), the task's detector (sliding windows where it uses them), the boxes
    back on the input's grid in the datalist's convention (``detection_record``)."""

    def __call__(self, images: np.ndarray) -> list[dict[str, list]]:
        detections = []
        with torch.inference_mode():
            for image in self.preprocessed(images):  # one per batch, as medexp-predict: no padding to a shared size
                (detected,) = self.task.predict_step({"image": [image]}, 0)
                detections.append(detection_record(self.task, self.datamodule, detected, image)[0])
        return detections


def trace(model: nn.Module, example: torch.Tensor) -> torch.jit.ScriptModule:
    """TorchScript by tracing (the networks are static graphs); the batch axis stays free."""
    import warnings

    # torch 2.14 marks TorchScript deprecated: still what torch.jit.load users (and the MLflow model) run
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.jit.trace.* is deprecated", category=FutureWarning)
        # shape checks traced as constants: medexp-export measures whether the graph takes other sizes
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        # MONAI's anchor generator makes a tensor of a (traced) size: the graph still follows the size
        warnings.filterwarnings("ignore", message="To copy construct from a tensor")
        return torch.jit.trace(model, example, check_trace=False)


def grid_settings(loaded: Loaded) -> dict[str, Any]:
    """What a file-based model does to its input's grid and intensities, for its metadata."""
    preprocessing = loaded.datamodule.preprocessing
    return {"spatial_dims": loaded.datamodule.spatial_dims, "preprocessing": preprocessing,
            "training_spacing": preprocessing.get("spacing"), "resize": preprocessing.get("resize")}


def segmentation_settings(loaded: Loaded) -> dict[str, Any]:
    """What the segmentation model does to its input, for its metadata."""
    inferer = loaded.task.inferer
    return {**grid_settings(loaded), "roi_size": list(inferer.roi_size), "sw_overlap": inferer.overlap,
            "sw_mode": str(inferer.mode), "mirrored_axes": [[dim - 2 for dim in dims] for dims in loaded.task.tta_flips]}


def detection_settings(loaded: Loaded) -> dict[str, Any]:
    """What the detection model does to its input and how it selects boxes, for its metadata."""
    selector, datamodule = loaded.task.net.box_selector, loaded.datamodule
    return {**grid_settings(loaded), "box_mode": datamodule.box_settings["box_mode"],
            "box_axes": datamodule.box_settings["box_axes"], "score_thresh": selector.score_thresh,
            "nms_thresh": selector.nms_thresh, "detections_per_image": selector.detections_per_img,
            "sw_roi_size": loaded.task.sw_roi_size}


def write_model_files(ckpt_path: str, folder: Path, example: np.ndarray) -> Path:
    """Write what the MLflow model is made of into ``folder``: slimmed checkpoint, input example (``example``: a
    few inputs, ``input_example``), a description (kind, class names, for segmentation its grid and sliding
    window, for detection its grid, box convention and box selection) and, for a classifier, its TorchScript
    graph."""
    folder.mkdir(parents=True, exist_ok=True)
    loaded = load_for_inference(ckpt_path, trust=True)  # written by this very run: nothing foreign in it
    kind = model_kind(loaded.datamodule, loaded.task)
    example = np.ascontiguousarray(example[:EXAMPLE_SIZE], dtype=np.float32)
    meta = {"kind": kind, "class_names": list(loaded.task.class_names), "source_checkpoint": str(ckpt_path)}
    if kind == CLASSIFICATION:
        trace(deployable(loaded), torch.from_numpy(example)).save(str(folder / TORCHSCRIPT))
    else:
        meta.update(segmentation_settings(loaded) if kind == SEGMENTATION else detection_settings(loaded))
    slim_checkpoint(loaded, folder / CHECKPOINT)
    np.save(folder / EXAMPLE, example)
    (folder / META).write_text(json.dumps(meta))
    return folder


def write_run_model(best: Path, datamodule, task, folder: Path) -> Path | None:
    """The files of a training run's MLflow model (``write_model_files``) from its best checkpoint, or None where
    the run's task has no deployed model (detection)."""
    if model_kind(datamodule, task) is None:
        return None
    return write_model_files(str(best), folder, input_example(datamodule, task))
