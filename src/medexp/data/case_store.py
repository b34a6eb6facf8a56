"""Preprocessed cases on disk, one folder of ``.npy`` arrays per case, read memory-mapped (``data.cache=disk``).

Why memory-mapped ``.npy`` and not MONAI's ``PersistentDataset`` (or LMDB, zarr): a training patch of a 3D case
must be read without reading the case. ``PersistentDataset`` pickles each case whole (``torch.save``) and loads it
whole for every patch; LMDB stores whole values too; zarr reads chunks but is a new dependency and a chunk format
to tune. A ``.npy`` file opened with ``mmap_mode="r"`` hands out a slice by reading only the pages under it, from
the operating system's page cache, which every loader worker, fold, sweep job and DDP rank on a machine shares
instead of each holding its own copy: resident memory stays flat however large the data set.

What a case folder holds (``CompactCased``): ``image.npy`` (float16 where the preprocessing normalises, else
float32), ``label.npy`` (uint8 class indices), ``fov.npy`` when the case has a field of view (uint8),
``fg_indices.npy`` (flat indices of the foreground, or a sample of them), and ``summary.npz`` (what the validation
pass reads of the case as stored: shape, spacing, channels, an intensity sample, voxels per class), so a run that
finds every case prepared reads no image at all before its first step.

Where: ``<cache_dir>/v<version>-<digest of the preparation settings>/<digest of the case's files>/``. The case digest
hashes each file's absolute path, size and modification time, so a changed file gets a new folder, and a case shared
by two folds, jobs or data sets is prepared once. A case is written into a temporary folder beside its final one
and renamed into place (atomic on one file system): concurrent builders never see a half-written case, and a
second finisher simply discards its copy. Builders walk the cases from different starting points (by DDP rank), so
ranks share the work instead of repeating it.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.transforms import Transform

from medexp.data.io import CaseSummary

STORE_VERSION = 1
SUMMARY_FILE = "summary.npz"
_FILE_KEYS = ("image", "label", "fov")


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def _file_identity(path: str) -> list:
    stat = os.stat(path)
    return [os.path.abspath(path), stat.st_size, stat.st_mtime_ns]


class CaseStore:
    """The prepared cases of one preparation setting (``settings``: whatever changes a prepared case) under
    ``folder``. ``prepare(record)`` reads and prepares one case: ``(arrays, summary)``."""

    def __init__(self, folder: str | os.PathLike, settings: Mapping[str, Any]) -> None:
        self.folder = Path(folder) / f"v{STORE_VERSION}-{_digest(settings)[:16]}"

    def entry(self, record: Mapping[str, Any]) -> Path:
        """The folder of ``record``'s case (its file paths, sizes and modification times)."""
        files = [[key, *_file_identity(record[key])] for key in _FILE_KEYS if isinstance(record.get(key), str)]
        return self.folder / _digest(files)[:24]

    def build(self, records: Sequence[Mapping[str, Any]],
              prepare: Callable[[Mapping[str, Any]], tuple[dict[str, np.ndarray], CaseSummary]],
              workers: int = 1, rank: int = 0, world_size: int = 1) -> list[Path]:
        """Prepare every case that is not stored yet (``workers`` threads), and return each record's folder."""
        entries = [self.entry(record) for record in records]
        todo = [(record, entry) for record, entry in zip(records, entries, strict=True) if not entry.is_dir()]
        if todo:
            start = len(todo) * rank // max(1, world_size)  # ranks begin at different cases and meet at the end
            todo = todo[start:] + todo[:start]
            self.folder.mkdir(parents=True, exist_ok=True)

            def write(job: tuple[Mapping[str, Any], Path]) -> None:
                record, entry = job
                if not entry.is_dir():  # another builder may have finished it meanwhile
                    _write_entry(entry, *prepare(record))

            with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
                list(pool.map(write, todo))
        return entries


def _write_entry(entry: Path, arrays: Mapping[str, np.ndarray], summary: CaseSummary) -> None:
    temporary = entry.with_name(f".{entry.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}")
    temporary.mkdir()
    try:
        for key, array in arrays.items():
            np.save(temporary / f"{key}.npy", np.ascontiguousarray(array))
        np.savez(temporary / SUMMARY_FILE, case_id=summary.case_id, shape=np.asarray(summary.shape),
                 spacing=np.asarray(summary.spacing), channels=summary.channels,
                 intensity_sample=summary.intensity_sample, class_counts=summary.class_counts)
        os.rename(temporary, entry)
    except OSError:
        if not entry.is_dir():  # a real failure (disk full, permissions), not a builder that finished first
            raise
    finally:
        shutil.rmtree(temporary, ignore_errors=True)


def read_summary(entry: Path, case_id: str) -> CaseSummary:
    """The validation pass's facts about a stored case (``case_id``: this datalist's name for it)."""
    with np.load(entry / SUMMARY_FILE) as stored:
        return CaseSummary(case_id=case_id, shape=tuple(int(s) for s in stored["shape"]),
                           spacing=tuple(float(s) for s in stored["spacing"]), channels=int(stored["channels"]),
                           intensity_sample=stored["intensity_sample"], class_counts=stored["class_counts"])


class OpenStoredCased(Transform):
    """``{"stored": <case folder>, ...}`` → the case's arrays under their keys (``keys`` that the case has, plus
    ``fg_indices`` when ``mapped``). ``mapped``: memory-mapped, for patch sampling (``RandPatchesd`` reads only the
    patch); otherwise read whole into tensors (validation and test take whole images)."""

    def __init__(self, keys: Sequence[str], mapped: bool, store_key: str = "stored") -> None:
        self.keys, self.mapped, self.store_key = tuple(keys), mapped, store_key

    def __call__(self, data: Mapping) -> dict:
        case = dict(data)
        folder = Path(case.pop(self.store_key))
        for key in self.keys + (("fg_indices",) if self.mapped else ()):
            path = folder / f"{key}.npy"
            if path.is_file():
                case[key] = np.load(path, mmap_mode="r") if self.mapped else torch.from_numpy(np.load(path))
        return case
