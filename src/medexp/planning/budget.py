"""The throughput probe and the epoch count: a few training steps of the planned network timed on this machine,
and as many epochs as the budget holds after loading the data and before testing the best checkpoint."""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from medexp.planning.rules import Planned

STARTUP_S = 30.0  # a training process's imports, store checks and loader start, before its data is read
PROBE_STEPS = 3
BF16_GAIN = 1.25  # bfloat16 autocast is planned when the probe steps at least this much faster with it


@dataclass(frozen=True)
class Throughput:
    """Seconds per training step (one batch of ``batch`` images, each giving samples of ``size``: forward +
    backward + update), per augmented sample, and per inference of one whole planned image of ``image`` (default:
    ``size``, whole images trained on), on this machine."""

    step_s: float
    augment_s: float
    infer_s: float
    batch: int
    size: tuple[int, ...]
    image: tuple[int, ...] | None = None

    def scaled(self, size: Sequence[int], batch: int, image: Sequence[int] | None = None) -> Throughput:
        """The figures for another training size (patch or whole image), batch and whole image, in proportion to
        the voxels (convolutions cost that)."""
        ratio = math.prod(size) / math.prod(self.size)
        image_ratio = math.prod(image or size) / math.prod(self.image or self.size)
        return Throughput(self.step_s * ratio * batch / self.batch, self.augment_s * ratio,
                          self.infer_s * image_ratio, batch, tuple(size), None if image is None else tuple(image))


def fastest_threads(measure: Callable[[], Throughput], cores: int) -> tuple[Planned, Throughput]:
    """CPU threads for training: ``measure`` (a probe) with one thread and with one per core, the faster one kept.
    On a machine other jobs share, threads that wait on each other can make several threads slower than one."""
    import torch

    timed = {}
    for threads in sorted({1, cores}):
        torch.set_num_threads(threads)
        timed[threads] = measure()
    best = min(timed, key=lambda t: timed[t].step_s)
    torch.set_num_threads(best)
    measured = ", ".join(f"{t} thread(s) {speed.step_s:.3g} s/step" for t, speed in timed.items())
    return Planned(best, f"the faster in the probe ({measured})"), timed[best]


def faster_precision(measure: Callable[[str], Throughput]) -> Planned:
    """``trainer.precision``: bfloat16 autocast where ``measure`` (a probe at a precision) steps BF16_GAIN times
    faster with it than in float32 (3D convolutions on CPUs with AVX512-BF16/AMX, GPUs from Ampere on), else 32."""
    full, half = measure("32").step_s, measure("bf16-mixed").step_s
    timed = f"probe: {full:.3g} s/step in float32, {half:.3g} s/step with bfloat16 autocast"
    if half * BF16_GAIN <= full:
        return Planned("bf16-mixed", f"{timed} (>= {BF16_GAIN}x faster)")
    return Planned(32, f"{timed} (< {BF16_GAIN}x faster: float32 kept)")


def probe(plan: Mapping[str, Planned], in_channels: int, num_classes: int, spatial_dims: int, device: str,
          size: Sequence[int], precision: str = "32") -> Throughput:
    """Time PROBE_STEPS training steps of the planned network, loss and optimiser on random batches of the planned
    shape (after one warm-up step), one whole-image inference (times its mirrored copies), and the planned
    augmentation of one sample; at ``precision`` (Lightning's name: "32" or "bf16-mixed", autocast as the trainer does)."""
    import torch
    from monai.losses import DiceCELoss
    from monai.networks.nets import DynUNet

    value = _values(plan)
    train_size = value["data.patch_size"] or list(size)
    batch = value["data.batch_size"] * value["data.samples_per_image"]
    target = torch.device("cuda" if device == "gpu" and torch.cuda.is_available() else "cpu")
    net = DynUNet(spatial_dims, in_channels, num_classes, value["model.kernel_size"], value["model.strides"],
                  value["model.upsample_kernel_size"], filters=value["model.filters"], norm_name="instance").to(target)
    loss = DiceCELoss(to_onehot_y=True, softmax=True)
    optimiser = torch.optim.AdamW(net.parameters(), lr=value["optimizer.lr"])
    images = torch.randn(batch, in_channels, *train_size, device=target)
    labels = torch.randint(0, num_classes, (batch, 1, *train_size), device=target)

    autocast = torch.autocast(target.type, dtype=torch.bfloat16, enabled=precision == "bf16-mixed")

    def step() -> None:
        optimiser.zero_grad()
        with autocast:
            loss_value = loss(net(images), labels)
        loss_value.backward()
        optimiser.step()

    step()
    step_s = _timed(step, PROBE_STEPS, target)
    net.eval()
    with torch.no_grad(), autocast:
        whole = torch.randn(1, in_channels, *size, device=target)
        infer_s = evaluated_copies(value) * (_timed(lambda: net(whole), 2, target) if value["data.patch_size"] is None else (
            step_s / batch * math.prod(size) / math.prod(train_size) / 2))  # windows: about a third of a step each
    infer_s += metric_seconds(value, size, num_classes)
    return Throughput(step_s, augment_seconds(value, spatial_dims, in_channels, train_size), infer_s,
                      value["data.batch_size"], tuple(train_size), tuple(size))


