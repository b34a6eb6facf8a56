"""Classification data that fits in memory: tensors resident on the training device, batches taken by index.

No worker processes and no per-sample Python: each batch is one index into a tensor, standardised and augmented in
one batched call (``BatchAugmentation``) on the device. The images stay resident as stored (8-bit sets as uint8, a
quarter of float32's bytes): each batch becomes float when it is taken. Under DDP every rank takes its own share of
the indices: equal shares of a shared permutation (or weighted draw) for training (ranks must step together), and
an unpadded share for evaluation so that metrics, gathered by torchmetrics, count every sample exactly once.
"""
from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from medexp.data.augmentation import AugmentationRecipe
from medexp.data.base import MedexpDataModule
from medexp.errors import ConfigError, DataError

SPLITS = ("train", "val", "test")


INTEGER_SCALE = 255.0  # stored integer images are divided by it before standardising (8-bit to [0, 1])
STATISTICS_CHUNK = 1 << 24  # values per step when the training set's mean/std are summed (no float copy of it)


def stored_scale(dtype: np.dtype) -> float:
    """What stored images of ``dtype`` are divided by before standardising: integers by 255, floats by 1."""
    return INTEGER_SCALE if np.issubdtype(dtype, np.integer) else 1.0


@dataclass
class ArraySplits:
    """Images ``(N, C, H, W)`` or, in 3D, ``(N, C, D, H, W)`` (any numeric dtype) and labels per split: class
    indices ``(N,)``, or for a multi-label set (ChestMNIST) one 0/1 column per label ``(N, K)``."""

    images: dict[str, np.ndarray]
    labels: dict[str, np.ndarray]
    source: str  # a path or generator description, for the fingerprint
    extra: dict = field(default_factory=dict)


def _first(mask: np.ndarray, limit: int = 5) -> str:
    """How many entries ``mask`` marks and the first few of their (sample) indices, for an error message."""
    rows = np.flatnonzero(mask.reshape(len(mask), -1).any(axis=1))
    return f"{len(rows)} of them, first at indices {rows[:limit].tolist()}"


def integer_labels(labels: np.ndarray, where: str) -> np.ndarray:
    """``labels`` as int64, refusing what a cast would silently change: NaN/inf and fractional values."""
    if labels.dtype.kind in "iub":
        return labels.astype(np.int64)
    if labels.dtype.kind != "f":
        raise DataError(f"{where} have dtype {labels.dtype}: labels must be numbers (class indices or 0/1)")
    bad = ~np.isfinite(labels)
    if bad.any():
        raise DataError(f"{where} hold NaN or infinite values ({_first(bad)}): fix or drop those samples")
    fractional = labels != np.round(labels)
    if fractional.any():
        raise DataError(f"{where} hold non-integer values such as {labels[fractional].flat[0]:g} ({_first(fractional)}): "
                        "labels are class indices (or 0/1 per label); soft labels are not supported")
    return labels.astype(np.int64)


def check_finite(images: np.ndarray, where: str) -> None:
    """Float images must be finite: one NaN pixel turns the loss into NaN an epoch later."""
    if images.dtype.kind == "f":
        bad = ~np.isfinite(images)
        if bad.any():
            raise DataError(f"{where} hold NaN or infinite pixels ({_first(bad)}): fix or drop those images")


