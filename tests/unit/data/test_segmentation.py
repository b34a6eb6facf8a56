"""A file-based segmentation set stops in one line when a split's masks hold no foreground at all."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from medexp.data.segmentation import SegmentationDataModule
from medexp.errors import DataError

DATALIST = {"kind": "folder", "image_glob": "images/*", "label_pattern": "masks/{stem}.*"}


def photo_folder(root, foreground_in: set[str]) -> None:
    """Ten photos with 0/1 masks; the cases named in ``foreground_in`` have a lesion, the others none."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for index in range(10):
        name = f"case{index}"
        mask = np.zeros((32, 32), np.uint8)
        if name in foreground_in:
            mask[8:20, 10:22] = 1
        Image.fromarray(np.full((32, 32, 3), 90, np.uint8)).save(root / "images" / f"{name}.png")
        Image.fromarray(mask).save(root / "masks" / f"{name}.png")


def module(root, validate: bool = True) -> SegmentationDataModule:
    return SegmentationDataModule(DATALIST, root=str(root), in_channels=3, name="photos", validate=validate,
                                  split={"kind": "ratio", "val_ratio": 0.2, "test_ratio": 0.2, "seed": 0})


def test_0_1_masks_keep_their_foreground_in_every_split(tmp_path):
    photo_folder(tmp_path, {f"case{i}" for i in range(10)})
    data = module(tmp_path)
    data.setup()
    for split in ("train", "val", "test"):
        assert data.class_counts(split)[1] == 144 * len(getattr(data.split, split))


def test_a_split_without_any_foreground_stops_in_one_line_naming_it(tmp_path):
    photo_folder(tmp_path / "probe", set())
    probe = module(tmp_path / "probe", validate=False)  # which cases the split puts where
    names = {split: [r["case_id"] for r in getattr(probe.split, split)] for split in ("train", "val", "test")}
    photo_folder(tmp_path / "data", set(names["train"]) | set(names["test"]))  # the val cases: background only
    with pytest.raises(DataError, match=r"data=photos: the val split's 2 masks hold no foreground at all"):
        module(tmp_path / "data").setup()


def test_data_folder_photos_reads_0_1_class_index_masks_as_classes(tmp_path, make_cfg):
    from hydra.utils import instantiate

    photo_folder(tmp_path / "photos", {f"case{i}" for i in range(10)})
    cfg = make_cfg("task=segmentation", "model=unet", "data=folder_photos", f"data.root={tmp_path / 'photos'}")
    data = instantiate(cfg.data)
    data.setup()
    assert data.class_counts("train")[1] == 144 * len(data.split.train)
