"""Classification from image files: a CSV/TSV label table, or one folder per class.

The files are decoded once (threads), preprocessed to one shape (``medexp.data.image_readers``), split with
``medexp.data.splits`` exactly as segmentation splits (official split column, patient-grouped ratio — stratified
by class by default —, k-fold, provided folds) and then held in memory as the MedMNIST ``.npz`` sets are: the same
``InMemoryClassificationDataModule`` feeds the task, so a table listing an ``.npz``'s images in its order trains on
the very same tensors (8-bit images stay uint8 until they are standardised, batch by batch). With ``cache=disk``
the decoded, preprocessed images are also kept in ``cache_dir`` as one ``.npy`` per set of files and settings
(``decoded_cache_key``), memory-mapped by later runs instead of decoded again.

A table row: an image path (relative to the table's folder or absolute; a DICOM series folder is one volume), one
label column of class names or integers, or several 0/1 columns (multi-label), and optional patient, split and fold
columns; all column names come from the config.
"""
from __future__ import annotations

import csv
import hashlib
import json
import re
import tempfile
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from medexp.data.datalist import _existing_path, file_stem, normalise_split
from medexp.data.image_readers import Preprocessing, is_readable_image, read_image_file
from medexp.data.inmemory import SPLITS, ArraySplits, InMemoryClassificationDataModule
from medexp.data.splits import Split, split_from_config
from medexp.errors import ConfigError, DataError


def _plain(value: Any) -> Any:
    """A Hydra DictConfig/ListConfig as plain Python (checkpoints keep only plain containers)."""
    from omegaconf import OmegaConf

    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def read_table(path: Path) -> list[dict[str, str]]:
    """Rows of a CSV or TSV file (header row; the delimiter is sniffed among comma, tab and semicolon)."""
    if not path.is_file():
        raise DataError(f"label table {path} does not exist: fix data.table")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"cannot read label table {path}: {error}") from None
    delimiter = "\t" if path.suffix.lower() in (".tsv", ".tab") else None
    if delimiter is None:
        try:
            delimiter = csv.Sniffer().sniff(text.split("\n", 1)[0], delimiters=",\t;").delimiter
        except csv.Error:
            delimiter = ","
    rows = list(csv.DictReader(text.splitlines(), delimiter=delimiter))
    if not rows:
        raise DataError(f"label table {path} has no rows below its header")
    return [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in rows]


def _require_columns(path: Path, rows: list[dict[str, str]], columns: Sequence[tuple[str, str | None]]) -> None:
    present = list(rows[0])
    for option, column in columns:
        if column is not None and column not in present:
            raise DataError(f"label table {path} has no column {column!r} (data.{option}); its columns are {present}")


def table_records(path: Path, image_column: str, label_column: str | Sequence[str], patient_column: str | None,
                  split_column: str | None, fold_column: str | None) -> list[dict]:
    """One record per row: ``image`` (resolved path), ``label`` (the cell as written, or a list of 0/1 cells),
    ``case_id``, ``patient_id``, ``split``, ``fold``."""
    rows = read_table(path)
    labels = [label_column] if isinstance(label_column, str) else list(label_column)
    _require_columns(path, rows, [("image_column", image_column), ("patient_column", patient_column),
                                  ("split_column", split_column), ("fold_column", fold_column),
                                  *(("label_column", column) for column in labels)])
    records = []
    for index, row in enumerate(rows):
        where = f"{path} row {index + 2}"  # row 1 is the header
        if not row[image_column]:
            raise DataError(f"{where} has no image path in column {image_column!r}")
        image = _existing_path(path.parent, row[image_column], where)
        cells = [row[c] for c in labels]
        if any(cell == "" for cell in cells):
            raise DataError(f"{where} has no label in column(s) {labels}: label every row or remove it")
        record = {"image": image, "label": cells[0] if isinstance(label_column, str) else cells,
                  "case_id": f"{index:06d}_{file_stem(Path(image))}", "row": where}
        record["patient_id"] = row[patient_column] if patient_column and row[patient_column] else record["case_id"]
        record["split"] = normalise_split(row[split_column], where) if split_column else None
        if fold_column and row[fold_column] != "":
            record["fold"] = row[fold_column]
        records.append(record)
    return records


