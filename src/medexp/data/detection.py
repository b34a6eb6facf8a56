"""``DetectionDataModule``: lesion detection (2D or 3D bounding boxes) from a datalist in MONAI's detection format.

A datalist JSON maps split names to cases, each an image path (relative to the file) with its boxes and labels::

    {"training": [{"image": "img/case1.nii.gz", "box": [[x, y, z, w, h, d], ...], "label": [0, ...]}, ...],
     "validation": [...], "test": [...]}

Boxes follow MONAI's convention: axis ``x`` is the loaded image's first spatial axis (rows of a PNG as medexp reads
it), in voxel (``box_coordinates: image``) or world (``world``, LUNA16-style) coordinates, in any MONAI box mode
(``data.box_mode``: ``xyzxyz``/``xyxy`` corners, ``cccwhd``/``ccwh`` centre and size, ...). 2D boxes given the
other way round (x = column, as in COCO) are read with ``box_axes: xy``. They become MONAI's standard mode
(corner-corner, voxel coordinates) at load time, are checked against the image there, and follow the image through
resampling (via world coordinates) and every augmentation. Boxes predicted on new images (``prediction_loader``)
go back the same way onto each image as read, in the datalist's convention (``boxes_on_input``).

Everything else is the segmentation data module's: readers, intensity standardisation and resampling
(``data.preprocessing``), patient-grouped splits, caching and the dataset fingerprint.

Batches hold a list per key, one entry per case: ``{"image": [(C, *spatial) float32], "box": [(N, 2 * dims)
float32], "label": [(N,) int64], "case_id": [...], "patient_id": [...]}``: box counts differ between images, and
MONAI's detector takes lists.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.apps.detection.transforms.array import AffineBox, ConvertBoxToStandardMode
from monai.apps.detection.transforms.dictionary import (
    BoxToMaskd,
    ClipBoxToImaged,
    MaskToBoxd,
    RandCropBoxByPosNegLabeld,
    RandFlipBoxd,
    RandRotateBox90d,
    RandZoomBoxd,
)
from monai.data import CacheDataset, DataLoader, Dataset, MetaTensor, PersistentDataset
from monai.data.box_utils import StandardMode, convert_box_mode, get_boxmode
from monai.data.utils import orientation_ras_lps
from monai.transforms import Compose, DeleteItemsd, EnsureTyped, MapTransform, SelectItemsd

from medexp.data.augmentation import AugmentationRecipe
from medexp.data.box_formats import box_convention, class_indices
from medexp.data.datalist import build_datalist
from medexp.data.io import LoadCased
from medexp.data.segmentation import SegmentationDataModule
from medexp.data.splits import split_from_config
from medexp.data.transforms import RandRecipeAffined, monai_augmentation, preprocessing_transforms
from medexp.errors import ConfigError, DataError

IMAGE, BOX, LABEL, BOX_MASK = "image", "box", "label", "box_mask"
BOX_AXES = ("array", "xy")
BOX_COORDINATES = ("image", "world")
_ITEM_KEYS = (IMAGE, BOX, LABEL, "case_id", "patient_id")


def check_box_record(record: Mapping[str, Any], spatial_dims: int, num_classes: int) -> None:
    """Box count, box length and label range of one datalist case, before any image is read."""
    where = f"case {record['case_id']} ({record['image']})"
    boxes, labels = record.get(BOX), record.get(LABEL)
    if not isinstance(boxes, list) or not isinstance(labels, list):
        raise DataError(f"{where} needs a 'box' list and a 'label' list (empty lists for an image without lesions)")
    if len(boxes) != len(labels):
        raise DataError(f"{where} has {len(boxes)} boxes but {len(labels)} labels: give one label per box")
    for box in boxes:
        if not isinstance(box, list) or len(box) != 2 * spatial_dims:
            raise DataError(
                f"{where} has box {box} but data.spatial_dims={spatial_dims} needs {2 * spatial_dims} numbers per "
                "box: fix the box or data.spatial_dims"
            )
    wrong = [label for label in labels if not isinstance(label, int) or not 0 <= label < num_classes]
    if wrong:
        raise DataError(
            f"{where} has label(s) {wrong} outside 0..{num_classes - 1}: labels count foreground classes from 0; "
            "fix the labels or data.num_classes"
        )


class LoadDetectionCased(LoadCased):
    """Load one case's image (as ``LoadCased`` does) and turn its boxes into MONAI's standard mode in voxel
    coordinates of that image (``box`` (N, 2 * dims) float32, ``label`` (N,) int64), checked to lie inside it."""

    def __init__(self, box_mode: str = "xyzxyz", box_axes: str = "array", box_coordinates: str = "image",
                 affine_lps_to_ras: bool = False) -> None:
        super().__init__(label_key=None, mask_keys=())
        if box_axes not in BOX_AXES:
            raise ConfigError(f"data.box_axes={box_axes!r} is unknown: use one of {list(BOX_AXES)}")
        if box_coordinates not in BOX_COORDINATES:
            raise ConfigError(f"data.box_coordinates={box_coordinates!r} is unknown: use one of {list(BOX_COORDINATES)}")
        try:  # MONAI checks the mode only when converting: look it up now
            self.box_mode = get_boxmode(box_mode)
        except ValueError:
            raise ConfigError(
                f"data.box_mode={box_mode!r} is not a MONAI box mode: use e.g. xyzxyz, cccwhd, xyzwhd (3D) or "
                "xyxy, ccwh, xywh (2D)"
            ) from None
        self.to_standard = ConvertBoxToStandardMode(mode=self.box_mode)
        self.box_axes = box_axes
        self.world_to_image = AffineBoxd(to_world=False, affine_lps_to_ras=affine_lps_to_ras) \
            if box_coordinates == "world" else None

    def to_datalist_convention(self, boxes: torch.Tensor) -> torch.Tensor:
        """Standard-mode boxes -> the datalist's box mode and axis order: loading's conversion undone."""
        return convert_box_mode(self._swap_xy(boxes), src_mode=StandardMode, dst_mode=self.box_mode)

    def _swap_xy(self, boxes: torch.Tensor) -> torch.Tensor:
        """Column-first 2D boxes (COCO, PIL) <-> the image's row-first axis order (the same swap both ways)."""
        if self.box_axes != "xy":
            return boxes
        if boxes.shape[1] != 4:
            raise ConfigError("data.box_axes=xy is for 2D images: 3D boxes follow the volume's axis order")
        return boxes[:, [1, 0, 3, 2]]

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        case = super().__call__(data)
        image, where = case[IMAGE], f"case {case.get('case_id')} ({data[IMAGE]})"
        dims = image.ndim - 1
        boxes = torch.as_tensor(np.asarray(case[BOX], dtype=np.float32).reshape(-1, 2 * dims))
        boxes = self._swap_xy(self.to_standard(boxes))
        case[BOX], case[LABEL] = boxes, torch.as_tensor(case[LABEL], dtype=torch.long)
        if self.world_to_image is not None:
            case = self.world_to_image(case)
        _check_inside(case[BOX], tuple(image.shape[1:]), where)
        return case


