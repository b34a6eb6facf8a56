"""Datalists from folders (CHASEDB1, DRIVE, class folders), CSV/JSON files and Decathlon dataset.json."""

import json
from pathlib import Path

import pytest

from medexp.data.datalist import build_datalist, folder_datalist, table_datalist
from medexp.errors import DataError
from tests.conftest import SHARED_DATA
from tests.fixtures_data import CHASE_DATALIST, DRIVE_DATALIST, write_chase_like, write_decathlon_like, write_drive_like

REAL_CHASE = SHARED_DATA / "CHASEDB1"


def test_folder_pairs_images_with_masks_and_groups_eyes_by_child(tmp_path):
    root = write_chase_like(tmp_path / "chase", patients=(1, 2, 3))
    records = build_datalist(CHASE_DATALIST, root)
    assert [r["case_id"] for r in records] == [
        "Image_01L",
        "Image_01R",
        "Image_02L",
        "Image_02R",
        "Image_03L",
        "Image_03R",
    ]
    assert [r["patient_id"] for r in records] == ["01", "01", "02", "02", "03", "03"]
    assert records[0]["label"] == str(root / "Image_01L_1stHO.png")
    assert all(r["split"] is None for r in records)


def test_missing_mask_names_the_expected_path(tmp_path):
    root = write_chase_like(tmp_path / "chase", patients=(1, 2))
    (root / "Image_02R_1stHO.png").unlink()
    with pytest.raises(DataError, match="Image_02R_1stHO.png"):
        build_datalist(CHASE_DATALIST, root)


def test_empty_match_and_missing_root_name_the_pattern(tmp_path):
    root = write_chase_like(tmp_path / "chase", patients=(1,))
    with pytest.raises(DataError, match=r"no image matches .*\*\.png"):
        folder_datalist(root, image_glob="*.png_typo*.png")
    with pytest.raises(DataError, match="does not exist"):
        folder_datalist(tmp_path / "nowhere", image_glob="*.jpg")


def test_patient_regex_that_does_not_match_is_an_error(tmp_path):
    root = write_chase_like(tmp_path / "chase", patients=(1,))
    with pytest.raises(DataError, match="patient_regex 'Patient_"):
        build_datalist({**CHASE_DATALIST, "patient_regex": r"Patient_(\d+)"}, root)


def test_drive_layout_pairs_by_key_regex(tmp_path):
    root = write_drive_like(tmp_path / "DRIVE", ids=(21, 22))
    records = build_datalist(DRIVE_DATALIST, root)
    assert [(r["patient_id"], Path(r["label"]).name, Path(r["fov"]).name) for r in records] == [
        ("21", "21_manual1.gif", "21_training_mask.gif"),
        ("22", "22_manual1.gif", "22_training_mask.gif"),
    ]


def test_a_wildcard_pattern_must_match_exactly_one_file(tmp_path):
    root = write_drive_like(tmp_path / "DRIVE", ids=(21,))
    (root / "mask" / "21_other_mask.gif").write_bytes(b"")
    with pytest.raises(DataError, match="2 files at .*mask/21_\\*mask.gif"):
        build_datalist(DRIVE_DATALIST, root)


def test_pattern_with_unknown_field_is_explained(tmp_path):
    root = write_drive_like(tmp_path / "DRIVE", ids=(21,))
    with pytest.raises(DataError, match="field 'case'"):
        build_datalist({**DRIVE_DATALIST, "label_pattern": "1st_manual/{case}.gif"}, root)


def test_list_of_specs_sets_official_splits(tmp_path):
    write_drive_like(tmp_path / "training", ids=(21, 22))
    write_drive_like(tmp_path / "test", ids=(1, 2))
    specs = [{**DRIVE_DATALIST, "root": "training", "split": "training"}, {**DRIVE_DATALIST, "root": "test", "split": "test"}]
    records = build_datalist(specs, tmp_path)
    assert [(r["patient_id"], r["split"]) for r in records] == [
        ("21", "train"),
        ("22", "train"),
        ("1", "test"),
        ("2", "test"),
    ]


def test_duplicate_case_ids_are_rejected(tmp_path):
    write_drive_like(tmp_path / "a", ids=(21,))
    write_drive_like(tmp_path / "b", ids=(21,))
    with pytest.raises(DataError, match="21_training"):
        build_datalist([{**DRIVE_DATALIST, "root": "a"}, {**DRIVE_DATALIST, "root": "b"}], tmp_path)


def test_classification_labels_from_class_folders(tmp_path):
    for name in ("normal", "pneumonia"):
        (tmp_path / name).mkdir()
        (tmp_path / name / f"{name}_1.png").write_bytes(b"")
    records = folder_datalist(tmp_path, image_glob="*/*.png", label_from_dir=True)
    assert [(r["case_id"], r["label"]) for r in records] == [("normal_1", 0), ("pneumonia_1", 1)]
    reordered = folder_datalist(tmp_path, image_glob="*/*.png", label_from_dir=True, classes=["pneumonia", "normal"])
    assert [r["label"] for r in reordered] == [1, 0]