def evaluated_copies(value: Mapping[str, Any]) -> int:
    """Inferences per evaluated image: the image as it is and each mirrored copy (``task.tta_flips``)."""
    return 1 + len(value.get("task.tta_flips") or [])


def metric_seconds(value: Mapping[str, Any], size: Sequence[int], num_classes: int) -> float:
    """Seconds the evaluation metrics take per whole image beyond the network: the binned pixel AUROC (binary)."""
    if num_classes != 2:
        return 0.0
    import torch
    from torchmetrics.classification import BinaryAUROC

    auroc = BinaryAUROC(thresholds=value.get("task.auroc_thresholds", 1000))
    scores, truth = torch.rand(math.prod(size)), torch.randint(0, 2, (math.prod(size),))
    return _timed(lambda: auroc.update(scores, truth), 2, torch.device("cpu"))


def _timed(action, repeats: int, device) -> float:
    import torch

    started = time.perf_counter()
    for _ in range(repeats):
        action()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - started) / repeats


def augment_seconds(value: Mapping[str, Any], spatial_dims: int, in_channels: int, size: Sequence[int]) -> float:
    """Seconds to augment one sample with the planned recipe (MONAI, as the training loader does)."""
    import torch
    from monai.transforms import Compose

    from medexp.data.transforms import monai_augmentation

    pipeline = Compose(monai_augmentation(_recipe(value), ("image", "label"), spatial_dims))
    sample = {"image": torch.randn(in_channels, *size), "label": torch.zeros(1, *size)}
    return _timed(lambda: pipeline(dict(sample)), 4, torch.device("cpu"))


def _values(plan: Mapping[str, Planned]) -> dict[str, Any]:
    return {key: planned.value for key, planned in plan.items()}


def _recipe(value: Mapping[str, Any]):
    from medexp.data.augmentation import AugmentationRecipe

    return AugmentationRecipe.from_config({key.split(".", 1)[1]: v for key, v in value.items()
                                           if key.startswith("augmentation.")})


def probe_classification(plan: Mapping[str, Planned], in_channels: int, num_classes: int, spatial_dims: int,
                         device: str, size: Sequence[int]) -> Throughput:
    """Time PROBE_STEPS training steps of the planned ResNet (batched augmentation, cross-entropy, AdamW) on random
    batches of the planned size, and the inference of one evaluation batch (per image)."""
    import torch
    from monai.networks.nets import ResNet

    from medexp.data.batch_augment import BatchAugmentation

    value = _values(plan)
    batch = value["data.batch_size"]
    target = torch.device("cuda" if device == "gpu" and torch.cuda.is_available() else "cpu")
    net = ResNet(block="basic", layers=value["model.layers"], block_inplanes=value["model.block_inplanes"],
                 spatial_dims=spatial_dims, n_input_channels=in_channels, num_classes=num_classes,
                 conv1_t_size=value["model.conv1_t_size"], conv1_t_stride=value["model.conv1_t_stride"],
                 no_max_pool=value["model.no_max_pool"]).to(target)
    augment = BatchAugmentation(_recipe(value))
    optimiser = torch.optim.AdamW(net.parameters(), lr=value["optimizer.lr"])
    loss = torch.nn.CrossEntropyLoss()
    images = torch.randn(batch, in_channels, *size, device=target)
    labels = torch.randint(0, max(2, num_classes), (batch,), device=target)

    def step() -> None:
        optimiser.zero_grad()
        loss(net(augment(images)), labels).backward()
        optimiser.step()

    step()
    step_s = _timed(step, PROBE_STEPS, target)
    net.eval()
    with torch.no_grad():
        infer_s = evaluated_copies(value) * _timed(lambda: net(images), 2, target) / batch
    return Throughput(step_s, 0.0, infer_s, batch, tuple(size))