def _box_convention(spec: Any, box_mode: str | None, box_axes: str | None) -> tuple[str, str]:
    """The datalist's box mode and axis order: its format's own (VOC, COCO, masks), else the settings given (a MONAI
    datalist: MONAI's corner mode on the image's axes by default); settings that contradict a format are an error."""
    native = box_convention(spec)
    if native is None:
        return box_mode or "xyzxyz", box_axes or "array"
    if (box_mode or native[0], box_axes or native[1]) != native:
        raise ConfigError(f"data.box_mode={box_mode} / data.box_axes={box_axes} contradict the datalist's format, "
                          f"whose boxes are {native[0]} / {native[1]}: leave both null")
    return native


def box_affine(affine: Any, spatial_dims: int, affine_lps_to_ras: bool = False) -> torch.Tensor:
    """An image's voxel-to-world affine as MONAI's ``AffineBox`` takes it for boxes: a 2D image's 4x4 affine (MONAI
    keeps one for every image) cut to its in-plane 3x3 part; to LPS for world boxes in LPS (ITK, DICOM) against a
    RAS affine (nibabel)."""
    affine = torch.as_tensor(affine, dtype=torch.float64)
    keep = [*range(spatial_dims), affine.shape[0] - 1]
    affine = affine[keep][:, keep]
    return orientation_ras_lps(affine) if affine_lps_to_ras else affine


