"""The plan rules: small pure functions from fingerprint figures to planned config values, each with its reason.

A rule returns ``Planned(value, reason)`` values keyed by the config key they set (``data.batch_size``); the
writer puts each reason beside its value in the experiment file. nnU-Net's published rules are the starting point
(median spacing, a separate rule for anisotropic axes, pooling until a feature map edge reaches 4, doubling
features per stage, batch from a memory estimate capped at 5% of the dataset, z-scoring, CT clipped to foreground
percentiles, Dice + cross-entropy, mirroring). Where medexp departs (a time budget on a CPU, mirroring only where
the anatomy's orientation varies), the reason says so. ``docs/planning.md`` lists every rule.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

MIN_EDGE = 4  # nnU-Net: pool an axis while its feature map stays at least this many voxels
MAX_POOLS = 5
BASE_FEATURES = {"gpu": 32, "cpu": 16}  # nnU-Net's 32; half on a CPU, where time goes with the feature count
MIN_BASE_FEATURES = 8  # a budget too short at the resolution floor and the smallest patch halves the width down to this
MAX_FEATURES = {2: 512, 3: 320}  # nnU-Net's caps
MIN_HALF_THICKNESS = 8.0  # voxels the thinnest 5% of structures keep after resizing
ANISOTROPY = 3.0  # nnU-Net: an axis 3x coarser than the others is planned apart
MAX_DATASET_PER_BATCH = 0.05  # nnU-Net: one batch sees at most 5% of the dataset's voxels
MEMORY_BYTES = {"gpu": 8e9, "cpu": 4e9}  # activation memory a batch may use (nnU-Net plans for 8 GB GPUs)
MAX_CPU_BATCH = 8  # a CPU's time per sample barely falls beyond this; smaller batches give more steps per budget
MAX_WHOLE_IMAGE_VOXELS = {2: 512 * 512, 3: 128 ** 3}  # larger planned images train on patches of this size
LONGEST_SIDES = (1024, 768, 512, 384, 320, 256, 224, 192, 160, 128, 96, 64)  # 2D resize candidates
AUROC_THRESHOLDS = 100  # pixel AUROC to two decimals
MEMORY_CACHE_SHARE = 0.25  # a prepared set larger than this share of the machine's memory is kept on disk
MIN_STEPS = 1000  # optimiser updates a plan fits in its budget (the hand-tuned recipes train 3,000-4,000): a
# smaller patch, then a lower resolution, then a narrower network until it does
PATCH_CONTEXT = {2: 128, 3: 64}  # voxels per axis a patch keeps, however short the budget (see patch_context)
MIN_EPOCHS = 40  # the plan lowers the resolution (above the detail floor) until the budget fits this many


@dataclass(frozen=True)
class Planned:
    value: Any
    reason: str


Plan = dict[str, Planned]


# ------------------------------------------------------------------------------------------- resolution
def resolution_floor(fp: Mapping[str, Any]) -> Planned:
    """The smallest scale factor (resized / stored size) that keeps the thinnest structures wide enough to score:
    a half-voxel boundary error costs about 1/(4 × half-thickness) of Dice, so 8 voxels keep it near 3%."""
    thin = float(fp["structures"]["half_thickness_voxels"]["p05"])
    if thin <= 0:
        return Planned(1.0, "no foreground measured: keep the stored resolution")
    scale = min(1.0, MIN_HALF_THICKNESS / thin)
    return Planned(round(scale, 4), f"thinnest 5% of structures are {thin:.3g} px half-thick (foreground per "
                                    f"boundary pixel); >= {MIN_HALF_THICKNESS:g} px after resizing")


def candidate_sizes(fp: Mapping[str, Any], floor: float) -> list[list[int]]:
    """2D sizes [rows, cols] to plan at, largest first: the median shape with its longest side at each of
    LONGEST_SIDES no larger than the stored one and no smaller than the resolution floor allows, rounded so that
    the network's pooling divides it."""
    rows, cols = fp["shape"]["median"][:2]
    longest = max(rows, cols)
    sides = [s for s in LONGEST_SIDES if s <= longest and s / longest >= floor - 1e-9] or [
        min(LONGEST_SIDES, key=lambda s: abs(s / longest - max(floor, min(1.0, LONGEST_SIDES[-1] / longest))))]
    return [divisible_shape([rows * side / longest, cols * side / longest]) for side in sides]


