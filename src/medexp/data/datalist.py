"""Datalists: the list of cases a file-based dataset is made of, read from a folder, a CSV/JSON file or a
Medical Segmentation Decathlon ``dataset.json``.

A record is a plain dict, so it survives pickling into DataLoader workers and JSON logging::

    {"image": "/abs/path.png", "label": "/abs/mask.png" | 3 (optional), "case_id": "Image_01L",
     "patient_id": "01", "split": "train" | "val" | "test" | None, ...extra keys such as "fov"}

Pure Python on purpose (no torch/monai): listing a dataset must stay fast and importable anywhere.
Every problem is a one-line ``DataError`` naming the path or pattern and the fix.
"""

from __future__ import annotations

import csv
import glob
import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from medexp.data.box_formats import BOX_READERS, boxes_from_mask
from medexp.data.records import Record, file_stem
from medexp.errors import DataError

SPLIT_NAMES = ("train", "val", "test")
_SPLIT_ALIASES = {
    "train": "train", "training": "train", "tr": "train",
    "val": "val", "valid": "val", "validation": "val",
    "test": "test", "testing": "test", "ts": "test",
}  # fmt: skip
_PATH_KEYS = ("image", "label", "fov")  # datalist columns that hold file paths (resolved against the file's folder)


def build_datalist(
    spec: Mapping[str, Any] | Sequence[Mapping[str, Any]], root: str | Path | None = None
) -> list[Record]:
    """Read the records a config spec describes; a list of specs is concatenated (e.g. DRIVE training + test).

    Every spec has ``kind`` (folder | csv | json | decathlon, or a box format of ``medexp.data.box_formats``:
    voc | coco | masks) plus that kind's options, and may add
    ``patient_regex`` (patient id = first group of this regex searched in the image file name), ``split``
    (the official split of all its records) and ``folds_file`` (an nnU-Net ``splits_final.json`` giving each
    record its ``fold``). Relative paths are resolved against ``root``.
    """
    specs = [spec] if isinstance(spec, Mapping) else list(spec)
    records = [rec for one in specs for rec in _read_one(one, root)]
    if not records:
        raise DataError(f"datalist {dict(specs[0]) if specs else specs} lists no cases: check its paths and patterns")
    ids = [r["case_id"] for r in records]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise DataError(f"case ids {duplicates[:5]} appear twice in the datalist: give each image a unique file name")
    return records


def _read_one(spec: Mapping[str, Any], root: str | Path | None) -> list[Record]:
    options = dict(spec)
    kind = options.pop("kind", None)
    patient_regex = options.pop("patient_regex", None)
    split = options.pop("split", None)
    folds_file = options.pop("folds_file", None)
    box_readers = {**BOX_READERS, "masks": mask_datalist}  # box annotations: VOC, COCO, boxes from masks
    readers = {
        "folder": folder_datalist,
        "csv": table_datalist,
        "json": table_datalist,
        "decathlon": decathlon_datalist,
        **box_readers,
    }
    if kind not in readers:
        raise DataError(f"datalist kind {kind!r} is unknown: use one of {sorted(readers)}")
    base = Path(root) if root is not None else Path.cwd()
    if kind in box_readers:  # they resolve their own paths (a folder, a file, a wrapped datalist) against base
        options["base"] = base
    elif kind == "folder":
        options["root"] = base / options.get("root", ".")
    else:
        if "path" not in options:
            raise DataError(f"datalist kind {kind!r} needs a 'path' to its file")
        options["path"] = base / options["path"]
    records = readers[kind](**options)
    if patient_regex is not None:
        for record in records:
            record["patient_id"] = patient_from_name(Path(record["image"]).name, patient_regex)
    if split is not None:
        for record in records:
            record["split"] = normalise_split(split, where="datalist spec")
    if folds_file is not None:
        assign_nnunet_folds(records, base / folds_file)
    return records


