"""``SegmentationDataModule``: a file-based segmentation dataset (2D or 3D) from a datalist, a patient-grouped
split and MONAI pipelines, all described by config (``conf/data/*.yaml``, instantiated by Hydra).

Train batches: ``{"image": (B, C, *patch) float32, "label": (B, 1, *patch) int64}`` with B = batch_size ×
samples_per_image, augmented on the device after transfer (``augment_on: device``) or per sample in the loader.
Val/test batches: one whole image each, in datalist order, ``{"image", "label", "fov" (1, 1, *spatial) bool when
known, "case_id", "patient_id"}``.

Each case is read and preprocessed once and kept compact (``medexp.data.transforms.CompactCased``): in memory
(``cache: memory``, shared with loader workers, never deep-copied per sample: the patch sampler copies only the
patch) or on disk, memory-mapped (``cache: disk``, ``medexp.data.case_store``), where every fold, sweep job and DDP
rank finds it prepared.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from monai.data import CacheDataset, DataLoader, Dataset
from monai.transforms import Compose

from medexp.data.augmentation import AugmentationRecipe
from medexp.data.base import MedexpDataModule
from medexp.data.case_store import CaseStore, OpenStoredCased, read_summary
from medexp.data.datalist import build_datalist
from medexp.data.io import (
    CaseSummary,
    LoadCased,
    check_case_layout,
    dataset_fingerprint,
    inspect_cases,
    summarise_case,
)
from medexp.data.sharding import evaluation_sampler, rank_seed
from medexp.data.splits import Split, split_from_config
from medexp.data.transforms import case_preparation, output_transforms, prediction_pipeline, training_steps
from medexp.data.workers import available_cores, loader_workers, worker_context
from medexp.errors import ConfigError, DataError

CACHE_MODES = ("none", "memory", "disk")
AUGMENT_ON = ("device", "loader")
_ITEM_KEYS = ("image", "label", "fov", "case_id", "patient_id")


def _plain(value: Any) -> Any:
    """Hydra's DictConfig/ListConfig → dict/list, so hyperparameters pickle and load with ``weights_only``."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        return [_plain(v) for v in value]
    return value