def divisible_shape(shape: Sequence[float], spacing: Sequence[float] | None = None, up: bool = False) -> list[int]:
    """Round a shape to the nearest multiple (``up``: the next) of what its pooling needs on each axis (at least
    one multiple)."""
    pools = pools_per_axis(shape, spacing)
    to_multiple = math.ceil if up else round
    return [max(2 ** p, to_multiple(s / 2 ** p) * 2 ** p) for s, p in zip(shape, pools, strict=True)]


def target_spacing(fp: Mapping[str, Any]) -> Planned:
    """nnU-Net: the median spacing; an anisotropic axis (3x coarser than the next, with 3x fewer voxels) gets the
    10th percentile of its spacings instead, so thick-slice cases are not interpolated from too few slices."""
    median = list(fp["spacing"]["median"])
    worst = max(range(len(median)), key=lambda a: median[a])
    others = [a for a in range(len(median)) if a != worst]
    shape = fp["shape"]["median"]
    if (median[worst] > ANISOTROPY * max(median[a] for a in others)
            and shape[worst] * ANISOTROPY < min(shape[a] for a in others)):
        low = max(fp["spacing"]["p10"][worst], max(median[a] for a in others))
        median[worst] = low
        return Planned([round(s, 4) for s in median],
                       f"median spacing; axis {worst} is anisotropic (x{fp['spacing']['anisotropy']:.3g}): its 10th "
                       "percentile (nnU-Net)")
    return Planned([round(s, 4) for s in median], "median spacing of the cases (nnU-Net)")


# --------------------------------------------------------------------------------------------- network
def pools_per_axis(shape: Sequence[float], spacing: Sequence[float] | None = None) -> list[int]:
    """nnU-Net: halve an axis while its feature map stays >= MIN_EDGE; an axis much coarser than the finest
    (spacing > 2x) waits, so the network first pools the fine axes (at most MAX_POOLS)."""
    spacing = list(spacing or [1.0] * len(shape))
    pools = [0] * len(shape)
    edges, current = [float(s) for s in shape], list(spacing)
    while True:
        finest = min(current)
        axes = [a for a in range(len(shape)) if edges[a] / 2 >= MIN_EDGE and pools[a] < MAX_POOLS
                and current[a] <= 2 * finest]
        if not axes:
            return pools
        for a in axes:
            pools[a] += 1
            edges[a] /= 2
            current[a] *= 2


def network(size: Sequence[int], spatial_dims: int, device: str, spacing: Sequence[float] | None = None,
            base: int | None = None) -> Plan:
    """A DynUNet (nnU-Net's U-Net) whose depth and per-axis strides follow from the input size; ``base`` features
    at the first level (the device's default unless the budget asks for fewer)."""
    pools = pools_per_axis(size, spacing)
    levels = max(pools) + 1
    strides = [[1] * spatial_dims] + [[2 if level <= p else 1 for p in pools] for level in range(1, levels)]
    base = base or BASE_FEATURES[device]
    filters = [min(MAX_FEATURES[spatial_dims], base * 2 ** level) for level in range(levels)]
    return {
        "model.strides": Planned(_compact(strides), f"{levels - 1} poolings per axis {pools}: each feature map edge "
                                                    f"stays >= {MIN_EDGE} voxels (nnU-Net)"),
        "model.kernel_size": Planned([3] * levels, "3x3 convolutions at every level (nnU-Net)"),
        "model.upsample_kernel_size": Planned(_compact(strides[1:]), "transposed convolutions mirror the strides"),
        "model.filters": Planned(filters, f"{base} features doubling per level up to {MAX_FEATURES[spatial_dims]} "
                                          f"(nnU-Net: 32; {BASE_FEATURES[device]} on a {device}"
                                          + (", halved for the budget)" if base < BASE_FEATURES[device] else ")")),
    }


