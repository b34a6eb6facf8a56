"""Plan rules for classification and detection, in the style of the segmentation rules (``rules``): small pure
functions from fingerprint figures to ``Planned`` config values, each with its one-line reason.

Their starting points: the searched recipes of this project (PneumoniaMNIST, AdrenalMNIST3D, BCCD: see
``conf/experiment/``), turned into rules on the figures that made those choices right (image size, binary shapes,
class imbalance, one orientation, box sizes, boxes per image, overlapping boxes), and the ResNet/RetinaNet
conventions they follow (a small-image stem, a feature pyramid whose anchors double per level).
``docs/planning.md`` lists every rule with its reason.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from medexp.planning.rules import Plan, Planned, mirror_plan, mirrored_evaluation, workers

# ----------------------------------------------------------------------------------------- classification
MIN_CLASSIFICATION_EPOCHS = 30  # image files are planned at the largest size whose epochs reach this in the budget
CLASSIFICATION_SIDES = (224, 192, 160, 128, 112, 96, 80, 64, 48, 32)  # resize candidates for image files
FIRST_STAGE_MAX = {2: 64, 3: 16}  # the stem downsamples (x2, then x4 with a max-pool) until the first stage is this
RESNET_WIDTHS = {"cpu": [16, 32, 64, 128], "gpu": [32, 64, 128, 256]}
RESNET_LAYERS = {"cpu": [1, 1, 1, 1], "gpu": [2, 2, 2, 2]}  # ResNet-10 on a CPU, the ResNet-18 layout on a GPU
MAX_CLASSIFICATION_BATCH = 128
MIN_STEPS_PER_EPOCH = 20  # a batch at most 1/20 of the training set: enough updates per epoch on small sets
# the most frequent class this many times the rarest: weight classes by inverse frequency. Below it, plain
# cross-entropy: weighting bought no AUROC where it was measured and cost AdrenalMNIST3D's (docs/planning.md)
EXTREME_IMBALANCE = 10.0
SMALL_SET = 20000  # fewer training images than this: augment most samples (the recipes' 0.8), else half
FEW_VALIDATION_CASES = 50  # the rarest class has fewer validation images than this: keep the final checkpoint
MEMORY_BYTES = {"gpu": 8e9, "cpu": 4e9}

# ---------------------------------------------------------------------------------------------- detection
MIN_DETECTION_EPOCHS = 20
DETECTION_SIDES = (1024, 896, 768, 640, 512, 448, 384, 320, 256, 192, 128)
MIN_BOX_SIDE = 12.0  # px the smallest 5% of boxes keep after resizing (anchors below ~2 feature cells miss them)
ANCHOR_STEP = 1.6  # the second anchor of a level, relative to the first (BCCD's searched 20/32)
DETECTION_STEM = 4  # stride of the ResNet stem (a stride-2 convolution and a max-pool) before layer1
DETECTION_BATCH = {"cpu": 4, "gpu": 8}
OVERLAPPING_BOXES = 0.1  # ground-truth boxes of one image overlapping more than this IoU (p95): looser NMS


def pow2_floor(value: float) -> int:
    return 2 ** max(0, int(math.floor(math.log2(max(value, 1.0)))))


def classification_sizes(fp: Mapping[str, Any]) -> list[list[int]] | None:
    """Sizes to plan image files at, largest first: the median shape with its longest side at each candidate no
    larger than the stored one (2D); None where images are not resized (arrays of one stored size; volumes)."""
    if fp.get("source") == "arrays" or int(fp["spatial_dims"]) == 3:
        return None
    median = fp["shape"]["median"]
    longest = max(median)
    sides = [s for s in CLASSIFICATION_SIDES if s <= longest] or [CLASSIFICATION_SIDES[-1]]
    if fp["shape"]["one_shape"] and longest <= FIRST_STAGE_MAX[2]:
        return [[int(s) for s in median]]
    return [[max(1, round(m * side / longest)) for m in median] for side in sides]


def image_size(fp: Mapping[str, Any], size: Sequence[int] | None) -> Plan:
    shape = fp["shape"]
    if size is None:
        why = ("arrays of one stored size (data.image_size picks MedMNIST's 28/64/128/224 files)"
               if fp.get("source") == "arrays" else "volumes of one stored size")
        return {"data.preprocessing.size": Planned(None, why)} if fp.get("source") == "files" else {}
    return {"data.preprocessing.size": Planned(list(size), f"stored shapes {shape['min']}..{shape['max']} (median "
                                                           f"{shape['median']}) fitted into this, proportions kept "
                                                           "and zero-padded")}


def resnet(size: Sequence[int], spatial_dims: int, device: str) -> Plan:
    """A MONAI ResNet whose stem keeps small images whole (3x3, stride 1, no max-pool, as for 28 px MedMNIST) and
    halves larger ones (stride 2, then a max-pool) until the first stage sees at most FIRST_STAGE_MAX per side."""
    side = max(size)
    reduction = 1
    while side / reduction > FIRST_STAGE_MAX[spatial_dims] and reduction < 4:
        reduction *= 2
    first = f"{side}/{reduction} = {side / reduction:.3g} voxels per side at the first stage (<= " \
            f"{FIRST_STAGE_MAX[spatial_dims]})"
    large_kernel = reduction > 1 and spatial_dims == 2
    return {
        "model.layers": Planned(RESNET_LAYERS[device], f"{'ResNet-10' if device == 'cpu' else 'ResNet-18'} "
                                                       f"blocks on a {device}"),
        "model.block_inplanes": Planned(RESNET_WIDTHS[device], f"widths doubling per stage from "
                                                               f"{RESNET_WIDTHS[device][0]} on a {device}"),
        "model.conv1_t_size": Planned(7 if large_kernel else 3, "a 7x7 stem for downsampled 2D images" if large_kernel
                                      else "a 3x3 stem"),
        "model.conv1_t_stride": Planned(min(reduction, 2), first),
        "model.no_max_pool": Planned(reduction < 4, "the stem's max-pool only where a stride of 2 is not enough"),
    }


def classification_batch(size: Sequence[int], widths: Sequence[int], reduction: int, device: str,
                         train_cases: int) -> Planned:
    """The largest power of two within the activation memory and at most 1/MIN_STEPS_PER_EPOCH of the training
    set, between 8 and MAX_CLASSIFICATION_BATCH."""
    voxels = math.prod(size) / reduction ** len(size)
    per_sample = sum(voxels / 2 ** (len(size) * stage) * width for stage, width in enumerate(widths)) * 4 * 3 * 2 * 2
    by_memory = MEMORY_BYTES[device] / per_sample
    by_steps = train_cases / MIN_STEPS_PER_EPOCH
    batch = max(8, min(MAX_CLASSIFICATION_BATCH, pow2_floor(min(by_memory, by_steps))))
    return Planned(batch, f"{train_cases} training images / {MIN_STEPS_PER_EPOCH} steps = {by_steps:.0f}, memory "
                          f"~{per_sample / 1e6:.2g} MB/sample; a power of two in 8..{MAX_CLASSIFICATION_BATCH}")


def classification_normalisation(fp: Mapping[str, Any]) -> Plan:
    """Stored intensities standardised by the training set's mean and std (what the data module does, as MedMNIST's
    evaluation expects); CT images first windowed to their 0.5-99.5 percentiles (Hounsfield units keep meaning)."""
    if fp.get("source") != "files":
        return {}
    modality = fp["modality"]
    if modality["kind"] == "CT":
        intensity = fp["intensity"]["image"]
        return {"data.preprocessing.window": Planned([round(intensity["p00_5"][0], 1), round(intensity["p99_5"][0], 1)],
                                                     f"CT ({modality['why']}): the images' 0.5-99.5 percentiles")}
    return {"data.preprocessing.scaling": Planned(None, f"{modality['kind']}: standardised by the training set's "
                                                        "mean and std")}


def classification_augmentation(fp: Mapping[str, Any]) -> Plan:
    """The searched PneumoniaMNIST recipe as a rule: affine jitter on most samples of a small set (half of a
    large one), intensity jitter and noise unless the images are binary shapes (AdrenalMNIST3D: nothing to vary),
    mirroring only along axes whose orientation varies."""
    train = fp["cases_per_split"]["train"]
    prob = 0.8 if train < SMALL_SET else 0.5
    size_why = f"{train} training images ({'<' if train < SMALL_SET else '>='} {SMALL_SET})"
    plan = {
        "augmentation.rotate_deg": Planned(15, "small rotations: the anatomy keeps its pose"),
        "augmentation.scale": Planned([0.85, 1.15], "zoom range"),
        "augmentation.translate": Planned(0.1, "shifts of a tenth of the image"),
        "augmentation.affine_prob": Planned(prob, size_why),
        **mirror_plan(fp),
    }
    if fp["binary_images"]:
        why = "binary shape images: no intensities to vary"
        plan.update({"augmentation.intensity_shift": Planned(0.0, why), "augmentation.contrast": Planned([1.0, 1.0], why),
                     "augmentation.gamma": Planned([1.0, 1.0], why), "augmentation.intensity_prob": Planned(0.0, why),
                     "augmentation.noise_std": Planned(0.0, why), "augmentation.noise_prob": Planned(0.0, why)})
    else:
        plan.update({"augmentation.intensity_shift": Planned(0.2, "brightness shifts (standardised units)"),
                     "augmentation.contrast": Planned([0.7, 1.3], "contrast range"),
                     "augmentation.gamma": Planned([1.0, 1.0], "no gamma: standardised images have negative values"),
                     "augmentation.intensity_prob": Planned(prob, size_why),
                     "augmentation.noise_std": Planned(0.1, "Gaussian noise (standardised units)"),
                     "augmentation.noise_prob": Planned(prob, size_why)})
    plan.update({"augmentation.elastic_sigma": Planned([], "no elastic deformation: in-memory sets augment batched"),
                 "augmentation.elastic_prob": Planned(0.0, "see elastic_sigma")})
    return plan


def class_balance(fp: Mapping[str, Any]) -> Plan:
    """Plain cross-entropy unless the imbalance is extreme, then inverse-frequency class weights; none for
    multi-label sets (each label is its own binary problem). Weights make the probabilities those of a balanced
    world: they pay where a test set has fewer of the common class than training (PneumoniaMNIST's accuracy), which
    no fingerprint can know, and they cost ranking where it has not (AdrenalMNIST3D's AUROC, the planned monitor)."""
    labels = fp["labels"]
    if labels["multi_label"]:
        return {"task.class_weights": Planned(None, "multi-label: one sigmoid per label")}
    counts, imbalance = labels["counts"]["train"], labels["imbalance"]
    if imbalance >= EXTREME_IMBALANCE:
        return {"task.class_weights": Planned("balanced", f"training classes {counts}: the largest {imbalance:.3g}x "
                                                          f"the smallest (>= {EXTREME_IMBALANCE:g})")}
    return {"task.class_weights": Planned(None, f"training classes {counts}: the largest {imbalance:.3g}x the "
                                                f"smallest (< {EXTREME_IMBALANCE:g}), plain cross-entropy")}


def checkpoint_choice(fp: Mapping[str, Any]) -> Plan:
    """Which checkpoint is tested. The best validation AUROC where the rarest class has enough validation images;
    the final one (nnU-Net's habit; the learning rate has decayed to ~0 by then) where it has too few, whose AUROC
    moves by several hundredths between epochs (AdrenalMNIST3D, 22 validation masses: the best of 120 epochs was a
    spike at epoch 17 scoring test AUROC 0.868, the final checkpoint of the same run 0.881)."""
    labels = fp["labels"]
    val = labels["counts"].get("val") or []
    if labels["multi_label"] or not sum(val):
        return {}
    rarest = min(val)
    if rarest >= FEW_VALIDATION_CASES:
        return {}
    return {"callbacks.model_checkpoint.monitor": Planned(None, f"validation classes {val}: the rarest has {rarest} "
                                                                f"images (< {FEW_VALIDATION_CASES}), too few to pick "
                                                                "an epoch by; the final checkpoint is tested")}


def classification_optimiser(fp: Mapping[str, Any]) -> Plan:
    dims = int(fp["spatial_dims"])
    return {
        "optimizer.lr": Planned(2e-3, "AdamW at 2e-3: the searched MedMNIST recipes' rate for a few thousand steps"),
        "optimizer.weight_decay": Planned(5e-4 if dims == 2 else 1e-4, "the searched recipes' decay "
                                                                       f"({dims}D)"),
    }


def classification_plan(fp: Mapping[str, Any], size: Sequence[int] | None, device: str, cores: int) -> Plan:
    """Every value of a classification plan at a chosen image size (None: as stored)."""
    dims = int(fp["spatial_dims"])
    train_size = list(size) if size is not None else [int(s) for s in fp["shape"]["median"]]
    plan: Plan = {}
    plan.update(image_size(fp, size))
    plan["data.in_channels"] = Planned(int(fp["channels"]), "channels of the stored images")
    plan.update(classification_normalisation(fp))
    plan.update(resnet(train_size, dims, device))
    reduction = plan["model.conv1_t_stride"].value * (1 if plan["model.no_max_pool"].value else 2)
    plan["data.batch_size"] = classification_batch(train_size, plan["model.block_inplanes"].value, reduction, device,
                                                   fp["cases_per_split"]["train"])
    if fp.get("source") == "files":
        plan["data.workers"] = Planned(max(1, min(8, cores)), "threads decoding the files once")
    plan.update(classification_augmentation(fp))
    plan.update(mirrored_evaluation(plan))
    plan.update(class_balance(fp))
    plan.update(checkpoint_choice(fp))
    plan.update(classification_optimiser(fp))
    return plan


# ---------------------------------------------------------------------------------------------- detection
def detection_floor(fp: Mapping[str, Any]) -> Planned:
    """The smallest resize factor keeping the smallest 5% of boxes MIN_BOX_SIDE px on their shorter side."""
    smallest = float((fp["boxes"].get("smallest_side") or {}).get("p05", 0.0))
    if smallest <= 0:
        return Planned(1.0, "no boxes measured: keep the stored resolution")
    return Planned(round(min(1.0, MIN_BOX_SIDE / smallest), 4),
                   f"the smallest 5% of boxes are {smallest:.3g} px on their shorter side; >= {MIN_BOX_SIDE:g} px "
                   "after resizing")


def detection_sizes(fp: Mapping[str, Any], floor: float) -> list[list[int]]:
    """2D sizes, largest first: the median shape with its longest side at each candidate between the floor and the
    stored size, rounded to what the coarsest level of the pyramid planned at that size divides."""
    median = fp["shape"]["median"]
    longest = max(median)
    sides = [s for s in DETECTION_SIDES if s <= longest and s / longest >= floor - 1e-9] or [
        min(DETECTION_SIDES, key=lambda s: abs(s / longest - floor))]
    sizes = []
    for side in sides:
        divisor = size_divisor(pyramid(fp, side / longest)["model.returned_layers"].value)
        sizes.append([max(divisor, round(m * side / longest / divisor) * divisor) for m in median])
    return sizes


def pyramid(fp: Mapping[str, Any], scale: float) -> Plan:
    """Feature pyramid levels and anchors from the box sizes after resizing: the finest level is the ResNet layer
    whose stride is at most half the smallest boxes (p05 of the geometric mean side); anchors of that size and
    ANCHOR_STEP x it, doubled per level, with as many levels as reach the largest boxes (p95)."""
    size = fp["boxes"]["size"]
    small, large = size["p05"] * scale, size["p95"] * scale
    finest = 1
    while finest < 3 and DETECTION_STEM * 2 ** finest <= small / 2:
        finest += 1
    levels = 2
    while levels < 4 and small * ANCHOR_STEP * 2 ** (levels - 1) < large:
        levels += 1
    layers = list(range(finest, min(4, finest + levels - 2) + 1))
    anchor = max(4, round(small))
    stride = DETECTION_STEM * 2 ** (finest - 1)
    return {
        "model.returned_layers": Planned(layers, f"boxes {small:.3g}..{large:.3g} px after resizing (p05..p95): the "
                                                 f"finest level at stride {stride} (<= half the smallest), "
                                                 f"{len(layers) + 1} levels with the pooled one reach the largest"),
        "model.anchor_sizes": Planned([anchor, round(anchor * ANCHOR_STEP)],
                                      f"the smallest boxes' side and x{ANCHOR_STEP} at the finest level, doubled per "
                                      f"level: up to {anchor * ANCHOR_STEP * 2 ** len(layers):.0f} px"),
    }


def size_divisor(returned_layers: Sequence[int]) -> int:
    """What the input must divide by: the stem (x4) and the layers down to the coarsest returned one (build_retinanet)."""
    return DETECTION_STEM * 2 ** max(returned_layers)


def detection_heads(fp: Mapping[str, Any]) -> Plan:
    """Anchors sampled per image and detections kept from the boxes per image; non-maximum suppression loose where
    ground-truth boxes overlap (touching cells), strict where they never do (MONAI's 0.22, for lesions)."""
    per_image = fp["boxes"]["per_image"]
    overlap = float(fp["boxes"]["overlap"]["p95"])
    sampled = max(64, 16 * math.ceil(per_image["median"]))
    return {
        "task.hard_negative.batch_size_per_image": Planned(sampled, f"{per_image['median']:.3g} boxes per image "
                                                                    "(median): 16 anchors each, at least 64"),
        "task.detections_per_image": Planned(max(100, 2 * math.ceil(per_image["max"])),
                                             f"up to {per_image['max']:.0f} boxes in one image: twice that, at least 100"),
        "task.nms_thresh": Planned(0.5 if overlap > OVERLAPPING_BOXES else 0.22,
                                   f"ground-truth boxes of one image overlap up to IoU {overlap:.2g} (p95)"
                                   + (": keep overlapping detections" if overlap > OVERLAPPING_BOXES else "")),
        "task.score_thresh": Planned(0.05, "detections scoring below 0.05 dropped before NMS"),
        "task.monitor": Planned("val/ap_iou50", "checkpoint chosen on validation AP at IoU 0.5 (Pascal VOC's measure)"),
    }


def detection_augmentation(fp: Mapping[str, Any]) -> Plan:
    """BCCD's searched recipe as a rule: mirroring and quarter turns where orientation varies, zoom and contrast
    jitter, no free rotation (a rotated box no longer fits its object)."""
    mirror = mirror_plan(fp)
    free = len(mirror["augmentation.flip_axes"].value) == int(fp["spatial_dims"])
    return {
        "augmentation.rotate_deg": Planned(0, "no free rotation: a rotated box is no longer tight"),
        "augmentation.translate": Planned(0, "whole images: the boxes stay inside"),
        "augmentation.scale": Planned([0.8, 1.2], "zoom range (boxes follow)"),
        "augmentation.affine_prob": Planned(0.5, "half the samples zoomed"),
        **mirror,
        "augmentation.contrast": Planned([0.8, 1.2], "contrast range"),
        "augmentation.intensity_shift": Planned(0.1, "brightness shifts (standardised units)"),
        "augmentation.intensity_prob": Planned(0.5, "half the samples"),
        "data.rotate90_prob": Planned(0.5 if free else 0.0, "quarter turns: orientation varies on every axis" if free
                                      else "no quarter turns: an axis has one orientation"),
    }


def detection_classes(fp: Mapping[str, Any]) -> Plan:
    """The box classes the data holds (named by its annotations, or counted), so no class count is given by hand."""
    labels = fp["labels"]
    return {"data.num_classes": Planned(labels["num_classes"], f"box classes in the data: {labels['class_names']}"),
            "data.class_names": Planned(list(labels["class_names"]), "in the order the labels count them")}


def detection_plan(fp: Mapping[str, Any], size: Sequence[int], device: str, cores: int) -> Plan:
    """Every value of a 2D detection plan at a chosen image size."""
    scale = max(size) / max(fp["shape"]["median"])
    plan: Plan = {
        **detection_classes(fp),
        "data.preprocessing.resize": Planned(list(size), f"median stored shape {fp['shape']['median']} scaled by "
                                                         f"{scale:.3g}, divisible by the coarsest level"),
        "data.in_channels": Planned(int(fp["channels"]), "channels of the stored images"),
        "data.preprocessing.normalize": Planned("zscore", "z-score per image and channel"),
        "data.patch_size": Planned(None, "whole images (the plan resizes them)"),
        "data.batch_size": Planned(DETECTION_BATCH[device], f"images per step on a {device}"),
        "data.num_workers": workers(cores),
        "data.cache": Planned("memory", "decoded and resized once"),
        "model.backbone.layers": Planned([2, 2, 2, 2], "the ResNet-18 layout (BCCD's searched backbone)"),
        "model.backbone.block_inplanes": Planned([32, 64, 128, 256], "at half width"),
        "model.fpn_channels": Planned(64, "pyramid features"),
    }
    plan.update(pyramid(fp, scale))
    plan.update(detection_heads(fp))
    plan.update(detection_augmentation(fp))
    plan["optimizer.lr"] = Planned(2e-3, "AdamW at 2e-3 (BCCD's searched rate)")
    plan["optimizer.weight_decay"] = Planned(1e-4, "light decoupled weight decay")
    return plan