def folder_records(root: Path) -> list[dict]:
    """``root/<class>/<image or DICOM series folder>``: one record per image, its class the folder's name."""
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist: fix data.root")
    records = []
    for class_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for item in sorted(class_dir.iterdir()):
            if is_readable_image(item):
                records.append({"image": str(item.resolve()), "label": class_dir.name,
                                "case_id": f"{class_dir.name}/{file_stem(item)}", "row": str(item), "split": None})
                records[-1]["patient_id"] = records[-1]["case_id"]
    if not records:
        raise DataError(f"no images in class folders under {root}: expected {root}/<class name>/<image files>")
    return records


def label_classes(records: list[dict], class_names: Sequence[str] | None, multi_label_columns: Sequence[str] | None
                  ) -> tuple[np.ndarray, list[str]]:
    """Labels as class indices ``(N,)`` (or 0/1 ``(N, K)``) and the class names.

    Integers are class indices (named by ``class_names`` when given); other values are class names, indexed in
    the order of ``class_names`` or else sorted. A value outside the classes is an error naming its row."""
    if multi_label_columns:
        values = np.array([[_binary(cell, r["row"]) for cell in r["label"]] for r in records], dtype=np.int64)
        return values, list(class_names or multi_label_columns)
    cells = [str(r["label"]) for r in records]
    if all(re.fullmatch(r"-?\d+(\.0+)?", c) for c in cells):
        indices = np.array([int(float(c)) for c in cells], dtype=np.int64)
        count = len(class_names) if class_names else int(indices.max()) + 1
        bad = np.flatnonzero((indices < 0) | (indices >= count))
        if len(bad):
            raise DataError(f"{records[bad[0]]['row']} has class {cells[bad[0]]} outside 0..{count - 1} "
                            f"(classes {list(class_names) if class_names else count}): fix the label or data.class_names")
        return indices, list(class_names) if class_names else [str(i) for i in range(count)]
    names = list(class_names) if class_names else sorted(set(cells))
    index = {name: i for i, name in enumerate(names)}
    for record, cell in zip(records, cells, strict=True):
        if cell not in index:
            raise DataError(f"{record['row']} has class {cell!r}, not one of data.class_names {names}: fix the "
                            "label or add the class")
    return np.array([index[c] for c in cells], dtype=np.int64), names


def _binary(cell: str, where: str) -> int:
    if cell not in ("0", "1", "0.0", "1.0"):
        raise DataError(f"{where} has {cell!r} in a multi-label column: each label column holds 0 or 1")
    return int(float(cell))


def check_patients_apart(split: Split) -> dict[str, int]:
    """No patient may have images in two of train/val/test (their images would leak the answer); returns the
    number of patients per set, which the fingerprint reports."""
    sets = {name: split.patients(name) for name in SPLITS}
    for i, first in enumerate(SPLITS):
        for second in SPLITS[i + 1:]:
            shared = sorted(sets[first] & sets[second])
            if shared:
                raise DataError(f"patient(s) {shared[:5]} have images in both {first} and {second} ({len(shared)} "
                                "patients): give each patient's images one split in the table, or drop "
                                "data.split_column to let the split group them")
    return {name: len(ids) for name, ids in sets.items()}