def test_csv_resolves_relative_paths_and_normalises_columns(tmp_path):
    root = write_chase_like(tmp_path / "data" / "chase", patients=(1,))
    (tmp_path / "data" / "list.csv").write_text(
        "image,mask,patient_id,split\n"
        "chase/Image_01L.jpg,chase/Image_01L_1stHO.png,7,Training\n"
        f"{root / 'Image_01R.jpg'},chase/Image_01R_1stHO.png,7,\n"
    )
    records = build_datalist({"kind": "csv", "path": "list.csv"}, tmp_path / "data")
    assert records[0]["image"] == str((root / "Image_01L.jpg").resolve())
    assert records[0]["label"] == str((root / "Image_01L_1stHO.png").resolve())
    assert [(r["patient_id"], r["split"]) for r in records] == [("7", "train"), ("7", None)]


def test_csv_missing_file_and_bad_split_name_the_row(tmp_path):
    write_chase_like(tmp_path / "chase", patients=(1,))
    (tmp_path / "missing.csv").write_text("image,label\nchase/Image_01L.jpg,chase/nope.png\n")
    with pytest.raises(DataError, match=r"nope.png listed in .*missing.csv row 1"):
        table_datalist(tmp_path / "missing.csv")
    (tmp_path / "split.csv").write_text("image,split\nchase/Image_01L.jpg,holdout\n")
    with pytest.raises(DataError, match="split 'holdout'"):
        table_datalist(tmp_path / "split.csv")


def test_csv_integer_labels_for_classification(tmp_path):
    write_chase_like(tmp_path / "chase", patients=(1,))
    (tmp_path / "cls.csv").write_text("image,label\nchase/Image_01L.jpg,1\nchase/Image_01R.jpg,0\n")
    assert [r["label"] for r in table_datalist(tmp_path / "cls.csv")] == [1, 0]


def test_json_list_and_split_mapping(tmp_path):
    write_chase_like(tmp_path / "chase", patients=(1,))
    rows = [{"image": "chase/Image_01L.jpg", "label": "chase/Image_01L_1stHO.png", "fov": "chase/Image_01L_1stHO.png"}]
    (tmp_path / "list.json").write_text(json.dumps(rows))
    (tmp_path / "splits.json").write_text(json.dumps({"validation": rows, "test": [{"image": "chase/Image_01R.jpg"}]}))
    assert Path(table_datalist(tmp_path / "list.json")[0]["fov"]).is_absolute()
    assert [r["split"] for r in table_datalist(tmp_path / "splits.json")] == ["val", "test"]


def test_decathlon_training_cases_and_optional_unlabelled_test(tmp_path):
    path = write_decathlon_like(tmp_path / "Task00_Phantom", n_cases=2)
    records = build_datalist({"kind": "decathlon", "path": "dataset.json"}, path.parent)
    assert [(r["case_id"], r["split"], Path(r["label"]).parent.name) for r in records] == [
        ("phantom_000", None, "labelsTr"),
        ("phantom_001", None, "labelsTr"),
    ]
    with_test = build_datalist({"kind": "decathlon", "path": str(path), "include_test": True})
    assert [(r["case_id"], r["split"], "label" in r) for r in with_test[2:]] == [("phantom_900", "test", False)]


def test_unknown_kind_and_missing_path(tmp_path):
    with pytest.raises(DataError, match="kind 'xlsx'"):
        build_datalist({"kind": "xlsx"}, tmp_path)
    with pytest.raises(DataError, match="needs a 'path'"):
        build_datalist({"kind": "csv"}, tmp_path)


@pytest.mark.skipif(not REAL_CHASE.is_dir(), reason="shared CHASEDB1 not present")
def test_real_chasedb1_lists_28_images_of_14_children():
    records = build_datalist(CHASE_DATALIST, REAL_CHASE)
    assert len(records) == 28
    assert sorted({r["patient_id"] for r in records}) == [f"{i:02d}" for i in range(1, 15)]
    assert all(r["label"].endswith(r["case_id"] + "_1stHO.png") for r in records)


def test_listing_and_splitting_need_neither_torch_nor_monai():
    import subprocess
    import sys

    code = "import sys, medexp.data.datalist, medexp.data.splits; print(sorted({'torch', 'monai'} & set(sys.modules)))"
    assert (
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"
    )


def test_datalist_paths_may_not_climb_out_of_their_folder(tmp_path):
    from medexp.data.datalist import table_datalist
    from medexp.errors import DataError

    (tmp_path / "data").mkdir()
    (tmp_path / "secret.png").write_bytes(b"x")
    (tmp_path / "data" / "list.csv").write_text("image,label\n../secret.png,0\n")
    with pytest.raises(DataError, match="leaves the datalist's folder"):
        table_datalist(tmp_path / "data" / "list.csv")
    (tmp_path / "data" / "list.csv").write_text(f"image,label\n{tmp_path / 'secret.png'},0\n")
    assert table_datalist(tmp_path / "data" / "list.csv")[0]["image"] == str(tmp_path / "secret.png")
