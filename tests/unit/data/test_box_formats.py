"""Box formats read directly: Pascal VOC folders, COCO files and boxes from segmentation masks, on small fixtures
written here (an image without boxes, a zero-area box, a box outside the image, a difficult object), through the
detection data module to batches whose cases all have the same keys."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from medexp.data.box_formats import boxes_from_mask, class_indices
from medexp.data.datalist import build_datalist
from medexp.data.detection import DetectionDataModule, collate_cases
from medexp.errors import ConfigError, DataError

SIZE = (48, 64)  # rows, columns: not square, so swapped axes show
# per image: (class, xmin, ymin, xmax, ymax, difficult); img1 has no objects (a negative)
OBJECTS = {
    "img0": [("RBC", 10, 5, 30, 20, 0), ("WBC", 40, 20, 60, 44, 0), ("RBC", 2, 2, 8, 8, 1)],
    "img1": [],
    "img2": [("Platelets", 30, 10, 38, 18, 0), ("RBC", 12, 12, 12, 30, 0), ("RBC", 50, 30, 70, 40, 0)],
    "img3": [("WBC", 5, 25, 25, 45, 0)],
    "img4": [("RBC", 20, 8, 44, 30, 0)],
}
SPLITS = {"train": ["img0", "img1", "img2"], "val": ["img3"], "test": ["img4"]}


def write_image(path: Path, boxes: list[tuple]) -> None:
    """An RGB image, dark but bright inside each box (column-first corners)."""
    image = np.full((*SIZE, 3), 30, np.uint8)
    for _, x0, y0, x1, y1, *_ in boxes:
        image[int(y0):int(y1), int(x0):int(x1)] = 220
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)


def write_voc(root: Path, splits: dict[str, list[str]] | None = SPLITS, size_in_xml: bool = True) -> Path:
    for stem, objects in OBJECTS.items():
        write_image(root / "JPEGImages" / f"{stem}.png", objects)
        parts = [f"<annotation><filename>{stem}.png</filename>"]
        if size_in_xml:
            parts.append(f"<size><width>{SIZE[1]}</width><height>{SIZE[0]}</height><depth>3</depth></size>")
        for name, x0, y0, x1, y1, difficult in objects:
            parts.append(f"<object><name>{name}</name><difficult>{difficult}</difficult><bndbox><xmin>{x0}</xmin>"
                         f"<ymin>{y0}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>")
        (root / "Annotations").mkdir(parents=True, exist_ok=True)
        (root / "Annotations" / f"{stem}.xml").write_text("".join(parts) + "</annotation>")
    for split, stems in (splits or {}).items():
        (root / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
        (root / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(stems) + "\n")
    return root


def by_id(records: list[dict]) -> dict[str, dict]:
    return {record["case_id"]: record for record in records}


# -- Pascal VOC ---------------------------------------------------------------------------------------------------
def test_voc_folder_reads_boxes_split_and_classes_dropping_bad_boxes_with_one_warning(tmp_path, caplog):
    root = write_voc(tmp_path / "voc")
    with caplog.at_level(logging.WARNING, logger="medexp.data.box_formats"):
        records = by_id(build_datalist({"kind": "voc"}, root))
    assert {k: r["split"] for k, r in records.items()} == {s: split for split, stems in SPLITS.items() for s in stems}
    # boxes as written (VOC's column-first corners); the difficult RBC of img0 dropped
    assert records["img0"]["box"] == [[10, 5, 30, 20], [40, 20, 60, 44]]
    assert records["img0"]["label"] == ["RBC", "WBC"]
    assert records["img1"]["box"] == [] and records["img1"]["label"] == []  # a negative stays a case
    # img2: the zero-area RBC and the RBC reaching past the right border (x 70 > 64) dropped
    assert records["img2"]["box"] == [[30, 10, 38, 18]] and records["img2"]["label"] == ["Platelets"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "dropped 2 box(es)" in warnings[0] and "img2.xml (2)" in warnings[0]
    assert "\n" not in warnings[0]


def test_voc_difficult_objects_can_be_kept_and_sizes_read_from_the_images(tmp_path):
    root = write_voc(tmp_path / "voc", size_in_xml=False)
    records = by_id(build_datalist({"kind": "voc", "difficult": "keep"}, root))
    assert records["img0"]["box"] == [[10, 5, 30, 20], [40, 20, 60, 44], [2, 2, 8, 8]]
    assert records["img2"]["box"] == [[30, 10, 38, 18]]  # the image's own width (64) still bounds the boxes


def test_voc_without_image_sets_lists_every_annotation_unsplit(tmp_path):
    records = build_datalist({"kind": "voc"}, write_voc(tmp_path / "voc", splits=None))
    assert sorted(r["case_id"] for r in records) == sorted(OBJECTS) and {r["split"] for r in records} == {None}


@pytest.mark.parametrize("problem,message", [
    ("no_annotations", "has no Annotations/ folder"),
    ("missing_image", "no image for annotation"),
    ("twice", "listed in both"),
    ("bad_xml", "is not valid XML"),
    ("difficult", "difficult='maybe' is unknown"),
])
def test_bad_voc_folders_stop_with_one_line_naming_the_fix(tmp_path, problem, message):
    root = write_voc(tmp_path / "voc", splits={**SPLITS, "test": ["img4", "img0"]} if problem == "twice" else SPLITS)
    spec = {"kind": "voc", "difficult": "maybe" if problem == "difficult" else "drop"}
    if problem == "no_annotations":
        spec["root"] = "JPEGImages"  # one level too deep
    if problem == "missing_image":
        (root / "JPEGImages" / "img3.png").unlink()
    if problem == "bad_xml":
        (root / "Annotations" / "img4.xml").write_text("<annotation><object>")
    with pytest.raises((DataError, ConfigError), match=message) as error:
        build_datalist(spec, root)
    assert "\n" not in str(error.value)


def test_class_names_order_labels_or_are_sorted_and_unknown_names_fail(tmp_path):
    records = build_datalist({"kind": "voc"}, write_voc(tmp_path / "voc"))
    assert class_indices([dict(r) for r in records], None) == ["Platelets", "RBC", "WBC"]
    ordered = [dict(r) for r in records]
    assert class_indices(ordered, ["RBC", "WBC", "Platelets"]) == ["RBC", "WBC", "Platelets"]
    assert by_id(ordered)["img0"]["label"] == [0, 1] and by_id(ordered)["img2"]["label"] == [2]
    with pytest.raises(DataError, match=r"class\(es\) \['Platelets'\] not in data.class_names"):
        class_indices([dict(r) for r in records], ["RBC", "WBC"])


# -- COCO ---------------------------------------------------------------------------------------------------------
def write_coco(root: Path) -> Path:
    """img0..img2 of the VOC fixture as COCO ([x, y, w, h]), plus a crowd region; categories by id 7, 3."""
    images, annotations = [], []
    for index, stem in enumerate(["img0", "img1", "img2"]):
        write_image(root / "images" / f"{stem}.png", OBJECTS[stem])
        images.append({"id": 100 + index, "file_name": f"{stem}.png", "width": SIZE[1], "height": SIZE[0]})
        for name, x0, y0, x1, y1, _ in OBJECTS[stem]:
            annotations.append({"id": len(annotations), "image_id": 100 + index, "category_id": 7 if name == "RBC"
                                else 3, "bbox": [x0, y0, x1 - x0, y1 - y0], "iscrowd": 0})
    annotations.append({"id": 99, "image_id": 100, "category_id": 7, "bbox": [0, 0, 40, 40], "iscrowd": 1})
    content = {"images": images, "annotations": annotations,
               "categories": [{"id": 7, "name": "cell"}, {"id": 3, "name": "other"}]}
    (root / "train.json").write_text(json.dumps(content))
    return root


def test_coco_file_reads_xywh_boxes_skipping_crowds_and_bad_boxes(tmp_path, caplog):
    root = write_coco(tmp_path / "coco")
    with caplog.at_level(logging.WARNING, logger="medexp.data.box_formats"):
        records = by_id(build_datalist({"kind": "coco", "path": "train.json", "images": "images",
                                        "split": "train"}, root))
    assert records["img0"]["box"] == [[10, 5, 20, 15], [40, 20, 20, 24], [2, 2, 6, 6]]  # no crowd region
    assert records["img0"]["label"] == ["cell", "other", "cell"] and records["img0"]["split"] == "train"
    assert records["img1"]["box"] == []
    assert records["img2"]["box"] == [[30, 10, 8, 8]] and records["img2"]["label"] == ["other"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "dropped 2 box(es)" in warnings[0] and "img2.png (2)" in warnings[0]


def test_coco_file_problems_are_one_line(tmp_path):
    root = write_coco(tmp_path / "coco")
    (root / "bad.json").write_text(json.dumps({"images": []}))
    with pytest.raises(DataError, match="is not a COCO detection file"):
        build_datalist({"kind": "coco", "path": "bad.json"}, root)
    with pytest.raises(DataError, match="does not exist: fix the COCO file or its 'images' folder"):
        build_datalist({"kind": "coco", "path": "train.json"}, root)  # images are in images/, not beside it


# -- boxes from masks ---------------------------------------------------------------------------------------------
def test_boxes_from_mask_one_per_component_and_class():
    mask = np.zeros((20, 30), np.uint8)
    mask[2:6, 3:8] = 1
    mask[6:9, 8:10] = 1  # touches the first lesion diagonally only: the same component
    mask[12:18, 20:25] = 1
    mask[10:13, 2:4] = 2
    boxes, labels = boxes_from_mask(mask)
    assert sorted(zip(labels, boxes, strict=True)) == [(0, [2, 3, 9, 10]), (0, [12, 20, 18, 25]),
                                                       (1, [10, 2, 13, 4])]
    assert boxes_from_mask(np.zeros((4, 4))) == ([], [])
    volume = np.zeros((6, 6, 6))
    volume[1:3, 2:4, 3:6] = 3
    assert boxes_from_mask(volume) == ([[1, 2, 3, 3, 4, 6]], [2])


def test_mask_datalist_gives_a_detection_set(tmp_path):
    for index in range(5):
        mask = np.zeros(SIZE, np.uint8)
        if index != 1:  # case 1: no lesion, a negative
            mask[10:20, 30:44] = 255
        Image.fromarray(mask).save(tmp_path / f"case{index}_mask.png")
        write_image(tmp_path / f"case{index}.png", [("x", 30, 10, 44, 20)] if index != 1 else [])
    spec = {"kind": "masks", "datalist": {"kind": "folder", "image_glob": "case?.png",
                                          "label_pattern": "{stem}_mask.png"}}
    records = by_id(build_datalist(spec, tmp_path))
    assert records["case0"]["box"] == [[10, 30, 20, 44]] and records["case0"]["label"] == [0]
    assert records["case1"]["box"] == [] and records["case1"]["label"] == []
    dm = DetectionDataModule(datalist=spec, root=str(tmp_path), spatial_dims=2, in_channels=3, num_classes=1,
                             split={"kind": "ratio", "val_ratio": 0.2, "test_ratio": 0.2, "seed": 0})
    assert dm.box_settings["box_axes"] == "array"
    batch = next(iter(dm.test_dataloader()))
    assert [b.tolist() for b in batch["box"]] in ([[[10.0, 30.0, 20.0, 44.0]]], [[]])


# -- through the data module ----------------------------------------------------------------------------------------
def voc_module(root: Path, **options) -> DetectionDataModule:
    settings = {"datalist": {"kind": "voc"}, "root": str(root), "spatial_dims": 2, "in_channels": 3,
                "num_classes": 3, "class_names": ["RBC", "WBC", "Platelets"], "batch_size": 3, **options}
    return DetectionDataModule(**settings)


def test_voc_boxes_reach_the_model_row_first_on_the_bright_cells(tmp_path):
    dm = voc_module(write_voc(tmp_path / "voc"))
    assert dm.box_settings["box_mode"] == "xyxy" and dm.box_settings["box_axes"] == "xy"
    dm.setup()
    assert dm.class_names == ["RBC", "WBC", "Platelets"] and dm.class_counts("train") == [1, 1, 1]
    batch = next(iter(dm.val_dataloader()))  # img3: WBC at columns 5..25, rows 25..45
    assert batch["box"][0].tolist() == [[25.0, 5.0, 45.0, 25.0]] and batch["label"][0].tolist() == [1]
    image = batch["image"][0][0]
    assert image[25:45, 5:25].min() > image.mean() > image[:20].max()  # the box holds the bright cell


def test_class_names_come_from_the_data_when_not_given_and_travel_in_the_checkpoint(tmp_path):
    root = write_voc(tmp_path / "voc")
    dm = voc_module(root, class_names=None)
    dm.setup()
    assert dm.class_names == ["Platelets", "RBC", "WBC"]
    restored = voc_module(root, class_names=None)
    restored.load_state_dict(dm.state_dict())
    assert restored.class_names == ["Platelets", "RBC", "WBC"]
    with pytest.raises(DataError, match="set data.num_classes=3"):
        voc_module(root, num_classes=2, class_names=None).setup()


def test_box_settings_that_contradict_the_format_are_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="contradict the datalist's format"):
        voc_module(tmp_path, box_mode="ccwh")
    with pytest.raises(ConfigError, match="mixes box formats"):
        voc_module(tmp_path, datalist=[{"kind": "voc"}, {"kind": "coco", "path": "x.json"}])


def test_training_cases_share_their_keys_whichever_random_transforms_fire(tmp_path):
    """MONAI's zoom and quarter-turn box transforms add a ``box_transforms`` entry only when they fire: every case
    must still come out with the same keys, or the batch's collation fails (BCCD's first batch did)."""
    recipe = {"scale": [0.8, 1.2], "affine_prob": 0.5, "flip_axes": [0, 1], "flip_prob": 0.5}
    dm = voc_module(write_voc(tmp_path / "voc"), augmentation=recipe, rotate90_prob=0.5)
    dataset = dm._dataset("train")
    keys = {frozenset(dataset[index % 3]) for index in range(30)}
    assert keys == {frozenset({"image", "box", "label", "case_id", "patient_id"})}
    batch = next(iter(dm.train_dataloader()))
    assert sorted(len(b) for b in batch["box"]) == [0, 1, 2]  # the negative, img2's platelet, img0's two cells


def test_collate_keeps_empty_and_nonempty_cases_apart():
    empty = {"image": torch.zeros(3, 8, 8), "box": torch.zeros(0, 4), "label": torch.zeros(0, dtype=torch.long),
             "case_id": "a"}
    full = {"image": torch.ones(3, 8, 10), "box": torch.tensor([[1.0, 1, 4, 4], [2, 2, 6, 7]]),
            "label": torch.tensor([0, 2]), "case_id": "b"}
    batch = collate_cases([empty, [full, empty]])  # a patch-sampled image gives a list of cases
    assert batch["case_id"] == ["a", "b", "a"]
    assert [tuple(b.shape) for b in batch["box"]] == [(0, 4), (2, 4), (0, 4)]
    assert [tuple(i.shape) for i in batch["image"]] == [(3, 8, 8), (3, 8, 10), (3, 8, 8)]