def probe_detection(plan: Mapping[str, Planned], in_channels: int, num_classes: int, spatial_dims: int,
                    device: str, size: Sequence[int], boxes_per_image: int) -> Throughput:
    """Time PROBE_STEPS training steps of the planned RetinaNet (ATSS matching, hard negatives, as the detection
    task trains) on random images holding ``boxes_per_image`` random boxes of the planned anchor size, one
    inference, and the planned box augmentation of one sample."""
    import torch
    from monai.networks.nets import ResNet
    from monai.transforms import Compose

    from medexp.data.detection import box_augmentation
    from medexp.tasks.detection import build_retinanet

    value = _values(plan)
    batch = value["data.batch_size"]
    target = torch.device("cuda" if device == "gpu" and torch.cuda.is_available() else "cpu")
    backbone = ResNet(block="basic", layers=value["model.backbone.layers"],
                      block_inplanes=value["model.backbone.block_inplanes"], spatial_dims=spatial_dims,
                      n_input_channels=in_channels, conv1_t_size=7, conv1_t_stride=2)
    detector = build_retinanet(backbone, spatial_dims, num_classes, value["model.anchor_sizes"],
                               value["model.returned_layers"], value["model.fpn_channels"])
    detector.set_target_keys(box_key="box", label_key="label")
    detector.set_atss_matcher(num_candidates=4, center_in_gt=False)
    detector.set_hard_negative_sampler(batch_size_per_image=value["task.hard_negative.batch_size_per_image"],
                                       positive_fraction=0.3, pool_size=20, min_neg=16)
    detector.to(target)
    optimiser = torch.optim.AdamW(detector.network.parameters(), lr=value["optimizer.lr"])
    side = float(value["model.anchor_sizes"][0])
    generator = torch.Generator().manual_seed(0)

    def sample() -> tuple[torch.Tensor, dict]:
        low = torch.rand(boxes_per_image, spatial_dims, generator=generator) * (
            torch.tensor(size, dtype=torch.float32) - side)
        box = torch.cat([low, low + side], dim=1)
        return (torch.randn(in_channels, *size),
                {"box": box, "label": torch.randint(0, num_classes, (boxes_per_image,), generator=generator)})

    samples = [sample() for _ in range(batch)]
    images = [image.to(target) for image, _ in samples]
    targets = [{k: v.to(target) for k, v in t.items()} for _, t in samples]

    def step() -> None:
        optimiser.zero_grad()
        losses = detector(images, targets)
        (losses[detector.cls_key] + losses[detector.box_reg_key]).backward()
        optimiser.step()

    detector.train()
    step()
    step_s = _timed(step, PROBE_STEPS, target)
    detector.eval()
    with torch.no_grad():
        infer_s = _timed(lambda: detector(images[:1]), 2, target)
    pipeline = Compose(box_augmentation(_recipe(value), spatial_dims, value.get("data.rotate90_prob", 0.0)))
    image, boxes = samples[0]
    augment_s = _timed(lambda: pipeline({"image": image.clone(), **boxes}), 4, torch.device("cpu"))
    return Throughput(step_s, augment_s, infer_s, batch, tuple(size))


@dataclass(frozen=True)
class Schedule:
    epochs: int
    epoch_s: float
    setup_s: float
    test_s: float
    val_every: int


def schedule(budget_s: float, speed: Throughput, cases: Mapping[str, int], read_s: float) -> Schedule:
    """Epochs that fill the budget: the budget less the start-up and data loading (the fingerprint's read time of
    all cases), less the test, divided by an epoch's training and validation time. Validation runs every epoch
    unless it would take over a fifth of the epoch."""
    steps = math.ceil(cases["train"] / speed.batch)
    train_s = steps * speed.step_s + cases["train"] * speed.augment_s
    val_s = cases["val"] * speed.infer_s
    val_every = max(1, math.ceil(val_s / (0.2 * train_s))) if train_s > 0 else 1
    epoch_s = train_s + val_s / val_every
    setup_s = STARTUP_S + read_s
    test_s = cases["test"] * speed.infer_s
    epochs = max(1, int((budget_s - setup_s - test_s) // epoch_s))
    return Schedule(epochs, epoch_s, setup_s, test_s, val_every)