def _compact(strides: list[list[int]]) -> list:
    """[[2, 2], [2, 2]] -> [2, 2] when every level strides all axes alike (shorter to read)."""
    return [s[0] if len(set(s)) == 1 else s for s in strides]


def activation_bytes(size: Sequence[int], filters: Sequence[int], strides: Sequence[Any]) -> float:
    """Memory of one sample's feature maps in training: per level two convolutions, each keeping its output, norm
    and activation (x3), in the encoder and decoder (x2), float32, with gradients (x2)."""
    voxels, total = float(math.prod(size)), 0.0
    for level, features in enumerate(filters):
        if level:
            stride = strides[level]
            voxels /= math.prod(stride if isinstance(stride, list) else [stride] * len(size))
        total += voxels * features
    return total * 2 * 3 * 2 * 4 * 2


def batch_size(size: Sequence[int], filters: Sequence[int], strides: Sequence[Any], device: str,
               dataset_voxels: float) -> Planned:
    """nnU-Net: as many samples as the activation memory allows, at least 2, at most 5% of the dataset's voxels
    per batch; on a CPU at most MAX_CPU_BATCH."""
    per_sample = activation_bytes(size, filters, strides)
    by_memory = int(MEMORY_BYTES[device] // per_sample)
    by_dataset = int(MAX_DATASET_PER_BATCH * dataset_voxels // math.prod(size))
    cap = MAX_CPU_BATCH if device == "cpu" else by_memory
    batch = max(2, min(by_memory, by_dataset, cap))
    return Planned(batch, f"memory ~{per_sample / 1e6:.0f} MB/sample allows {by_memory}, 5% of the dataset "
                          f"{by_dataset}" + (f", a CPU {MAX_CPU_BATCH}" if device == "cpu" else "") + "; at least 2")


# ------------------------------------------------------------------------------------ data and training
def normalisation(fp: Mapping[str, Any]) -> Plan:
    """nnU-Net: CT clipped to the foreground's 0.5-99.5 percentiles (HU keep their meaning across cases), every
    other modality z-scored per image (its intensities are relative)."""
    modality = fp["modality"]
    if modality["kind"] == "CT" and fp["intensity"]["foreground"]:
        low, high = fp["intensity"]["foreground"]["p00_5"][0], fp["intensity"]["foreground"]["p99_5"][0]
        return {"data.preprocessing.window": Planned([round(low, 1), round(high, 1)],
                                                     f"CT ({modality['why']}): foreground 0.5-99.5 percentiles"),
                "data.preprocessing.normalize": Planned("zscore", "then z-scored per image (nnU-Net's CT scheme)")}
    return {"data.preprocessing.normalize": Planned("zscore", f"{modality['kind']} ({modality['why']}): z-score "
                                                              "per image and channel (nnU-Net)")}


def mirroring(fp: Mapping[str, Any], keep_orientation: bool = True) -> Planned:
    """Mirror along the axes where the anatomy's orientation varies; an axis where nearly every case agrees with
    one asymmetric mean foreground map keeps its orientation (mirroring would train on anatomy that never occurs),
    unless ``keep_orientation`` is false: then every axis is mirrored, as nnU-Net does."""
    orient = fp["orientation"]
    axes = [a for a, one in enumerate(orient["one_orientation"]) if not one]
    kept = [a for a, one in enumerate(orient["one_orientation"]) if one]
    why = (f"asymmetry of the mean (foreground, image or boxes) {orient['asymmetry']} per axis, cases agreeing "
           f"{orient['agreeing_cases']}")
    if kept and not keep_orientation:
        return Planned(list(range(len(orient["one_orientation"]))),
                       f"one foreground class: mirrored on every axis, though axes {kept} have one orientation "
                       f"({why}); a mirrored structure is still that structure (nnU-Net)")
    if kept:
        return Planned(axes, f"axes {kept} have one orientation ({why}): not mirrored there")
    return Planned(axes, f"orientation varies on every axis ({why}): mirror all (nnU-Net)")


def mirror_plan(fp: Mapping[str, Any], keep_orientation: bool = True) -> Plan:
    """The mirror axes (``mirroring``) and each one's probability."""
    mirror = mirroring(fp, keep_orientation)
    return {"augmentation.flip_axes": mirror,
            "augmentation.flip_prob": Planned(0.5 if mirror.value else 0.0, "each planned mirror axis half the time")}


def mirrored_evaluation(plan: Plan) -> Plan:
    """Evaluation averages each axis mirrored in training with the image as it is (nnU-Net's test-time
    mirroring): the network has learnt both orientations, and averaging them removes what it learnt differently."""
    mirrored = plan["augmentation.flip_axes"].value
    return {"task.tta_flips": Planned([[axis] for axis in mirrored], "each planned mirror axis averaged with the image "
                                      "as it is in validation and test (nnU-Net's test-time mirroring; the schedule "
                                      "counts its time)" if mirrored else "nothing mirrored in training: no mirrored "
                                                                          "copies in evaluation")}


def augmentation(fp: Mapping[str, Any]) -> Plan:
    """nnU-Net's recipe, milder in rotation and scale (a short budget learns the common pose first): affine and
    intensity transforms on a fraction of the samples, mirroring. Axes with one orientation are not mirrored where
    two or more foreground classes are segmented: they may be told apart by where they lie along it (Hippocampus'
    head lies ahead of its body in every crop; its recipe does not mirror); one class is mirrored on every axis
    (CHASEDB1's vessels, whose searched recipe mirrors)."""
    foreground_classes = len(fp["classes"]["voxel_fraction"]) - 1
    return {
        "augmentation.rotate_deg": Planned(15, "small rotations (nnU-Net rotates up to 180 degrees over 1000 epochs)"),
        "augmentation.scale": Planned([0.85, 1.15], "zoom range (nnU-Net: 0.7-1.4)"),
        "augmentation.affine_prob": Planned(0.2, "nnU-Net's probability for rotation and scaling"),
        **mirror_plan(fp, keep_orientation=foreground_classes > 1),
        "augmentation.contrast": Planned([0.75, 1.25], "nnU-Net's contrast range"),
        "augmentation.gamma": Planned([0.7, 1.5], "nnU-Net's gamma range"),
        "augmentation.intensity_prob": Planned(0.15, "nnU-Net's probability for intensity transforms"),
        "augmentation.noise_std": Planned(0.1, "Gaussian noise in z-score units (nnU-Net)"),
        "augmentation.noise_prob": Planned(0.1, "nnU-Net's probability for noise"),
    }


def loss_and_optimiser(fp: Mapping[str, Any]) -> Plan:
    fg = fp["structures"]["foreground_fraction"]["median"]
    return {
        "task.loss._target_": Planned("monai.losses.DiceCELoss",
                                      f"Dice + cross-entropy (nnU-Net): Dice keeps the small foreground "
                                      f"({fg:.3g} of a median case) from vanishing under the background"),
        "optimizer.lr": Planned(3e-3, "AdamW at 3e-3: reaches a plateau in the few thousand steps a budget allows "
                                      "(nnU-Net's SGD 0.01 with momentum 0.99 needs its 250,000)"),
        "optimizer.weight_decay": Planned(1e-4, "light decoupled weight decay"),
    }


def sliding_window(size: Sequence[int], patch: Sequence[int] | None, batch: int) -> Plan:
    """Whole planned images are inferred in one window; patches slide with half-patch steps (nnU-Net)."""
    if patch is None:
        return {"task.roi_size": Planned(list(size), "the whole planned image in one window"),
                "task.sw_overlap": Planned(0.0, "one window: no overlap needed"),
                "task.sw_batch_size": Planned(1, "one window per image")}
    return {"task.roi_size": Planned(list(patch), "windows of the training patch size"),
            "task.sw_overlap": Planned(0.5, "half-window steps (nnU-Net)"),
            "task.sw_batch_size": Planned(batch, "windows per forward pass = the training batch")}


def patch(size: Sequence[int], spatial_dims: int, max_voxels: int | None = None, one_shape: bool = True) -> Planned:
    """Whole images when the planned images have one shape and are small enough to train on whole; volumes of
    several shapes (resampled, not resized) train on patches of the median shape ``size``, smaller cases zero-padded
    (nnU-Net); else the largest pooling-divisible patch within that many voxels (``max_voxels``: fewer, for the
    budget, see ``patch_limits``), taken around foreground and background in turn."""
    cap = max_voxels or MAX_WHOLE_IMAGE_VOXELS[spatial_dims]
    if math.prod(size) <= cap:
        if not one_shape:
            return Planned(list(size), "volumes of several shapes at the target spacing: patches of their median "
                                       "shape, smaller cases zero-padded (nnU-Net)")
        return Planned(None, f"planned images ({math.prod(size)} voxels) train whole")
    shape = [float(s) for s in size]
    while math.prod(shape) > cap:
        largest = max(range(len(shape)), key=lambda a: shape[a])
        shape[largest] *= 0.9
    why = f"images of {list(size)} exceed {cap} voxels: patches of that size"
    if max_voxels is not None:
        why += f" (smaller than the {MAX_WHOLE_IMAGE_VOXELS[spatial_dims]} a patch may have, for {MIN_STEPS} steps)"
    return Planned(divisible_shape(shape), why)


def patch_context(fp: Mapping[str, Any], size: Sequence[int]) -> list[float]:
    """Voxels per axis a patch keeps at least: PATCH_CONTEXT, or the largest structures whole (4x their p95
    half-thickness: the diameter of a disk) at the planned size, within the image."""
    scale = max(size) / max(fp["shape"]["median"])
    structure = 4 * float(fp["structures"]["half_thickness_voxels"]["p95"]) * scale
    return [min(float(s), max(PATCH_CONTEXT[len(size)], structure)) for s in size]


def patch_limits(fp: Mapping[str, Any], size: Sequence[int]) -> list[int | None]:
    """Patch sizes (in voxels) to try at a planned image size, largest first: the whole-image rule's (None), then
    halving while a patch still holds ``patch_context`` (a short budget trains more steps on smaller patches)."""
    floor = math.prod(patch_context(fp, size))
    limits: list[int | None] = [None]
    cap = min(math.prod(size), MAX_WHOLE_IMAGE_VOXELS[len(size)]) / 2
    while cap >= floor:
        limits.append(int(cap))
        cap /= 2
    return limits


def workers(cores: int) -> Planned:
    """Loader processes beside each training process: ``auto`` sizes them where the run starts (``min(4, cores
    per training process - 1)``, ``medexp.data.workers``), so a plan made on one machine suits another."""
    return Planned("auto", f"sized where the run starts: min(4, cores - 1), here {max(0, min(4, cores - 1))} "
                           f"of {cores} cores")


def case_cache(fp: Mapping[str, Any], size: Sequence[int], memory_bytes: float) -> Planned:
    """Prepared cases in memory while the whole set, kept compact (float16 images, uint8 masks: 2 bytes a voxel per
    channel and 1 for the mask), takes at most MEMORY_CACHE_SHARE of this machine's memory; else memory-mapped on
    disk, read a patch at a time and shared by every fold, sweep job and rank."""
    cases = sum(fp["cases_per_split"].values())
    set_bytes = cases * float(math.prod(size)) * (2 * int(fp["channels"]) + 1)
    figure = f"{cases} prepared cases ~{set_bytes / 2 ** 30:.2g} GiB, {MEMORY_CACHE_SHARE:.0%} of " \
             f"{memory_bytes / 2 ** 30:.0f} GiB of memory is {MEMORY_CACHE_SHARE * memory_bytes / 2 ** 30:.2g} GiB"
    if set_bytes <= MEMORY_CACHE_SHARE * memory_bytes:
        return Planned("memory", f"{figure}: kept in memory, prepared once per run")
    return Planned("disk", f"{figure}: memory-mapped on disk, prepared once for every run")


def segmentation_plan(fp: Mapping[str, Any], size: Sequence[int], device: str, cores: int,
                      base: int | None = None, max_patch_voxels: int | None = None) -> Plan:
    """Every value of a 2D/3D segmentation plan at a chosen planned image size (2D) or target spacing (3D) and
    network width (``base`` features), with patches of at most ``max_patch_voxels`` (None: the whole-image rule's), but
    where its cases are kept (``case_cache``: the machine's memory)."""
    dims = int(fp["spatial_dims"])
    one_shape = dims == 2 or bool(fp["shape"]["one_shape"])  # 2D images are resized to one shape
    planned_patch = patch(size, dims, max_patch_voxels, one_shape)
    train_size = planned_patch.value or list(size)
    plan: Plan = {}
    if dims == 2:
        stored = fp["shape"]["median"][:2]
        plan["data.preprocessing.resize"] = Planned(list(size), f"median stored shape {stored} scaled by "
                                                                f"{size[1] / stored[1]:.3g}, divisible by its pooling")
        plan["data.preprocessing.spacing"] = Planned(None, "2D images: planned in pixels, resized")
    else:
        plan["data.preprocessing.spacing"] = target_spacing(fp)
        plan["data.preprocessing.resize"] = Planned(None, "3D volumes: resampled to the target spacing")
    plan["data.in_channels"] = Planned(int(fp["channels"]), "channels of the stored images (after "
                                                            "data.preprocessing.channels)")
    plan.update(normalisation(fp))
    plan["data.patch_size"] = planned_patch
    plan["data.sampler"] = Planned("posneg", "patches centred on foreground and background alike (nnU-Net "
                                             "oversamples foreground)")
    whole = planned_patch.value is None or list(planned_patch.value) == list(size)
    plan["data.samples_per_image"] = Planned(1 if whole else 2, "one whole image (or median-shape patch) per sample"
                                             if whole else "two patches per loaded image")
    plan.update(network(train_size, dims, device, fp["spacing"]["median"] if dims == 3 else None, base))
    dataset_voxels = fp["cases_per_split"]["train"] * float(math.prod(size))
    plan["data.batch_size"] = batch_size(train_size, plan["model.filters"].value, plan["model.strides"].value, device,
                                         dataset_voxels)
    plan["data.num_workers"] = workers(cores)
    plan.update(augmentation(fp))
    plan.update(loss_and_optimiser(fp))
    plan.update(sliding_window(size, planned_patch.value, plan["data.batch_size"].value))
    if dims == 2 and planned_patch.value is None:  # follows the resize when a sweep changes it
        plan["task.roi_size"] = Planned("${data.preprocessing.resize}", "the whole planned image in one window")
    if len(fp["classes"]["voxel_fraction"]) == 2:
        plan["task.auroc_thresholds"] = Planned(AUROC_THRESHOLDS, "binned pixel AUROC: its time per image grows "
                                                                  "with the bins (1000 cost more than the network)")
    plan.update(mirrored_evaluation(plan))
    return plan
