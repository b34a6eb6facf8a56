"""A case of a file-based data set is a record: a plain dict (it survives pickling into DataLoader workers and
JSON logging), read by ``medexp.data.datalist`` and the box formats of ``medexp.data.box_formats``."""
from __future__ import annotations

from pathlib import Path

Record = dict


def file_stem(path: Path) -> str:
    """File name without its extension, ``.nii.gz`` counted as one extension."""
    return path.name[: -len(".nii.gz")] if path.name.lower().endswith(".nii.gz") else path.stem
