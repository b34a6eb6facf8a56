"""Box annotations as researchers keep them, read directly into detection datalist records (no conversion script).

Three datalist kinds beside MONAI's own detection datalist (``kind: json``, read by ``medexp.data.datalist``):

- ``voc``: a Pascal VOC folder: ``Annotations/<id>.xml`` (one per image: ``size``, ``object``s with ``name``,
  ``difficult`` and ``bndbox`` ``xmin, ymin, xmax, ymax`` in pixels, column first), ``JPEGImages/`` and
  ``ImageSets/Main/{train,val,test}.txt`` (the official split, when present; without it every annotation file is
  listed, unsplit). Objects marked ``difficult`` are dropped (``difficult: drop``, as VOC's evaluation ignores
  them: they are neither trained on nor scored, so a detection on one counts as a false positive) or kept as
  ordinary boxes (``difficult: keep``).
- ``coco``: a COCO JSON file: ``images`` (``id``, ``file_name``, ``width``, ``height``), ``annotations``
  (``image_id``, ``category_id``, ``bbox`` ``[x, y, w, h]`` in pixels, column first, ``iscrowd``) and
  ``categories`` (``id``, ``name``); crowd regions (``iscrowd: 1``) are left out, as COCO's evaluation does.
- ``masks``: any segmentation datalist (image + mask) whose masks become boxes, one per connected component
  (8-connected in 2D, 26 in 3D) of each mask value; the class is the mask value (value 1 -> label 0, the first
  foreground class), so a user with lesion masks gets a detection set.

Boxes stay in the format's own convention (``BOX_CONVENTIONS``: MONAI box mode and axis order), so the data
module reads them like a datalist's and ``medexp-predict`` writes boxes back the way the annotations give them.
VOC and COCO give class names; the data module turns them into label indices (``class_indices``). Images
without boxes are kept as negatives. Boxes with no area or reaching outside their image are dropped with one
warning line per datalist that counts them and names the files. VOC and COCO reading is pure Python; ``masks``
reads the masks (MONAI, scipy).
"""
from __future__ import annotations

import json
import logging
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from medexp.data.records import Record, file_stem
from medexp.errors import ConfigError, DataError

log = logging.getLogger(__name__)

# MONAI box mode and axis order of each kind's boxes (``data.box_mode``, ``data.box_axes``)
BOX_CONVENTIONS = {"voc": ("xyxy", "xy"), "coco": ("xywh", "xy"), "masks": ("xyzxyz", "array")}
DIFFICULT = ("drop", "keep")
VOC_SPLITS = ("train", "val", "test")
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")