class ImageTableDataModule(InMemoryClassificationDataModule):
    """Images listed in a label table (``table``) or sorted into class folders (``root``), held in memory.

    ``num_classes``, ``in_channels``, ``class_names`` and ``image_size`` may be null: they are then read from the
    data (``medexp.factory`` writes them back into the run's config, so checkpoints carry them)."""

    def __init__(self, table: str | None = None, root: str | None = None, image_column: str = "image",
                 label_column: str | Sequence[str] = "label", patient_column: str | None = None,
                 split_column: str | None = None, fold_column: str | None = None,
                 split: Mapping[str, Any] | None = None, fold: int | None = None, num_folds: int = 5,
                 preprocessing: Mapping[str, Any] | None = None, workers: int = 2, name: str = "image_table",
                 num_classes: int | None = None, in_channels: int | None = None, image_size: int | None = None,
                 spatial_dims: int = 2, class_names: Sequence[str] | None = None, cache: str = "memory",
                 cache_dir: str | None = None, **kwargs):
        if table is None and root is None:
            raise ConfigError("give data.table=<label table .csv/.tsv> or data.root=<folder of class folders>")
        if cache not in CACHE_MODES:
            raise ConfigError(f"data.cache={cache!r} is unknown: use memory (decode every run) or disk (keep the "
                              "decoded images in data.cache_dir for the next runs)")
        if cache == "disk" and not cache_dir:
            raise ConfigError("data.cache=disk needs data.cache_dir (a folder for the decoded images)")
        label_column = _plain(label_column)
        self.multi_label_columns = None if isinstance(label_column, str) else list(label_column)
        super().__init__(num_classes=num_classes or len(self.multi_label_columns or class_names or [0, 0]),
                         in_channels=in_channels or 1, spatial_dims=spatial_dims, image_size=image_size or 0,
                         class_names=_plain(class_names), **kwargs)
        self.configured = {"num_classes": num_classes, "in_channels": in_channels, "class_names": class_names}
        self.table = None if table is None else Path(table).expanduser()
        self.root = None if root is None else Path(root).expanduser()
        self.columns = {"image_column": image_column, "label_column": label_column, "patient_column": patient_column,
                        "split_column": split_column, "fold_column": fold_column}
        self.split_config = dict(_plain(split) or {})
        if fold is not None:  # `-m data.fold=0,1,2,3,4`: k-fold over the non-test patients, as segmentation does
            self.split_config.update(kind="kfold", fold=fold, num_folds=num_folds)
        self.preprocessing = Preprocessing.from_config(_plain(preprocessing))
        self.workers, self.name = workers, name
        self.cache_dir = Path(cache_dir).expanduser() if cache == "disk" else None
        self.split: Split | None = None
        self.patients_per_split: dict[str, int] = {}

    # -- reading ----------------------------------------------------------------------------------------------
    def records(self) -> list[dict]:
        if self.table is not None:
            return table_records(self.table, **self.columns)
        return folder_records(self.root)

    def load_arrays(self) -> ArraySplits:
        records = self.records()
        labels, names = label_classes(records, self.configured["class_names"], self.multi_label_columns)
        for record, label in zip(records, labels, strict=True):
            record["class"] = label
        self.split = split_from_config(records, self.split_config)
        self.patients_per_split = check_patients_apart(self.split)
        images = self._decoded([r["image"] for name in SPLITS for r in getattr(self.split, name)])
        self._adopt(images[0], names)
        start, out_images, out_labels = 0, {}, {}
        for name in SPLITS:
            chosen = getattr(self.split, name)
            out_images[name] = images[start:start + len(chosen)]  # views: no copy of the set
            out_labels[name] = np.stack([r["class"] for r in chosen])
            start += len(chosen)
        source = str(self.table.resolve() if self.table is not None else self.root.resolve())
        return ArraySplits(images=out_images, labels=out_labels, source=source,
                           extra={"dataset": self.name, "split": dict(self.split.settings),
                                  "patients_per_split": self.patients_per_split,
                                  "preprocessing": vars(self.preprocessing),
                                  "files_sha256": _files_digest(self.split)})

    def read_new_image(self, path: str) -> np.ndarray:
        return self._prepare(path)

    def _prepare(self, path: str) -> np.ndarray:
        image = self.preprocessing(read_image_file(path))
        if image.ndim - 1 != self.spatial_dims:
            raise DataError(f"image {path} has {image.ndim - 1} spatial axes {tuple(image.shape[1:])} but "
                            f"data.spatial_dims={self.spatial_dims}: set data.spatial_dims={image.ndim - 1}")
        return image

    def _decoded(self, paths: list[str]) -> np.ndarray:
        """The images of ``paths`` stacked, decoded now or, with ``cache=disk``, memory-mapped from an earlier
        run's ``.npy`` of the same files and settings (copy-on-write: the cache file never changes)."""
        if self.cache_dir is None:
            return self._decode(paths)
        cached = self.cache_dir / f"{decoded_cache_key(paths, self.preprocessing, self.spatial_dims)}.npy"
        if cached.is_file():
            return np.load(cached, mmap_mode="c")
        images = self._decode(paths)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        # written beside it, then renamed: a reader (another DDP rank, a parallel run) sees a whole file or none
        with tempfile.NamedTemporaryFile(dir=self.cache_dir, suffix=".npy.part", delete=False) as handle:
            np.save(handle, images)
        Path(handle.name).replace(cached)
        return images

    def _decode(self, paths: list[str]) -> np.ndarray:
        """Every image once, in order (threads: the decoders release the GIL), stacked; one shape and dtype."""
        with ThreadPoolExecutor(max_workers=max(1, self.workers)) as pool:
            images = list(pool.map(self._prepare, paths))
        shapes = {image.shape[1:] for image in images}
        if len(shapes) > 1:
            first = images[0].shape[1:]
            other = next(i for i, image in enumerate(images) if image.shape[1:] != first)
            raise DataError(f"images differ in size ({paths[0]} is {first}, {paths[other]} is "
                            f"{images[other].shape[1:]}; {len(shapes)} sizes): set data.preprocessing.size to "
                            "resize them to one")
        channels = {image.shape[0] for image in images}
        if len(channels) > 1:
            other = next(i for i, image in enumerate(images) if image.shape[0] != images[0].shape[0])
            raise DataError(f"images differ in channels ({paths[0]} has {images[0].shape[0]}, {paths[other]} has "
                            f"{images[other].shape[0]}): convert them to one colour mode")
        return np.stack(images, dtype=np.result_type(*{image.dtype for image in images}))

    def _adopt(self, image: np.ndarray, class_names: list[str]) -> None:
        """Take classes, channels and size from the data; a configured value must agree with it."""
        found = {"num_classes": len(class_names), "in_channels": int(image.shape[0]), "class_names": class_names}
        for key, value in found.items():
            wanted = self.configured[key]
            if wanted is not None and key != "class_names" and int(wanted) != value:
                raise DataError(f"data.{key}={wanted} but the data has {value}: set data.{key}={value} or null")
        self.num_classes, self.in_channels, self.class_names = found["num_classes"], found["in_channels"], class_names
        self.image_size = int(max(image.shape[1:]))

    def fingerprint(self) -> dict:
        return {**super().fingerprint(), **self.columns}

    def split_json(self) -> str:
        """The split (case and patient ids per set, settings) as JSON, for an MLflow artifact beside the run."""
        return self.split.to_json()

    # -- checkpoints: what the model needs to read new images --------------------------------------------------
    def state_dict(self) -> dict:
        return {**super().state_dict(), "class_names": self.class_names}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.class_names = list(state.get("class_names", self.class_names))


CACHE_MODES = ("memory", "disk")
CACHE_FORMAT = 1  # bump when decoding or preprocessing changes what the same files and settings give


def decoded_cache_key(paths: Sequence[str], preprocessing: Preprocessing, spatial_dims: int) -> str:
    """What the decoded images depend on: each file's path, size and modification time (a DICOM series folder's
    files), the preprocessing settings and the axes; a changed file or setting gives another key."""
    digest = hashlib.sha256(json.dumps([CACHE_FORMAT, vars(preprocessing), spatial_dims]).encode())
    for path in paths:
        path = Path(path)
        for file in sorted(path.iterdir()) if path.is_dir() else [path]:
            stat = file.stat()
            digest.update(f"{file}\t{stat.st_size}\t{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:32]


def _files_digest(split: Split) -> str:
    """A hash of what was listed per split (paths and labels), beside the pixel hash of the fingerprint."""
    digest = hashlib.sha256()
    for name in SPLITS:
        for record in getattr(split, name):
            digest.update(f"{name}\t{record['image']}\t{record['label']}\n".encode())
    return digest.hexdigest()