class AffineBoxd(MapTransform):
    """Boxes (standard mode) from voxel to world coordinates of the image, or back, by its affine (``box_affine``)."""

    def __init__(self, to_world: bool, affine_lps_to_ras: bool = False) -> None:
        super().__init__([BOX])
        self.to_world, self.affine_lps_to_ras = to_world, affine_lps_to_ras

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        case = dict(data)
        image = case[IMAGE]
        affine = box_affine(image.affine, image.ndim - 1, self.affine_lps_to_ras)
        case[BOX] = AffineBox()(case[BOX], affine=affine if self.to_world else torch.inverse(affine))
        return case


def _check_inside(boxes: torch.Tensor, shape: tuple[int, ...], where: str, tolerance: float = 0.5) -> None:
    """Boxes must have a positive size and lie in the image (to half a voxel: world coordinates round)."""
    dims = len(shape)
    for box in boxes.tolist():
        low, high = box[:dims], box[dims:]
        if any(h <= lo for lo, h in zip(low, high, strict=True)):
            raise DataError(f"{where}: box {box} (standard mode) has no extent on some axis: check data.box_mode")
        if any(lo < -tolerance for lo in low) or any(h > s + tolerance for h, s in zip(high, shape, strict=True)):
            raise DataError(
                f"{where}: box {[round(v, 1) for v in box]} (standard mode, voxels) lies outside the image of shape "
                f"{list(shape)}: check data.box_mode, data.box_axes and data.box_coordinates, or fix the box"
            )


def resampled_boxes(preprocessing: Mapping[str, Any] | None) -> list:
    """The segmentation preprocessing on the image, boxes kept on it through world coordinates: spacing and
    resize change the voxel grid but not the world position (MONAI updates the image's affine)."""
    return [
        AffineBoxd(to_world=True),
        *preprocessing_transforms(preprocessing, keys=(IMAGE,)),
        AffineBoxd(to_world=False),
        ClipBoxToImaged(BOX, LABEL, IMAGE, remove_empty=True),
    ]


def check_boxes_can_follow(recipe: AugmentationRecipe) -> None:
    """Detection takes every step of the recipe but an elastic deformation, which no box can follow."""
    if recipe.elastic_prob > 0 and len(recipe.elastic_sigma) > 0:
        raise ConfigError(
            "augmentation.elastic_prob > 0: an elastic deformation cannot keep boxes aligned; set "
            "augmentation.elastic_prob=0 for detection"
        )


def quarter_turns(rotate90_prob: float) -> list:
    """Random quarter turns in the first two axes with their boxes, per case: exact, and on a non-square image they
    change its shape (so the batched engine, which keeps shapes, leaves them to the loader)."""
    if rotate90_prob <= 0:
        return []
    return [RandRotateBox90d(IMAGE, BOX, IMAGE, prob=rotate90_prob, max_k=3, spatial_axes=(0, 1))]