def folder_datalist(
    root: str | Path,
    image_glob: str,
    label_pattern: str | None = None,
    extra_patterns: Mapping[str, str] | None = None,
    key_regex: str | None = None,
    label_from_dir: bool = False,
    classes: Sequence[str] | None = None,
) -> list[Record]:
    """Pair each image matched by ``image_glob`` (relative to ``root``) with its mask and other files.

    ``label_pattern`` and each ``extra_patterns`` value are templates relative to ``root``, formatted with the
    image's ``{stem}``, ``{name}``, ``{dir}`` (its folder relative to root) and the named groups of ``key_regex``
    searched in the image file name; they may contain glob wildcards but must match exactly one file.
    CHASEDB1: ``image_glob="Image_*.jpg", label_pattern="{stem}_1stHO.png"``. DRIVE: ``image_glob="images/*.tif",
    key_regex="(?P<id>\\d+)_", label_pattern="1st_manual/{id}_manual1.gif", extra_patterns={"fov": "mask/{id}_*mask.gif"}``.
    With ``label_from_dir`` the label is the class index of the image's parent folder (classification from folders).
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"datalist folder {root} does not exist: fix data.root or the datalist's root")
    images = sorted(Path(p) for p in glob.glob(str(root / image_glob), recursive=True) if Path(p).is_file())
    if not images:
        raise DataError(f"no image matches {root / image_glob}: fix image_glob or data.root")
    patterns = {**({"label": label_pattern} if label_pattern else {}), **dict(extra_patterns or {})}
    class_index = _class_index(images, classes) if label_from_dir else {}
    records = []
    for image in images:
        fields = _name_fields(image, root, key_regex)
        record: Record = {
            "image": str(image),
            "case_id": fields["stem"],
            "patient_id": fields.get("id", fields["stem"]),
        }
        record.update({key: _resolve_template(root, template, fields, image) for key, template in patterns.items()})
        if label_from_dir:
            record["label"] = _class_of(image, class_index)
        record["split"] = None
        records.append(record)
    return records


def _name_fields(image: Path, root: Path, key_regex: str | None) -> dict[str, str]:
    fields = {"stem": file_stem(image), "name": image.name, "dir": str(image.parent.relative_to(root))}
    if key_regex is not None:
        match = re.search(key_regex, image.name)
        if match is None:
            raise DataError(
                f"key_regex {key_regex!r} does not match image file name {image}: fix key_regex or image_glob"
            )
        fields.update(match.groupdict())
    return fields


def _resolve_template(root: Path, template: str, fields: Mapping[str, str], image: Path) -> str:
    try:
        pattern = str(root / template.format(**fields))
    except KeyError as missing:
        raise DataError(
            f"pattern {template!r} uses field {missing} that is not defined: use {{stem}}, {{name}}, {{dir}} "
            "or a named group of key_regex"
        ) from None
    matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else ([pattern] if Path(pattern).is_file() else [])
    if len(matches) != 1:
        found = "no file" if not matches else f"{len(matches)} files"
        raise DataError(f"{found} at {pattern} for image {image}: add the missing file or fix the pattern {template!r}")
    return matches[0]


def _class_index(images: Sequence[Path], classes: Sequence[str] | None) -> dict[str, int]:
    names = list(classes) if classes is not None else sorted({image.parent.name for image in images})
    return {name: index for index, name in enumerate(names)}


def _class_of(image: Path, class_index: Mapping[str, int]) -> int:
    if image.parent.name not in class_index:
        raise DataError(f"folder {image.parent} of {image} is not one of classes {list(class_index)}: fix classes")
    return class_index[image.parent.name]


def table_datalist(path: str | Path, path_keys: Sequence[str] = _PATH_KEYS) -> list[Record]:
    """Read a CSV (header row) or JSON (list of records, or ``{"train": [...], "val": [...], "test": [...]}``) datalist.

    Columns: ``image``, ``label`` or ``mask`` (a path, or an integer class), optional ``patient_id``, optional
    ``split``; other columns are kept. Relative paths in ``path_keys`` are resolved against the file's folder.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"datalist file {path} does not exist: fix the datalist path")
    rows = _read_csv(path) if path.suffix.lower() == ".csv" else _read_json_rows(path)
    return [_table_record(row, path, index, path_keys) for index, row in enumerate(rows)]


def _read_csv(path: Path) -> list[dict[str, Any]]:
    with open(path, newline="") as handle:
        return [
            {k.strip(): (v.strip() if isinstance(v, str) else v) for k, v in row.items() if k}
            for row in csv.DictReader(handle)
        ]


def _read_json_rows(path: Path) -> list[dict[str, Any]]:
    content = _load_json(path)
    if isinstance(content, list):
        return content
    if isinstance(content, dict) and set(content) <= set(_SPLIT_ALIASES):
        return [{**row, "split": split} for split, rows in content.items() for row in rows]
    raise DataError(f"datalist {path} must hold a list of records or a mapping from split names to lists")


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise DataError(f"cannot read datalist {path}: {error}") from None


def _table_record(row: Mapping[str, Any], path: Path, index: int, path_keys: Sequence[str]) -> Record:
    where = f"{path} row {index + 1}"
    if not isinstance(row, Mapping) or not row.get("image"):
        raise DataError(f"{where} has no 'image' entry: every row needs an image path")
    record: Record = {key: value for key, value in row.items() if value not in ("", None)}
    if "mask" in record and "label" not in record:
        record["label"] = record.pop("mask")
    if "label" in record:
        record["label"] = _int_or_same(record["label"])
    for key in path_keys:
        if isinstance(record.get(key), str):
            record[key] = _existing_path(path.parent, record[key], where)
    record["case_id"] = str(record.get("case_id", file_stem(Path(record["image"]))))
    record["patient_id"] = str(record.get("patient_id", record["case_id"]))
    record["split"] = normalise_split(record.get("split"), where=where)
    return record


def _int_or_same(value: Any) -> Any:
    """Classification labels arrive as '3' from a CSV; paths stay strings."""
    if isinstance(value, str) and re.fullmatch(r"-?\d+", value):
        return int(value)
    return value