class SegmentationDataModule(MedexpDataModule):
    """Datalist → split → (cached) MONAI pipelines → DataLoaders; validates every case once in ``setup``.

    Args:
        datalist: spec for ``medexp.data.datalist.build_datalist`` (``kind`` folder|csv|json|decathlon + options),
            or a list of such specs.
        root: folder that relative datalist paths start from.
        split: options of ``medexp.data.splits.make_split`` (kind, ratios, seed, fold, num_folds, patients...).
        preprocessing: options of ``medexp.data.transforms.preprocessing_transforms``.
        patch_size / samples_per_image / pos_neg_ratio / sampler: training patches (None = whole images).
        augmentation: an ``AugmentationRecipe`` mapping (None = no augmentation).
        augment_on: ``device``: batched on the training device after transfer (``BatchAugmentation``, one random
            draw per batch; an elastic deformation stays per sample in the loader); ``loader``: per sample in the
            loader (MONAI transforms).
        num_workers: loader processes per training process, or ``auto`` (``medexp.data.workers.loader_workers``).
        cache: "none", "memory" (CacheDataset) or "disk" (memory-mapped case folders under ``cache_dir``,
            ``medexp.data.case_store``).
        label_values: stored mask value of each class, when masks do not hold 0..K-1 (0/255 masks need none).
        mask_threshold: binarise every mask: foreground where a channel exceeds this stored value; None: each
            mask's encoding is found per file (``medexp.data.io.LoadCased``).
        fov_threshold: derive a field-of-view mask for val/test as "image channel mean > threshold"; a datalist
            ``fov`` file is used when there is one and no threshold.
        validate: read every case in ``setup`` to check channels, shapes and label range (and fingerprint them).
        class_names / name: for reports and the fingerprint.
        circumference: a table of each image's pixel size and reference head circumference (HC18), for the
            segmentation task's ``hc_error_mm`` (``medexp.tasks.circumference``).
        fold / num_folds: when ``fold`` is set, the split becomes k-fold (``kind: kfold``) over the non-test
            patients, keeping the split's test set: ``-m data.fold=0,1,2,3,4`` runs every fold.
        seed: seeds the training DataLoader's generator, which fixes the shuffle order and (through MONAI's
            DataLoader, in the main process or the workers) the patch sampling and augmentation; the split has its own
            ``split.seed`` so it stays fixed across training seeds. Under DDP each rank offsets it
            (``medexp.data.sharding.rank_seed``) and evaluates its own share of the cases, each case once.
    """

    task_kind = "segmentation"
    stores_cases = True  # cache=disk keeps prepared cases in a ``CaseStore`` (detection keeps its own cache)

    def __init__(
        self,
        datalist: Mapping[str, Any] | Sequence[Mapping[str, Any]],
        root: str | None = None,
        split: Mapping[str, Any] | None = None,
        preprocessing: Mapping[str, Any] | None = None,
        patch_size: Sequence[int] | None = None,
        samples_per_image: int = 1,
        pos_neg_ratio: float = 1.0,
        sampler: str = "posneg",
        augmentation: Mapping[str, Any] | None = None,
        augment_on: str = "device",
        batch_size: int = 2,
        num_workers: int | str = 0,
        cache: str = "none",
        cache_dir: str | None = None,
        num_classes: int = 2,
        in_channels: int = 1,
        spatial_dims: int = 2,
        label_values: Sequence[float] | None = None,
        mask_threshold: float | None = None,
        fov_threshold: float | None = None,
        validate: bool = True,
        class_names: Sequence[str] | None = None,
        name: str | None = None,
        seed: int = 0,
        fold: int | None = None,
        num_folds: int = 5,
        circumference: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if cache not in CACHE_MODES:
            raise ConfigError(f"data.cache={cache!r} is unknown: use one of {list(CACHE_MODES)}")
        if cache == "disk" and not cache_dir:
            raise ConfigError("data.cache=disk needs data.cache_dir (a folder for the cached preprocessed cases)")
        if augment_on not in AUGMENT_ON:
            raise ConfigError(f"data.augment_on={augment_on!r} is unknown: use one of {list(AUGMENT_ON)}")
        loader_workers(num_workers)  # a bad value fails now, not when the first loader starts
        self.datalist_spec, self.root = _plain(datalist), root
        self.split_config, self.preprocessing = _plain(split) or {}, _plain(preprocessing) or {}
        channels = self.preprocessing.get("channels")
        if channels and len(channels) != in_channels:
            raise ConfigError(f"data.preprocessing.channels={channels} keeps {len(channels)} channel(s) but "
                              f"data.in_channels={in_channels}: make them agree")
        if fold is not None:  # `-m data.fold=0,1,2,3,4`: k-fold cross-validation over the non-test patients
            self.split_config = {**self.split_config, "kind": "kfold", "fold": fold, "num_folds": num_folds}
        self.patch_size = None if patch_size is None else [int(s) for s in patch_size]
        self.samples_per_image, self.pos_neg_ratio, self.sampler = samples_per_image, pos_neg_ratio, sampler
        self.recipe = AugmentationRecipe.from_config(_plain(augmentation))
        self.augment_on = augment_on
        self.batch_size, self.num_workers_setting = batch_size, num_workers
        self.cache, self.cache_dir = cache, cache_dir
        self.num_classes, self.in_channels, self.spatial_dims = num_classes, in_channels, spatial_dims
        self.label_values, self.mask_threshold = _plain(label_values), mask_threshold
        self.fov_threshold, self.validate = fov_threshold, validate
        self.class_names = list(class_names) if class_names else [str(i) for i in range(num_classes)]
        self.name, self.seed = name, seed
        self.circumference = _plain(circumference)  # read by the segmentation task (task.circumference)
        self._split: Split | None = None
        self._summaries: dict[str, CaseSummary] | None = None
        self._datasets: dict[str, Dataset] = {}
        self._stored: dict[str, Path] = {}  # case id -> its folder in the disk cache
        self._augment = None

    # ----------------------------------------------------------------------------------------------- setup
    def _loader(self) -> LoadCased:
        return LoadCased(num_classes=self.num_classes, label_values=self.label_values,
                         mask_threshold=self.mask_threshold)

    def setup(self, stage: str | None = None) -> None:
        """List, split and (once) validate the cases; datasets are built on first use of each loader."""
        if self._split is not None:
            return
        records = build_datalist(self.datalist_spec, self.root)
        unlabelled = [r["image"] for r in records if not isinstance(r.get("label"), str)]
        if unlabelled:
            raise DataError(
                f"image {unlabelled[0]} has no mask path ({len(unlabelled)} such): give every case a label file"
            )
        self._split = split_from_config(records, self.split_config)
        if self.validate:
            self._inspect()

    @property
    def num_workers(self) -> int:
        """Loader processes per training process (``auto`` sized to the cores each process of the trainer gets)."""
        processes = self.trainer.num_devices if self.trainer is not None else 1
        return loader_workers(self.num_workers_setting, processes)

    def _inspect(self) -> None:
        split = self.split
        records = split.train + split.val + split.test
        if self.cache == "disk" and self.stores_cases:  # summaries kept in the store: no image read when all are there
            entries = self._store_entries(records)
            summaries = [read_summary(entries[r["case_id"]], r["case_id"]) for r in records]
            for record, summary in zip(records, summaries, strict=True):
                check_case_layout(summary, f"image {record['image']}", self.in_channels, self.spatial_dims,
                                  self.preprocessing.get("channels"))
        else:
            summaries = inspect_cases(
                records, self._loader(), self.in_channels, self.spatial_dims, workers=max(1, self.num_workers),
                channels=self.preprocessing.get("channels"),
            )
        self._summaries = {summary.case_id: summary for summary in summaries}
        for name in ("train", "val", "test"):
            cases = [summary for summary in self._summaries_of(name) if summary.class_counts.size]  # with masks
            if cases and not any(summary.class_counts[1:].any() for summary in cases):
                raise DataError(
                    f"data={self.name}: the {name} split's {len(cases)} masks hold no foreground at all (every "
                    "pixel read as class 0): check how the masks store their classes (data.label_values = the "
                    "stored value of each class, data.mask_threshold for lossy masks) and data.num_classes")

    @property
    def split(self) -> Split:
        if self._split is None:
            self.setup()
        return self._split

    # ------------------------------------------------------------------------------------------ datasets
    def _dataset(self, name: str) -> Dataset:
        """The split's cases: prepared once (``case_preparation``, kept as ``cache`` says), then each epoch's random
        steps (training) or the conversion to tensors (evaluation) on every access."""
        if name not in self._datasets:
            records = getattr(self.split, name)
            loader = self._loader()
            if name == "train":
                keys = (loader.image_key, loader.label_key)
                recipe = self.recipe.elastic_only if self.augment_on == "device" else self.recipe
                steps = training_steps(keys, recipe, self.spatial_dims, self.patch_size, self.samples_per_image,
                                       self.pos_neg_ratio, self.sampler)
            else:
                keys = (loader.image_key, loader.label_key, *loader.mask_keys)
                steps = output_transforms(keys)
            # training reads no field of view: its cases carry none, so their patches collate
            item_keys = [k for k in _ITEM_KEYS if name != "train" or k not in loader.mask_keys]
            items = [{k: r[k] for k in item_keys if k in r} for r in records]
            if self.cache == "disk":
                entries = self._store_entries(records)
                stored = [{"stored": str(entries[item["case_id"]]), **{k: item[k] for k in ("case_id", "patient_id")
                                                                       if k in item}} for item in items]
                dataset = Dataset(stored, Compose([OpenStoredCased(keys, mapped=name == "train"), *steps]))
            else:
                prepared = Compose(case_preparation(loader, self.preprocessing,
                                                    None if name == "train" else self.fov_threshold))
                # the patch sampler copies only the patch (and evaluation converts to new tensors): nothing that
                # follows the cache changes a cached case, so MONAI's per-sample deep copy of it is not needed
                cases = (CacheDataset(items, prepared, num_workers=max(1, self.num_workers), progress=False,
                                      copy_cache=False)
                         if self.cache == "memory" else Dataset(items, prepared))
                dataset = Dataset(cases, Compose(steps))
            self._datasets[name] = dataset
        return self._datasets[name]

    def preparation_settings(self) -> dict[str, Any]:
        """What changes a prepared case: cached cases are found again under these settings only."""
        return {"preprocessing": self.preprocessing, "num_classes": self.num_classes,
                "label_values": self.label_values, "mask_threshold": self.mask_threshold,
                "fov_threshold": self.fov_threshold}

    def _store_entries(self, records: Sequence[Mapping[str, Any]]) -> dict[str, Path]:
        """Each record's case folder in the disk cache, preparing (in parallel) the cases not stored yet."""
        missing = [r for r in records if r["case_id"] not in self._stored]
        if missing:
            loader = self._loader()
            _, *after_loading = case_preparation(loader, self.preprocessing, self.fov_threshold)
            prepare = Compose(after_loading)

            def prepare_case(record: Mapping[str, Any]):
                raw = loader(record)  # read once: summarised and checked as stored, then prepared
                summary = summarise_case(record, raw, loader)
                check_case_layout(summary, f"image {record['image']}", self.in_channels, self.spatial_dims,
                                  self.preprocessing.get("channels"))
                case = prepare(raw)
                arrays = {key: case[key].numpy() for key in ("image", "label", *loader.mask_keys, "fg_indices")
                          if key in case}
                return arrays, summary

            trainer = self.trainer
            entries = CaseStore(self.cache_dir, self.preparation_settings()).build(
                missing, prepare_case, workers=available_cores(),  # nothing else runs before the first step
                rank=trainer.global_rank if trainer is not None else 0,
                world_size=trainer.world_size if trainer is not None else 1)
            self._stored.update({r["case_id"]: entry for r, entry in zip(missing, entries, strict=True)})
        return {r["case_id"]: self._stored[r["case_id"]] for r in records}

    def _dataloader(self, name: str, batch_size: int, shuffle: bool, **kwargs) -> DataLoader:
        dataset = self._dataset(name)
        if name != "train":  # under DDP each rank evaluates its share, each case once
            kwargs.setdefault("sampler", evaluation_sampler(dataset, self.trainer, name))
        workers = self.num_workers
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            num_workers=workers,
            persistent_workers=workers > 0,
            multiprocessing_context=worker_context() if workers > 0 else None,
            pin_memory=torch.cuda.is_available(),
            **kwargs,
        )

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        """Training batches augmented on their device, all samples at once (``augment_on: device``)."""
        if self.augment_on != "device" or self.trainer is None or not self.trainer.training:
            return batch
        return self.augment_batch(batch)

    def augment_batch(self, batch: dict) -> dict:
        """The recipe (but an elastic deformation, done per sample in the loader) on a training batch: image
        bilinear, label nearest, one random draw for the whole batch."""
        recipe = self.recipe.without_elastic
        if recipe.is_identity:
            return batch
        if self._augment is None:
            from medexp.data.batch_augment import BatchAugmentation

            self._augment = BatchAugmentation(recipe)
        images, labels = self._augment(batch["image"], batch["label"])
        return {**batch, "image": images, "label": labels}

    def train_dataloader(self) -> DataLoader:
        rank = self.trainer.global_rank if self.trainer is not None else 0
        generator = torch.Generator().manual_seed(rank_seed(self.seed, rank))
        return self._dataloader("train", self.batch_size, shuffle=True, generator=generator)

    def val_dataloader(self) -> DataLoader:
        return self._dataloader("val", 1, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        if not self.split.test:
            raise DataError(f"data={self.name} has no test cases: run with test=false (the validation split scores "
                            "the chosen checkpoint), or set data.split.test_ratio or test_patients")
        return self._dataloader("test", 1, shuffle=False)

    def prediction_loader(self, images: Sequence[str], batch_size: int = 1) -> DataLoader:
        """New image files (no masks), preprocessed as the test split, one whole image per batch as in validation
        and test (sizes differ; ``batch_size`` is not used); the dataset's ``transform`` can invert them."""
        if not all(isinstance(image, str) for image in images):
            raise DataError("this model takes image files (NIfTI, DICOM, PNG, ...), not .npz arrays: "
                            "give inputs=<an image, a folder of images or a glob>")
        pipeline = prediction_pipeline(LoadCased(label_key=None, mask_keys=()), self.preprocessing,
                                       self.in_channels, self.spatial_dims)
        # in this process: a worker would turn a DataError naming the bad file into a multi-line traceback
        return DataLoader(Dataset([{"image": image} for image in images], pipeline), batch_size=1)

    # --------------------------------------------------------------------------------------- artifacts
    def split_json(self) -> str:
        """The split (case and patient ids per set, settings) as JSON, for an MLflow artifact beside the run."""
        return self.split.to_json()

    def fingerprint(self) -> dict[str, Any]:
        """Cases per set, a hash of the case ids per set (portable across machines, unlike paths), and
        shape/spacing/intensity/class statistics of the training cases as stored on disk (before preprocessing)."""
        sets = {name: [r["case_id"] for r in getattr(self.split, name)] for name in ("train", "val", "test")}
        return {
            "dataset": self.name,
            "class_names": self.class_names,
            "cases_per_split": {name: len(ids) for name, ids in sets.items()},
            "split_sha256": hashlib.sha256(json.dumps(sets).encode()).hexdigest(),
            **dataset_fingerprint(self._summaries_of("train")),
        }

    def sample_count(self, split: str = "train") -> int:
        return len(getattr(self.split, split))

    def class_counts(self, split: str = "train") -> list[int]:
        """Voxels per class in a set (for ``task.class_weights=balanced``)."""
        counts = [0] * self.num_classes
        for summary in self._summaries_of(split):
            for index, count in enumerate(summary.class_counts[: self.num_classes]):
                counts[index] += int(count)
        return counts

    def _summaries_of(self, split: str) -> list[CaseSummary]:
        if self._summaries is None:
            self._inspect()
        return [self._summaries[record["case_id"]] for record in getattr(self.split, split)]