def box_augmentation(recipe: AugmentationRecipe, spatial_dims: int, rotate90_prob: float = 0.0) -> list:
    """The augmentation recipe with boxes kept aligned, per case (``augment_on: loader``): zoom (``scale``, MONAI's
    ``RandZoomBoxd``), rotation and shift (``rotate_deg``, ``translate``: boxes drawn as ellipses, moved with the
    image, boxed again, as MONAI's LUNA16 recipe rotates), flips (``RandFlipBoxd``), quarter turns in the first two
    axes (``rotate90_prob``) and the recipe's intensity steps. Zoom and rotation/shift each fire with
    ``affine_prob``."""
    r = recipe
    check_boxes_can_follow(r)
    steps: list = []
    if r.affine_prob > 0 and tuple(r.scale) != (1.0, 1.0):
        steps += [
            RandZoomBoxd(IMAGE, BOX, IMAGE, prob=r.affine_prob, min_zoom=r.scale[0], max_zoom=r.scale[1],
                         mode="bilinear", padding_mode="constant", keep_size=True),
            ClipBoxToImaged(BOX, LABEL, IMAGE, remove_empty=True),  # zooming in pushes boxes over the border
        ]
    if r.affine_prob > 0 and (r.rotate_deg or r.translate):
        steps += [
            BoxToMaskd(BOX, BOX_MASK, LABEL, IMAGE, min_fg_label=0, ellipse_mask=True),
            RandRecipeAffined([IMAGE, BOX_MASK], replace(r, scale=(1.0, 1.0)), spatial_dims),
            MaskToBoxd(BOX, BOX_MASK, LABEL, min_fg_label=0),
            DeleteItemsd(BOX_MASK),
        ]
    if r.flip_prob > 0:
        steps += [RandFlipBoxd(IMAGE, BOX, IMAGE, prob=r.flip_prob, spatial_axis=axis) for axis in r.flip_axes]
    steps += quarter_turns(rotate90_prob)
    intensity_only = replace(r, affine_prob=0.0, flip_prob=0.0, elastic_prob=0.0)
    return steps + monai_augmentation(intensity_only, keys=(IMAGE,), spatial_dims=spatial_dims)


def detection_outputs() -> list:
    """Plain tensors, and exactly the case's own keys: MONAI's random box transforms record how to undo themselves
    under ``box_transforms`` only when they fire (``RandZoomBoxd``, ``RandRotateBox90d``), so without the selection
    the cases of one batch would differ in keys. Training augmentation is never undone."""
    return [
        SelectItemsd(_ITEM_KEYS, allow_missing_keys=True),
        EnsureTyped(IMAGE, dtype=torch.float32, track_meta=False),
        EnsureTyped(BOX, dtype=torch.float32, track_meta=False),
        EnsureTyped(LABEL, dtype=torch.long, track_meta=False),
    ]


def collate_cases(batch: Sequence[dict | list[dict]]) -> dict[str, list]:
    """A batch as lists per key, one entry per case: box counts and (in evaluation) image sizes differ. Patch
    sampling turns one image into a list of patches: those count as cases."""
    cases = [case for item in batch for case in (item if isinstance(item, list) else [item])]
    return {key: [case[key] for case in cases] for key in cases[0]}