def box_convention(spec: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> tuple[str, str] | None:
    """The box mode and axis order a datalist spec's boxes come in, when its kind fixes them (None otherwise);
    specs of kinds with different conventions cannot be mixed in one datalist."""
    specs = [spec] if isinstance(spec, Mapping) else list(spec)
    conventions = {BOX_CONVENTIONS[s.get("kind")] for s in specs if s.get("kind") in BOX_CONVENTIONS}
    if len(conventions) > 1:
        raise ConfigError(f"data.datalist mixes box formats {sorted(s.get('kind') for s in specs)} whose boxes "
                          "differ in convention: use one format per datalist")
    return conventions.pop() if conventions else None


def class_indices(records: Sequence[Record], class_names: Sequence[str] | None) -> list[str]:
    """Label names (VOC, COCO) -> indices into ``class_names``, in place; without ``class_names`` the names found,
    sorted. Returns the class names used. Records with integer labels are left as they are."""
    found = sorted({label for record in records for label in record["label"] if isinstance(label, str)})
    names = list(class_names) if class_names else found
    unknown = sorted(set(found) - set(names))
    if unknown:
        raise DataError(f"the datalist has boxes of class(es) {unknown} not in data.class_names {names}: add them "
                        "to data.class_names (and data.num_classes)")
    index = {name: i for i, name in enumerate(names)}
    for record in records:
        record["label"] = [index[label] if isinstance(label, str) else label for label in record["label"]]
    return names


class _Dropped:
    """Boxes left out of a datalist (no area, outside the image): counted per file, reported in one line."""

    def __init__(self, source: Path) -> None:
        self.source, self.files = source, {}

    def keep(self, box: Sequence[float], width: float, height: float, file: Path) -> bool:
        xmin, ymin, xmax, ymax = box
        if xmax > xmin and ymax > ymin and xmin >= 0 and ymin >= 0 and xmax <= width and ymax <= height:
            return True
        self.files[file.name] = self.files.get(file.name, 0) + 1
        return False

    def report(self) -> None:
        if self.files:
            names = ", ".join(f"{name} ({n})" for name, n in list(self.files.items())[:10])
            more = f" and {len(self.files) - 10} more files" if len(self.files) > 10 else ""
            log.warning("%s: dropped %d box(es) with no area or reaching outside the image: %s%s (fix those boxes "
                        "to train on them)", self.source, sum(self.files.values()), names, more)


# -- Pascal VOC ---------------------------------------------------------------------------------------------------
def voc_datalist(base: Path, root: str = ".", difficult: str = "drop", annotations: str = "Annotations",
                 images: str = "JPEGImages", image_sets: str = "ImageSets/Main") -> list[Record]:
    """Records of a Pascal VOC folder (``root``, relative to ``base``): boxes ``[xmin, ymin, xmax, ymax]`` as
    written, labels as class names, ``split`` from ``image_sets`` (train/val/test lists) when it has them."""
    if difficult not in DIFFICULT:
        raise ConfigError(f"datalist difficult={difficult!r} is unknown: use one of {list(DIFFICULT)}")
    folder = base / root
    xml_dir = folder / annotations
    if not xml_dir.is_dir():
        raise DataError(f"VOC folder {folder} has no {annotations}/ folder: point data.root at the folder holding "
                        "Annotations/, JPEGImages/ and ImageSets/")
    splits = _voc_splits(folder / image_sets)
    stems = list(splits) if splits else sorted(file_stem(p) for p in xml_dir.glob("*.xml"))
    if not stems:
        raise DataError(f"{xml_dir} holds no .xml annotation files: fix data.root")
    dropped = _Dropped(xml_dir)
    records = [_voc_record(xml_dir / f"{stem}.xml", folder / images, difficult, dropped) for stem in stems]
    for record in records:
        record["split"] = splits.get(record["case_id"]) if splits else None
    dropped.report()
    return records


def _voc_splits(folder: Path) -> dict[str, str]:
    """Image id -> split from ``train.txt``/``val.txt``/``test.txt`` (the ids each lists, first word per line)."""
    splits: dict[str, str] = {}
    for split in VOC_SPLITS:
        path = folder / f"{split}.txt"
        if not path.is_file():
            continue
        for line in path.read_text().splitlines():
            if not line.split():
                continue
            stem = line.split()[0]
            if stem in splits:
                raise DataError(f"image {stem} is listed in both {splits[stem]}.txt and {split}.txt in {folder}: "
                                "list each image in one split file")
            splits[stem] = split
    return splits


def _voc_record(path: Path, image_dir: Path, difficult: str, dropped: _Dropped) -> Record:
    if not path.is_file():
        raise DataError(f"annotation {path} does not exist but its id is in a split list: add the file or remove "
                        "the id from ImageSets")
    try:
        tree = ET.parse(path).getroot()
    except ET.ParseError as error:
        raise DataError(f"annotation {path} is not valid XML ({error}): fix or remove the file") from None
    image = _voc_image(tree, path, image_dir)
    width, height = _voc_size(tree, path, image)
    boxes, labels = [], []
    for obj in tree.iter("object"):
        name, bndbox = (obj.findtext("name") or "").strip(), obj.find("bndbox")
        if not name or bndbox is None:
            raise DataError(f"annotation {path} has an object without a name or bndbox: fix the file")
        if difficult == "drop" and (obj.findtext("difficult") or "0").strip() not in ("0", ""):
            continue
        try:
            box = [float(bndbox.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")]
        except (TypeError, ValueError):
            raise DataError(f"annotation {path} has a {name} box without numeric xmin, ymin, xmax, ymax: fix the "
                            "file") from None
        if dropped.keep(box, width, height, path):
            boxes.append(box)
            labels.append(name)
    stem = file_stem(path)
    return {"image": str(image), "box": boxes, "label": labels, "case_id": stem, "patient_id": stem}


def _voc_image(tree: ET.Element, path: Path, image_dir: Path) -> Path:
    """The image the annotation names (``filename``), else the one with the annotation's stem."""
    named = (tree.findtext("filename") or "").strip()
    candidates = [image_dir / named] if named else []
    candidates += [image_dir / f"{file_stem(path)}{suffix}" for suffix in _IMAGE_SUFFIXES]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise DataError(f"no image for annotation {path} in {image_dir} (looked for {named or file_stem(path) + '.*'}): "
                    "add the image or fix the annotation's filename")


def _voc_size(tree: ET.Element, path: Path, image: Path) -> tuple[int, int]:
    """Width and height from the annotation's ``size``, else from the image file's header."""
    try:
        width, height = int(tree.findtext("size/width")), int(tree.findtext("size/height"))
    except (TypeError, ValueError):
        width = height = 0
    if width > 0 and height > 0:
        return width, height
    from PIL import Image

    with Image.open(image) as opened:  # reads the header only
        return opened.size


# -- COCO ---------------------------------------------------------------------------------------------------------
def coco_datalist(base: Path, path: str, images: str | None = None) -> list[Record]:
    """Records of a COCO JSON file (``path``, relative to ``base``): boxes ``[x, y, w, h]`` as written, labels as
    category names; image files under ``images`` (relative to the JSON's folder; default that folder)."""
    path = base / path
    try:
        content = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise DataError(f"cannot read COCO file {path}: {str(error).splitlines()[0]}") from None
    if not isinstance(content, dict) or not all(isinstance(content.get(k), list) for k in ("images", "categories")):
        raise DataError(f"{path} is not a COCO detection file: it needs 'images' and 'categories' lists "
                        "(and 'annotations')")
    image_dir = path.parent / (images or ".")
    categories = {c["id"]: str(c["name"]) for c in content["categories"]}
    by_image: dict[Any, list[dict]] = {}
    for annotation in content.get("annotations", []):
        by_image.setdefault(annotation.get("image_id"), []).append(annotation)
    dropped, records = _Dropped(path), []
    for entry in content["images"]:
        file = image_dir / entry["file_name"]
        if not file.is_file():
            raise DataError(f"image {file} listed in {path} does not exist: fix the COCO file or its 'images' folder")
        boxes, labels = [], []
        for annotation in by_image.get(entry["id"], []):
            if annotation.get("iscrowd", 0):
                continue
            if annotation.get("category_id") not in categories:
                raise DataError(f"{path}: annotation {annotation.get('id')} has category_id "
                                f"{annotation.get('category_id')} missing from 'categories': fix the file")
            x, y, w, h = (float(v) for v in annotation["bbox"])
            if dropped.keep([x, y, x + w, y + h], entry["width"], entry["height"], file):
                boxes.append([x, y, w, h])
                labels.append(categories[annotation["category_id"]])
        stem = file_stem(file)
        records.append({"image": str(file), "box": boxes, "label": labels, "case_id": stem, "patient_id": stem,
                        "split": None})
    dropped.report()
    return records


def boxes_from_mask(mask: Any) -> tuple[list[list[int]], list[int]]:
    """Boxes ``[min_0, min_1, ..., max_0 + 1, max_1 + 1, ...]`` (array axes) around each connected component
    (diagonal neighbours connect) of each nonzero value ``v`` of ``mask``, labelled ``v - 1``."""
    import numpy as np
    from scipy import ndimage

    mask = np.asarray(mask)
    structure = ndimage.generate_binary_structure(mask.ndim, mask.ndim)
    boxes, labels = [], []
    for value in np.unique(mask):
        if value == 0:
            continue
        components, _ = ndimage.label(mask == value, structure=structure)
        for found in ndimage.find_objects(components):
            boxes.append([s.start for s in found] + [s.stop for s in found])
            labels.append(int(value) - 1)
    return boxes, labels


BOX_READERS: dict[str, Callable[..., list[Record]]] = {"voc": voc_datalist, "coco": coco_datalist}