class IndexBatches:
    """An iterable of ``(images, labels)`` batches over resident tensors; a fresh permutation every epoch.

    ``epoch`` is read when an epoch starts, so the order depends on (seed, epoch) only and a resumed run sees the
    same batches as an uninterrupted one. ``prepare`` turns each batch of stored images into network inputs.
    With ``weights`` (one per sample) an epoch draws as many samples with replacement, each with probability
    proportional to its weight (what torch's ``WeightedRandomSampler`` draws); under DDP every rank takes its own
    equal share of one draw made alike on every rank, so the ranks together see one weighted epoch.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, shuffle: bool, seed: int = 0,
                 epoch: Callable[[], int] = lambda: 0, rank: int = 0, world_size: int = 1, drop_last: bool = False,
                 prepare: Callable[[torch.Tensor], torch.Tensor] = lambda images: images,
                 weights: torch.Tensor | None = None):
        self.images, self.labels = images, labels
        self.batch_size, self.shuffle, self.seed, self.epoch = batch_size, shuffle or weights is not None, seed, epoch
        self.rank, self.world_size, self.drop_last = rank, world_size, drop_last
        self.prepare, self.weights = prepare, weights

    def _indices(self) -> torch.Tensor:
        n = len(self.labels)
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + 7919 * self.epoch())
            if self.weights is not None:
                order = torch.multinomial(self.weights, n, replacement=True, generator=generator)
            else:
                order = torch.randperm(n, generator=generator)
            order = order[: n - n % self.world_size]  # equal shares: every rank takes the same number of steps
        else:
            order = torch.arange(n)
        return order[self.rank :: self.world_size]

    def __len__(self) -> int:
        n = len(self.labels)
        share = n // self.world_size if self.shuffle else len(range(self.rank, n, self.world_size))
        return share // self.batch_size if self.drop_last else -(-share // self.batch_size)

    def __iter__(self):
        indices = self._indices().to(self.labels.device)
        stop = len(indices) - len(indices) % self.batch_size if self.drop_last else len(indices)
        for start in range(0, stop, self.batch_size):
            idx = indices[start : start + self.batch_size]
            yield self.prepare(self.images[idx]), self.labels[idx]


SAMPLERS = (None, "balanced")


class InMemoryClassificationDataModule(MedexpDataModule):
    """Base for array-backed classification sets; subclasses implement ``load_arrays``.

    ``sampler``: ``null`` shuffles the training set once per epoch; ``balanced`` draws each epoch's training images
    with replacement, every class equally often in expectation (an image's weight is 1 / its class's count), for
    imbalanced sets, an alternative to ``task.class_weights=balanced``."""

    task_kind = "classification"
    holds_arrays = True

    def __init__(self, batch_size: int, num_classes: int, in_channels: int, spatial_dims: int, image_size: int,
                 class_names: Sequence[str] | None = None, augmentation: Mapping | None = None,
                 eval_batch_size: int = 512, seed: int = 0, sampler: str | None = None):
        super().__init__()
        if sampler not in SAMPLERS:
            raise ConfigError(f"data.sampler={sampler!r} is unknown for classification: use null (shuffle) or "
                              "balanced (every class drawn equally often)")
        self.sampler = sampler
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.num_classes, self.in_channels = num_classes, in_channels
        self.spatial_dims, self.image_size = spatial_dims, image_size
        self.class_names = list(class_names) if class_names else [str(i) for i in range(num_classes)]
        self.recipe = AugmentationRecipe.from_config(augmentation)
        self.seed = seed
        self.arrays: ArraySplits | None = None
        self.tensors: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.mean = self.std = None
        self.input_scale: float | None = None  # stored images are divided by it first (integers: 255), see standardise
        self._statistics: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}  # mean/std tensors, one device
        self.sample_weights: torch.Tensor | None = None  # data.sampler=balanced: one per training image
        self.image_shape: list[int] | None = None  # (C, H, W) or (C, D, H, W) of the training images
        self._augment = None
        self._saved_train_counts: tuple[list[int], int] | None = None  # from a checkpoint, see ``_label_counts``

    # -- subclasses -------------------------------------------------------------------------------------------
    def load_arrays(self) -> ArraySplits:
        raise NotImplementedError

    # -- Lightning hooks --------------------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self.arrays is None:
            self.arrays = self.load_arrays()
            self._validate(self.arrays)
            self._to_tensors(self.arrays)
            if self.sampler == "balanced":
                self.sample_weights = balanced_weights(self.arrays.labels["train"])
        device = self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")
        self.tensors = {k: (x.to(device), y.to(device)) for k, (x, y) in self.tensors.items()}
        if not self.recipe.is_identity and self._augment is None:
            from medexp.data.batch_augment import BatchAugmentation

            self._augment = BatchAugmentation(self.recipe)

    def train_dataloader(self):
        return self._batches("train", shuffle=True)

    def val_dataloader(self):
        return self._batches("val", shuffle=False)

    def test_dataloader(self):
        return self._batches("test", shuffle=False)

    def predict_dataloader(self):
        return self._batches("test", shuffle=False)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        if self._augment is not None and self.trainer is not None and self.trainer.training:
            images, labels = batch
            return self._augment(images), labels
        return batch

    # -- facts about the data ---------------------------------------------------------------------------------
    @property
    def multi_label(self) -> bool:
        """Whether each image carries K binary labels (``(N, K)`` labels) rather than one class index."""
        return self.arrays.labels["train"].ndim == 2

    def class_counts(self, split: str = "train") -> list[int]:
        """Images per class; for a multi-label set, images where each label is present."""
        return self._label_counts(split)[0]

    def sample_count(self, split: str = "train") -> int:
        return self._label_counts(split)[1]

    def _label_counts(self, split: str) -> tuple[list[int], int]:
        """(images per class or label, images) of a split. The training split's also travel in checkpoints:
        ``medexp-predict`` rebuilds a class-weighted loss (``task.class_weights=balanced``) without the data."""
        if self.arrays is None and split == "train" and self._saved_train_counts is not None:
            return self._saved_train_counts
        if self.arrays is None:  # a checkpoint from before the counts were saved in it: read the data again
            self.setup()
        labels = self.arrays.labels[split]
        counts = labels.sum(axis=0) if labels.ndim == 2 else np.bincount(labels, minlength=self.num_classes)
        return counts.astype(np.int64).tolist(), int(len(labels))

    def fingerprint(self) -> dict:
        """What this run saw, so a result can be traced to its data (nnU-Net's habit): sizes, classes, a hash."""
        a = self.arrays
        digest = hashlib.sha256()
        for split in SPLITS:
            digest.update(np.ascontiguousarray(a.images[split]).tobytes())
            digest.update(np.ascontiguousarray(a.labels[split]).tobytes())
        return {
            "source": a.source,
            "sha256": digest.hexdigest(),
            "image_shape": list(a.images["train"].shape[1:]),
            "dtype": str(a.images["train"].dtype),
            "sizes": {s: int(len(a.labels[s])) for s in SPLITS},
            "class_counts": {s: self.class_counts(s) for s in SPLITS},
            "multi_label": self.multi_label,
            "class_names": self.class_names,
            "normalisation": {"mean": self.mean, "std": self.std},
            **a.extra,
        }

    # -- internals --------------------------------------------------------------------------------------------
    def _batches(self, split: str, shuffle: bool) -> IndexBatches:
        images, labels = self.tensors[split]
        trainer = self.trainer
        return IndexBatches(
            images, labels, self.batch_size if shuffle else self.eval_batch_size, shuffle=shuffle, seed=self.seed,
            epoch=(lambda: trainer.current_epoch) if trainer is not None else (lambda: 0),
            rank=trainer.global_rank if trainer is not None else 0,
            world_size=trainer.world_size if trainer is not None else 1,
            prepare=self.standardise, weights=self.sample_weights if shuffle else None,
        )

    def _validate(self, a: ArraySplits) -> None:
        for split in SPLITS:
            x, y = a.images.get(split), a.labels.get(split)
            if x is None or y is None or len(x) == 0:
                raise DataError(f"{a.source}: the {split} split is empty or missing")
            if len(x) != len(y):
                raise DataError(f"{a.source}: {split} has {len(x)} images but {len(y)} labels")
            a.labels[split] = y = integer_labels(y, f"{a.source}: {split} labels")
            check_finite(x, f"{a.source}: {split} images")
            if x.ndim != 2 + self.spatial_dims or x.shape[1] != self.in_channels:
                layout = "(C, H, W)" if self.spatial_dims == 2 else "(C, D, H, W)"
                raise DataError(f"{a.source}: {split} images have shape {x.shape[1:]} {layout}; the config says "
                                f"in_channels={self.in_channels}, spatial_dims={self.spatial_dims}: set "
                                "data.in_channels and data.spatial_dims to match")
            if y.ndim == 2:
                if y.shape[1] != self.num_classes:
                    raise DataError(f"{a.source}: {split} labels have {y.shape[1]} columns (one per label of a "
                                    f"multi-label set) but data.num_classes={self.num_classes}: set it to "
                                    f"{y.shape[1]}")
                if not np.isin(y, (0, 1)).all():
                    raise DataError(f"{a.source}: {split} labels have {y.shape[1]} columns but hold values other "
                                    "than 0 and 1: a multi-label set marks each label absent (0) or present (1)")
            elif y.min() < 0 or y.max() >= self.num_classes:
                raise DataError(f"{a.source}: {split} labels span {int(y.min())}..{int(y.max())}, outside "
                                f"0..{self.num_classes - 1}: set data.num_classes to match the data")

    def _to_tensors(self, a: ArraySplits) -> None:
        """The splits as tensors in their stored dtype (sharing the arrays' memory), and the training set's
        per-channel statistics, which ``standardise`` applies to each batch."""
        train = a.images["train"]
        self.image_shape = list(train.shape[1:])
        self.input_scale = stored_scale(train.dtype)
        self.mean, self.std = channel_statistics(train, self.input_scale)
        for split in SPLITS:
            self.tensors[split] = (resident(a.images[split]), torch.from_numpy(a.labels[split].astype(np.int64)))

    def standardise(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Stored images ``(N, C, *spatial)`` as the network sees them, on their own device: float32 divided by the
        training images' scale (integer images by 255, float images by 1), then standardised by the training set's
        per-channel mean/std."""
        tensor = torch.from_numpy(np.ascontiguousarray(images)) if isinstance(images, np.ndarray) else images
        scale = self.input_scale  # from a checkpoint older than it: by the dtype of the images given, as then
        if scale is None:
            scale = 1.0 if tensor.is_floating_point() else INTEGER_SCALE
        mean, std = self._statistics_on(tensor.device, tensor.ndim)
        return (tensor.float() / scale - mean) / std

    def _statistics_on(self, device: torch.device, ndim: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and std shaped for ``(N, C, *spatial)`` on ``device``, made once: a copy to a GPU on every batch
        would wait for the work queued before it."""
        key = (str(device), ndim, tuple(self.mean), tuple(self.std))
        if key not in self._statistics:
            shape = (1, -1) + (1,) * (ndim - 2)
            self._statistics = {key: tuple(torch.tensor(v, device=device).view(shape) for v in (self.mean, self.std))}
        return self._statistics[key]

    # -- checkpoints: what new images need, so medexp-predict works without the training data ------------------
    def state_dict(self) -> dict:
        counts, samples = self._label_counts("train")
        return {"mean": self.mean, "std": self.std, "image_shape": self.image_shape, "input_scale": self.input_scale,
                "train_class_counts": counts, "train_samples": samples}

    def load_state_dict(self, state: dict) -> None:
        self.mean, self.std, self.image_shape = state["mean"], state["std"], state["image_shape"]
        self.input_scale = state.get("input_scale")  # older checkpoints: by the dtype of each image, as they were
        if "train_class_counts" in state:
            self._saved_train_counts = (list(state["train_class_counts"]), int(state["train_samples"]))

    # -- prediction -------------------------------------------------------------------------------------------
    def prediction_loader(self, images: Sequence[str | np.ndarray], batch_size: int, resize: bool = False) -> DataLoader:
        """New images (paths, or ``(C, *spatial)`` arrays such as an .npz's) in batches of ``(images,)``,
        preprocessed as the test split (no augmentation); each must have the training images' shape, unless
        ``resize`` brings a 2D image there first (``fit_to_shape``)."""
        if self.mean is None:  # a checkpoint from before they were saved in it: read the training set again
            self.setup()
        expected = tuple(self.image_shape)
        standardised = []
        for index, image in enumerate(images):
            array = self.read_new_image(image) if isinstance(image, str) else image
            where = f"image {image}" if isinstance(image, str) else f"image {index} of the array"
            if array.dtype.kind == "f" and not np.isfinite(array).all():  # refused as training refuses them
                raise DataError(f"{where} holds NaN or infinite pixel values: fix or drop that image")
            if resize and len(expected) == 3 and tuple(array.shape) != expected:
                array = fit_to_shape(array, expected)
            if tuple(array.shape) != expected:
                size, axes = "x".join(str(s) for s in expected[1:]), "rows, columns"
                axes = axes if len(expected) == 3 else f"depth, {axes}"
                hint = ", or add resize=true to resample them to that size" if len(expected) == 3 else ""
                raise DataError(f"{where} has shape {tuple(array.shape)} (channels, {axes}) but the model was "
                                f"trained on {expected}: give {expected[0]}-channel {size} images{hint}")
            standardised.append(self.standardise(array[None]))
        return DataLoader(TensorDataset(torch.cat(standardised)), batch_size=batch_size)

    def read_new_image(self, path: str) -> np.ndarray:
        """One image file as the stored training images are, ``(C, *spatial)``; file-based sets also resize it."""
        from medexp.data.io import read_image

        return read_image(path).numpy()


def channel_statistics(images: np.ndarray, scale: float) -> tuple[list[float], list[float]]:
    """Per-channel mean and (unbiased) std of ``images / scale``, summed in float64 over chunks of the set: no
    float copy of the whole set exists at any time."""
    per_chunk = max(1, STATISTICS_CHUNK // max(1, int(np.prod(images.shape[1:]))))
    total = squares = 0.0
    for start in range(0, len(images), per_chunk):
        chunk = torch.from_numpy(np.ascontiguousarray(images[start : start + per_chunk])).double() / scale
        axes = [0, *range(2, chunk.ndim)]
        total = total + chunk.sum(dim=axes)
        squares = squares + chunk.square().sum(dim=axes)
    count = len(images) * int(np.prod(images.shape[2:]))
    mean = total / count
    variance = ((squares - count * mean.square()) / max(count - 1, 1)).clamp_min(0.0)
    return mean.float().tolist(), variance.sqrt().float().clamp_min(1e-6).tolist()


def resident(images: np.ndarray) -> torch.Tensor:
    """Stored images as a tensor in their own dtype, sharing the array's memory; unsigned types wider than 8 bits
    (16-bit PNG) widen to int32, which every torch operation and device supports (uint16 has few kernels)."""
    if images.dtype.kind == "u" and images.dtype.itemsize > 1:
        images = images.astype(np.int32)
    return torch.from_numpy(np.ascontiguousarray(images))


def balanced_weights(labels: np.ndarray) -> torch.Tensor:
    """One sampling weight per training image, 1 / (images of its class): each class is drawn equally often."""
    if labels.ndim == 2:
        raise ConfigError("data.sampler=balanced draws by class, but this set is multi-label (several labels per "
                          "image): use task.class_weights=balanced instead")
    counts = np.bincount(labels)
    return torch.from_numpy(1.0 / counts[labels]).double()


def fit_to_shape(image: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """A ``(C, H, W)`` image brought to ``shape`` in its own dtype and scale, as the training images were stored:
    colour to grey (ITU-R 601 luma; an alpha channel dropped) or grey to colour, then antialiased bilinear
    resampling (MedMNIST's small images are downsampled photographs and scans)."""
    channels, size = int(shape[0]), tuple(int(s) for s in shape[1:])
    pixels = torch.from_numpy(np.ascontiguousarray(image)).double()
    if pixels.shape[0] != channels:
        if channels == 1 and pixels.shape[0] in (3, 4):
            pixels = (pixels[:3] * torch.tensor([0.299, 0.587, 0.114], dtype=torch.float64).view(3, 1, 1)).sum(0, True)
        elif channels == 3 and pixels.shape[0] == 1:
            pixels = pixels.expand(3, -1, -1)
        else:
            return image  # refused by the caller with the shapes named
    pixels = torch.nn.functional.interpolate(pixels[None], size=size, mode="bilinear", antialias=True,
                                             align_corners=False)[0]
    if np.issubdtype(image.dtype, np.integer):
        info = np.iinfo(image.dtype)
        return pixels.round().clamp(info.min, info.max).numpy().astype(image.dtype)
    return pixels.numpy().astype(image.dtype)