class DetectionDataModule(SegmentationDataModule):
    """Detection datalist → split → (cached) MONAI pipelines with box transforms → lists of cases.

    The datalist is MONAI's detection datalist (``kind: json``) or a box format of ``medexp.data.box_formats``
    (``voc``, ``coco``, ``masks``), whose boxes come in the format's own convention.

    Args (beyond ``SegmentationDataModule``'s, whose mask options do not apply):
        box_mode: MONAI box mode of the datalist's boxes (``xyzxyz``, ``cccwhd``, ``xyxy``, ``ccwh``, ...); null =
            the box format's own (``xyzxyz`` for a MONAI datalist).
        box_axes: ``array`` (MONAI's order: the loaded image's axes) or ``xy`` (2D, column first as in COCO);
            null = the box format's own (``array`` for a MONAI datalist).
        box_coordinates: ``image`` (voxels) or ``world`` (the image affine's units, e.g. LUNA16's mm).
        affine_lps_to_ras: world boxes in LPS (ITK, DICOM) while the affine is RAS (NIfTI via nibabel).
        rotate90_prob: probability of a random quarter turn in the first two axes (training; per case in the
            loader with either ``augment_on``).
        augment_on: ``device`` (default): the recipe batched on the training device after transfer, boxes following
            (``medexp.data.batch_augment.BoxBatchAugmentation``), the loader only preparing and sampling patches;
            ``loader``: per case with MONAI's box transforms (``box_augmentation``).
        patch_size: train on patches that keep whole boxes, ``pos_neg_ratio`` of them centred on a box
            (``RandCropBoxByPosNegLabeld``, ``samples_per_image`` per image); null = whole images.
        num_classes: foreground classes (labels 0..num_classes-1), as MONAI's RetinaNet counts them.
        class_names: their names; for formats that name classes (VOC, COCO) also their order (label i is
            ``class_names[i]``); null = the names found, sorted.
    """

    task_kind = "detection"
    stores_cases = False

    def __init__(self, datalist: Mapping[str, Any] | Sequence[Mapping[str, Any]], box_mode: str | None = None,
                 box_axes: str | None = None, box_coordinates: str = "image", affine_lps_to_ras: bool = False,
                 rotate90_prob: float = 0.0, num_classes: int = 1, class_names: Sequence[str] | None = None,
                 **kwargs: Any) -> None:
        super().__init__(datalist=datalist, num_classes=num_classes, class_names=class_names, **kwargs)
        check_boxes_can_follow(self.recipe)
        self.given_class_names = list(class_names) if class_names else None
        box_mode, box_axes = _box_convention(self.datalist_spec, box_mode, box_axes)
        self.box_settings = {"box_mode": box_mode, "box_axes": box_axes, "box_coordinates": box_coordinates,
                             "affine_lps_to_ras": affine_lps_to_ras}
        self._loader()  # unknown box settings fail now, not at the first batch
        self.rotate90_prob = rotate90_prob
        self._check_patches()

    def _check_patches(self) -> None:
        """Patch settings fail now with the fix, not inside MONAI's crop at the first batch. A patch larger than
        an image is fine: it keeps that image's extent on the axis, and the detector pads the batch."""
        if self.patch_size is None:
            return
        if len(self.patch_size) != self.spatial_dims or min(self.patch_size) <= 0:
            raise ConfigError(f"data.patch_size={self.patch_size} needs {self.spatial_dims} positive sizes, one per "
                              f"spatial axis (data.spatial_dims={self.spatial_dims})")
        if self.pos_neg_ratio < 0 or self.samples_per_image < 1:
            raise ConfigError(f"data.pos_neg_ratio={self.pos_neg_ratio} must be >= 0 (patches centred on a box per "
                              f"patch centred away from them) and data.samples_per_image={self.samples_per_image} >= 1")

    def _loader(self) -> LoadDetectionCased:
        return LoadDetectionCased(**self.box_settings)

    def setup(self, stage: str | None = None) -> None:
        """List, check, split and (once) validate the cases: reading every image checks its boxes against it."""
        if self._split is not None:
            return
        records = build_datalist(self.datalist_spec, self.root)
        names = class_indices(records, self.given_class_names)
        if names:  # the format named its classes: they must be the model's
            if len(names) != self.num_classes:
                raise DataError(f"the datalist has {len(names)} box classes {names} but data.num_classes="
                                f"{self.num_classes}: set data.num_classes={len(names)}")
            self.class_names = names
        for record in records:
            check_box_record(record, self.spatial_dims, self.num_classes)
        self._split = split_from_config(records, self.split_config)
        if self.validate:
            self._inspect()

    def _dataset(self, name: str):
        if name not in self._datasets:
            items = [{k: r[k] for k in _ITEM_KEYS if k in r} for r in getattr(self.split, name)]
            steps = [self._loader(), *resampled_boxes(self.preprocessing)]
            if name == "train":
                steps += self._patch_sampling() + (
                    box_augmentation(self.recipe, self.spatial_dims, self.rotate90_prob)
                    if self.augment_on == "loader" else quarter_turns(self.rotate90_prob))
            self._datasets[name] = self._cached(items, Compose(steps + detection_outputs()), name)
        return self._datasets[name]

    def _patch_sampling(self) -> list:
        if self.patch_size is None:
            return []
        return [RandCropBoxByPosNegLabeld(
            IMAGE, BOX, LABEL, spatial_size=self.patch_size, pos=self.pos_neg_ratio, neg=1.0,
            num_samples=self.samples_per_image, whole_box=True, allow_smaller=True,
        )]

    def augment_batch(self, batch: dict) -> dict:
        """The recipe on a training batch (``augment_on: device``), all cases at once, boxes and labels following
        their images (``BoxBatchAugmentation``)."""
        if self.recipe.is_identity:
            return batch
        if self._augment is None:
            from medexp.data.batch_augment import BoxBatchAugmentation

            self._augment = BoxBatchAugmentation(self.recipe)
        images, boxes, labels = self._augment(batch[IMAGE], batch[BOX], batch[LABEL])
        return {**batch, IMAGE: images, BOX: boxes, LABEL: labels}

    def _dataloader(self, name: str, batch_size: int, shuffle: bool, **kwargs):
        return super()._dataloader(name, batch_size, shuffle, collate_fn=collate_cases, **kwargs)

    def _cached(self, items: list[dict], transform: Compose, name: str):
        """The deterministic prefix of ``transform`` kept in memory (deep-copied per sample: MONAI's box transforms
        record on the image what they did) or on disk (``PersistentDataset``: detection trains on whole images or
        box-centred crops of them, read whole)."""
        if self.cache == "memory":
            return CacheDataset(items, transform, num_workers=max(1, self.num_workers), progress=False)
        if self.cache == "disk":
            return PersistentDataset(items, transform, cache_dir=Path(self.cache_dir) / self._cache_key(name))
        return Dataset(items, transform)

    def _cache_key(self, name: str) -> str:
        """Cache folder per pipeline and settings (boxes included), so a changed setting never reuses stale files."""
        settings = [name == "train", self.preparation_settings(), self.box_settings]
        return ("train-" if name == "train" else "eval-") + hashlib.sha1(
            json.dumps(settings, sort_keys=True).encode()
        ).hexdigest()[:12]

    def prediction_loader(self, images: Sequence[str], batch_size: int = 1) -> DataLoader:
        """New image files preprocessed as the test split (keeping their affines, for ``boxes_on_input``), one per
        batch as in validation and test (the detector pads a batch to one size, which moves scores near the
        border), as lists of cases as the detector takes them; ``batch_size`` is not used."""
        dataset = super().prediction_loader(images).dataset
        return DataLoader(dataset, batch_size=1, collate_fn=collate_cases)

    def boxes_on_input(self, boxes: torch.Tensor, image: MetaTensor) -> dict[str, torch.Tensor]:
        """Standard-mode boxes detected on an image of ``prediction_loader`` -> the datalist's convention
        (``box_mode``, ``box_axes``) on that image as read, before its resampling or resizing: ``voxels``, the way
        training brought the datalist's boxes onto the preprocessed grid undone (through world coordinates, with
        the preprocessed affine and the affine it was read with; ``standard``: the same in MONAI's standard mode, for
        drawing), and where the reader knew the image's place (NIfTI, DICOM, ...) ``world`` (the affine's units, e.g. mm; LPS with ``affine_lps_to_ras``)."""
        dims = image.ndim - 1
        world = AffineBox()(boxes, affine=box_affine(image.affine, dims))
        file_affine = image.meta.get("original_affine")  # none for a photograph, which MONAI reads on the identity
        input_affine = box_affine(torch.eye(dims + 1) if file_affine is None else file_affine, dims)
        voxels = AffineBox()(world, affine=torch.inverse(input_affine))
        loader = self._loader()
        on_input = {"voxels": loader.to_datalist_convention(voxels), "standard": voxels}
        if file_affine is not None:
            to_world = box_affine(input_affine, dims, self.box_settings["affine_lps_to_ras"])
            on_input["world"] = loader.to_datalist_convention(AffineBox()(voxels, affine=to_world))
        return on_input

    def state_dict(self) -> dict[str, Any]:
        """Class names read from the data travel in the checkpoint: prediction needs no training data."""
        return {"class_names": list(self.class_names)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.class_names = list(state.get("class_names", self.class_names))

    def fingerprint(self) -> dict[str, Any]:
        return {**super().fingerprint(), "boxes_per_class": {name: self.class_counts(name) for name in
                                                             ("train", "val", "test")}}

    def class_counts(self, split: str = "train") -> list[int]:
        """Boxes per class in a set."""
        labels = [label for record in getattr(self.split, split) for label in record[LABEL]]
        return np.bincount(np.asarray(labels, dtype=np.int64), minlength=self.num_classes).tolist()
