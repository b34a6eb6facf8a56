"""The classification and detection fingerprint on data with known answers: arrays and image files of several sizes,
class counts, binary shapes, one orientation against mirrored images, box sizes, boxes per image and overlaps."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from medexp.errors import ConfigError
from medexp.planning.image_fingerprint import (
    classification_summary,
    detection_summary,
    image_figures,
    max_overlap,
)
from medexp.planning.planner import fingerprint_data

SYNTHETIC = {"_target_": "medexp.data.synthetic.SyntheticLesionDataModule", "num_train": 40, "num_val": 10,
             "num_test": 10, "image_size": 32, "generator_seed": 1, "batch_size": 8, "num_classes": 2,
             "in_channels": 1, "spatial_dims": 2, "class_names": ["benign", "malignant"]}


def test_arrays_of_a_synthetic_set_and_the_cache(tmp_path):
    fp = fingerprint_data(SYNTHETIC, cache_dir=tmp_path)
    assert fp["task"] == "classification" and fp["source"] == "arrays"
    assert fp["cases_per_split"] == {"train": 40, "val": 10, "test": 10}
    assert fp["shape"]["median"] == [32.0, 32.0] and fp["shape"]["one_shape"] and fp["channels"] == 1
    counts = fp["labels"]["counts"]["train"]
    assert sum(counts) == 40 and fp["labels"]["imbalance"] == pytest.approx(max(counts) / min(counts), abs=1e-3)
    assert not fp["labels"]["multi_label"] and not fp["binary_images"]
    assert list(tmp_path.glob("*.json")) and fingerprint_data(SYNTHETIC, cache_dir=tmp_path) == fp


def test_image_files_of_several_sizes_are_read_as_stored(tmp_path):
    rng = np.random.default_rng(0)
    rows = ["image,label"]
    for index, (size, label) in enumerate([((40, 60), "a"), ((80, 120), "b"), ((60, 90), "a"), ((40, 60), "b")] * 3):
        Image.fromarray(rng.integers(0, 255, size, dtype=np.uint8)).save(tmp_path / f"{index}.png")
        rows.append(f"{index}.png,{label}")
    (tmp_path / "labels.csv").write_text("\n".join(rows))
    data = {"_target_": "medexp.data.image_table.ImageTableDataModule", "table": str(tmp_path / "labels.csv"),
            "name": "table", "split": {"kind": "ratio", "val_ratio": 0.25, "test_ratio": 0.25, "seed": 0},
            "batch_size": 4}
    fp = fingerprint_data(data)
    assert fp["source"] == "files" and fp["n_cases"] == 12
    assert fp["shape"]["min"] == [40.0, 60.0] and fp["shape"]["max"] == [80.0, 120.0] and not fp["shape"]["one_shape"]
    assert fp["labels"]["class_names"] == ["a", "b"] and sum(map(sum, fp["labels"]["counts"].values())) == 12


def test_a_module_that_is_neither_arrays_nor_files_is_refused_in_one_line():
    with pytest.raises(ConfigError, match="neither"):
        fingerprint_data({"_target_": "medexp.data.base.MedexpDataModule"})


def figures(image: np.ndarray, split: str = "train", label=0, boxes=None, index: int = 0):
    return image_figures({"case_id": f"{split}{index}", "split": split}, image[None].astype(np.float32), label,
                         boxes=None if boxes is None else np.array(boxes, float),
                         box_labels=None if boxes is None else np.zeros(len(boxes), np.int64))


def test_images_with_one_orientation_and_mirrored_ones():
    rng = np.random.default_rng(0)
    ramp = np.tile(np.linspace(0, 1, 32), (32, 1))  # brighter to the right, every image
    upright = [figures(ramp + 0.1 * rng.normal(size=(32, 32)), index=i) for i in range(20)]
    fp = classification_summary(upright, 2, ["a"])
    assert fp["orientation"]["one_orientation"] == [False, True]  # rows are symmetric; columns have one side
    mixed = [figures((ramp if i % 2 else ramp[:, ::-1]) + 0.1 * rng.normal(size=(32, 32)), index=i)
             for i in range(20)]
    assert classification_summary(mixed, 2, ["a"])["orientation"]["one_orientation"] == [False, False]


def test_binary_shapes_and_class_counts_per_split():
    disk = (np.hypot(*np.mgrid[-8:8, -8:8]) < 5).astype(np.float32) * 255
    cases = [figures(disk, "train", 0), figures(disk, "train", 0), figures(disk, "train", 0), figures(disk, "train", 1),
             figures(disk, "test", 1)]
    fp = classification_summary(cases, 2, ["no", "yes"])
    assert fp["binary_images"] and fp["labels"]["counts"] == {"train": [3, 1], "val": [0, 0], "test": [0, 1]}
    assert fp["labels"]["imbalance"] == 3.0


def test_max_overlap_is_the_largest_iou_between_two_boxes_of_an_image():
    assert max_overlap(np.array([[0, 0, 10, 10], [0, 5, 10, 15], [50, 50, 60, 60]], float)) == pytest.approx(1 / 3)
    assert max_overlap(np.array([[0, 0, 10, 10], [20, 20, 30, 30]], float)) == 0.0


def test_boxes_sizes_counts_and_where_objects_lie():
    image = np.zeros((64, 64))
    left = [figures(image, boxes=[[10, 4, 20, 14], [44, 4, 54, 14]], index=i) for i in range(10)]  # rows mirrored
    fp = detection_summary(left, 2, ["lesion"])
    boxes = fp["boxes"]
    assert boxes["n"] == 20 and boxes["per_image"]["median"] == 2 and boxes["overlap"]["max"] == 0.0
    assert boxes["side"][0]["median"] == 10 and boxes["smallest_side"]["min"] == 10 and boxes["side"][1]["max"] == 10
    assert fp["labels"]["boxes_per_class"] == [20]
    assert fp["orientation"]["one_orientation"] == [False, True]  # every object on the left: one side
    both = left[:5] + [figures(image, boxes=[[10, 50, 20, 60]], index=10 + i) for i in range(5)]
    assert detection_summary(both, 2, ["lesion"])["orientation"]["one_orientation"][1] is False


@pytest.mark.slow
def test_detection_data_is_read_with_its_boxes(tmp_path):
    data = {"_target_": "medexp.data.synthetic_boxes.SyntheticBoxesDataModule", "name": "boxes",
            "root": str(tmp_path / "boxes"), "num_train": 12, "num_val": 4, "num_test": 4, "image_size": 64,
            "max_lesions": 3, "generator_seed": 1, "num_classes": 1, "class_names": ["lesion"], "in_channels": 1,
            "spatial_dims": 2}
    fp = fingerprint_data(data)
    assert fp["task"] == "detection" and fp["cases_per_split"] == {"train": 12, "val": 4, "test": 4}
    assert 1 <= fp["boxes"]["per_image"]["median"] <= 3 and 0 < fp["boxes"]["size"]["median"] < 64


def test_voc_classes_named_by_the_annotations_need_no_class_count(tmp_path):
    """`medexp-plan data=voc data.root=<folder>`: the VOC config says one class; the annotations name three."""
    from pathlib import Path

    from omegaconf import OmegaConf

    from medexp.planning.image_rules import detection_classes
    from tests.unit.data.test_box_formats import write_voc

    data = OmegaConf.load(Path(__file__).parents[3] / "conf" / "data" / "voc.yaml")
    data.root = str(write_voc(tmp_path / "voc"))
    data = OmegaConf.to_container(data, resolve=True)
    assert data["num_classes"] == 1
    fp = fingerprint_data(data)
    planned = detection_classes(fp)
    assert planned["data.num_classes"].value == 3
    assert planned["data.class_names"].value == ["Platelets", "RBC", "WBC"]