def _existing_path(base: Path, value: str, where: str) -> str:
    """A listed file, relative to the datalist's folder unless absolute. A relative path may not climb out of that
    folder (``../../etc/x``): a datalist from elsewhere must not reach files its folder does not hold unseen."""
    resolved = Path(value) if Path(value).is_absolute() else (base / value)
    if not Path(value).is_absolute() and not Path(os.path.normpath(resolved)).is_relative_to(os.path.normpath(base)):
        raise DataError(f"{where} lists {value}, which leaves the datalist's folder {base}: give it as an absolute "
                        "path or keep the files under that folder")
    if not resolved.exists():
        raise DataError(f"file {resolved} listed in {where} does not exist: fix the path or remove the row")
    return str(resolved.resolve())


def decathlon_datalist(path: str | Path, include_test: bool = False) -> list[Record]:
    """Read a Medical Segmentation Decathlon ``dataset.json``: its ``training`` cases (no official val split).

    The ``test`` cases have no labels, so they are listed (split "test", no label) only with ``include_test``.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"decathlon dataset.json {path} does not exist: fix the datalist path")
    content = _load_json(path)
    if not isinstance(content, dict) or "training" not in content:
        raise DataError(f"{path} has no 'training' list: is it a Medical Segmentation Decathlon dataset.json?")
    rows = [dict(row) for row in content["training"]]
    if include_test:
        rows += [
            {"image": row, "split": "test"} if isinstance(row, str) else {**row, "split": "test"}
            for row in content.get("test", [])
        ]
    return [_table_record(row, path, index, _PATH_KEYS) for index, row in enumerate(rows)]


def assign_nnunet_folds(records: Sequence[Record], path: str | Path) -> None:
    """Give each record the ``fold`` whose ``val`` list names it in nnU-Net's ``splits_final.json`` (a list with one
    ``{"train": [ids], "val": [ids]}`` per fold). nnU-Net names a case without the ``_0000`` channel suffix of its
    image files, so ``hippocampus_367`` matches case ``hippocampus_367_0000`` too. Ids the datalist lacks are
    ignored (a datalist may be a subset); a datalist case in no ``val`` list, or in two, is an error."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"folds file {path} does not exist: fix the datalist's folds_file")
    content = _load_json(path)
    if not isinstance(content, list) or not all(isinstance(f, Mapping) and isinstance(f.get("val"), list)
                                                for f in content):
        raise DataError(f"{path} is not an nnU-Net splits_final.json: expected a list of "
                        '{"train": [ids], "val": [ids]}, one per fold')
    fold_of: dict[str, int] = {}
    for fold, entry in enumerate(content):
        for case in entry["val"]:
            if fold_of.setdefault(str(case), fold) != fold:
                raise DataError(f"case {case} is in the val list of folds {fold_of[str(case)]} and {fold} of {path}: "
                                "each case must validate in exactly one fold")
    for record in records:
        case = record["case_id"]
        key = case if case in fold_of else re.sub(r"_\d{4}$", "", case)
        if key not in fold_of:
            raise DataError(f"case {case} is in no val list of {path}: regenerate the folds for this datalist, "
                            "or list only the cases the file covers")
        record["fold"] = fold_of[key]


def patient_from_name(name: str, patient_regex: str) -> str:
    """Patient id = the first capture group (or the whole match) of ``patient_regex`` in a file name."""
    match = re.search(patient_regex, name)
    if match is None:
        raise DataError(f"patient_regex {patient_regex!r} does not match file name {name}: fix patient_regex")
    return match.group(1) if match.groups() else match.group(0)


def normalise_split(value: Any, where: str) -> str | None:
    """Map 'training'/'validation'/'testing' (any case) to train/val/test; empty means no official split."""
    if value in (None, ""):
        return None
    split = _SPLIT_ALIASES.get(str(value).strip().lower())
    if split is None:
        raise DataError(f"split {value!r} in {where} is not one of {list(SPLIT_NAMES)}: fix the split column")
    return split


def mask_datalist(base: Path, datalist: Mapping[str, Any], label_values: Sequence[float] | None = None,
                  ) -> list[Record]:
    """Records of a segmentation ``datalist`` spec (any kind read here) with each mask turned into boxes
    (``medexp.data.box_formats.boxes_from_mask``), one per connected component of each class, in MONAI's standard
    mode on the image's own axes: the ``masks`` box format."""
    from medexp.data.io import LoadCased

    loader = LoadCased(label_key="label", mask_keys=(), label_values=label_values)
    records = []
    for record in build_datalist(datalist, base):
        if not isinstance(record.get("label"), str):
            raise DataError(f"image {record['image']} has no mask path: give every case of the masks datalist a mask")
        mask = loader({"image": record["image"], "label": record["label"]})["label"]
        boxes, labels = boxes_from_mask(mask.numpy()[0])
        records.append({**record, "box": boxes, "label": labels})
    return records
