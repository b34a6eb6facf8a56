"""MedMNIST (v2/v3) ``.npz`` files: ``{train,val,test}_{images,labels}`` with the official splits."""
from __future__ import annotations

import urllib.request
from pathlib import Path

import numpy as np

from medexp.data.inmemory import SPLITS, ArraySplits, InMemoryClassificationDataModule
from medexp.errors import DataError

ZENODO_RECORD = "https://zenodo.org/records/10519652/files"
REQUIRED_KEYS = [f"{split}_{kind}" for split in SPLITS for kind in ("images", "labels")]


def medmnist_filename(name: str, image_size: int) -> str:
    return f"{name}.npz" if image_size == 28 else f"{name}_{image_size}.npz"


def download(url: str, target: Path, timeout: float = 20.0) -> None:
    """Fetch ``url`` to ``target`` atomically (a partial download never looks like a file). A failed download
    leaves nothing behind: no partial file, and none of the folders it created (a mistyped data.root)."""
    created = [folder for folder in (target.parent, *target.parent.parents) if not folder.exists()]  # deepest first
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".part")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(partial, "wb") as out:
            while chunk := response.read(1 << 20):
                out.write(chunk)
        partial.replace(target)
    except BaseException:
        partial.unlink(missing_ok=True)
        for folder in created:
            try:
                folder.rmdir()  # only while empty: whatever else appeared there stays
            except OSError:
                break
        raise


def channels_first(images: np.ndarray, spatial_dims: int = 2) -> np.ndarray:
    """MedMNIST's ``(N, H, W)`` (gray) or ``(N, H, W, C)`` (colour) images as ``(N, C, H, W)``; in 3D its
    ``(N, D, H, W)`` volumes (MedMNIST3D is gray) as ``(N, 1, D, H, W)``."""
    return images[:, None] if images.ndim == 1 + spatial_dims else np.moveaxis(images, -1, 1)


def load_medmnist(path: Path, spatial_dims: int = 2) -> dict[str, np.ndarray]:
    """Read and check a MedMNIST file: images become ``(N, C, H, W)`` uint8 (3D: ``(N, 1, D, H, W)``), labels
    ``(N,)`` int64 class indices, or ``(N, K)`` 0/1 for a multi-label set (ChestMNIST's 14 findings)."""
    try:
        with np.load(path) as npz:
            missing = [k for k in REQUIRED_KEYS if k not in npz.files]
            if missing:
                raise DataError(f"{path} is not a MedMNIST file: it lacks {', '.join(missing)} "
                                f"(has {', '.join(npz.files) or 'nothing'}); expected keys {', '.join(REQUIRED_KEYS)}")
            arrays = {k: npz[k] for k in REQUIRED_KEYS}
    except DataError:
        raise
    except Exception as exc:  # zip/pickle/format errors: name the file, not numpy's internals
        raise DataError(f"cannot read {path}: {type(exc).__name__}: {exc}; re-download it or point data.root elsewhere") from None
    columns = {split: arrays[f"{split}_labels"].reshape(len(arrays[f"{split}_labels"]), -1).shape[1]
               for split in SPLITS}
    if len(set(columns.values())) > 1:
        raise DataError(f"{path}: the splits' labels have different numbers of columns {columns}: "
                        "re-download the file")
    out = {}
    for split in SPLITS:
        labels = arrays[f"{split}_labels"]  # cast by the data module once checked: 0.9 must not become class 0
        out[f"{split}_images"] = channels_first(arrays[f"{split}_images"], spatial_dims)
        # (N, 1) class indices become (N,); (N, K) with K > 1 is multi-label and stays so
        out[f"{split}_labels"] = labels.reshape(len(labels), -1) if columns[split] > 1 else labels.reshape(-1)
    return out


class MedMNISTDataModule(InMemoryClassificationDataModule):
    """A MedMNIST set (2D, or 3D with ``spatial_dims=3``) read from ``root``; downloaded there first when absent
    and ``download`` is true."""

    def __init__(self, name: str, root: str, download: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.name, self.root, self.download = name, Path(root).expanduser(), download

    @property
    def path(self) -> Path:
        return self.root / medmnist_filename(self.name, self.image_size)

    def load_arrays(self) -> ArraySplits:
        path = self.path
        if not path.is_file():
            url = f"{ZENODO_RECORD}/{path.name}?download=1"
            if not self.download:
                raise DataError(f"{path} not found: put {path.name} there (from {url}) or set data.root to its folder")
            try:
                download(url, path)
            except Exception as exc:
                raise DataError(f"{path} not found and downloading it failed ({type(exc).__name__}: {exc}): "
                                f"put {path.name} from {url} in {self.root} or set data.root to its folder") from None
        a = load_medmnist(path, self.spatial_dims)
        return ArraySplits(
            images={s: a[f"{s}_images"] for s in SPLITS}, labels={s: a[f"{s}_labels"] for s in SPLITS},
            source=str(path.resolve()), extra={"dataset": self.name},
        )
