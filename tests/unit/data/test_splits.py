"""Patient-grouped, deterministic splits, and folds given with the data (MONAI Auto3DSeg's ``fold`` key, nnU-Net's
``splits_final.json``) driving ``data.fold``."""
import json
from pathlib import Path

import pytest

from medexp.data.datalist import build_datalist
from medexp.data.splits import make_split, split_from_config
from medexp.errors import DataError
from tests.conftest import SHARED_DATA


def records(n_patients=10, per_patient=2, splits=None):
    return [
        {
            "image": f"/d/p{p:02d}_{i}.png",
            "case_id": f"p{p:02d}_{i}",
            "patient_id": f"{p:02d}",
            "split": (splits or {}).get(p),
        }
        for p in range(1, n_patients + 1)
        for i in range(per_patient)
    ]


def assert_no_patient_leak(split):
    assert not split.patients("train") & split.patients("val")
    assert not split.patients("train") & split.patients("test")
    assert not split.patients("val") & split.patients("test")


def test_ratio_split_groups_patients_and_is_deterministic():
    data = records(20, per_patient=3)
    split = make_split(data, kind="ratio", val_ratio=0.2, test_ratio=0.2, seed=3)
    assert_no_patient_leak(split)
    assert (len(split.patients("train")), len(split.patients("val")), len(split.patients("test"))) == (12, 4, 4)
    assert len(split.train) + len(split.val) + len(split.test) == 60
    assert make_split(data, kind="ratio", val_ratio=0.2, test_ratio=0.2, seed=3) == split
    assert make_split(data, kind="ratio", val_ratio=0.2, test_ratio=0.2, seed=4).test != split.test


def test_split_keeps_datalist_order_within_each_set():
    data = records(10)
    split = make_split(data, kind="ratio", seed=1)
    for name in ("train", "val", "test"):
        subset = getattr(split, name)
        assert subset == sorted(subset, key=data.index)


def test_auto_uses_official_split_and_carves_val_from_train():
    data = records(10, splits={p: "test" if p > 8 else "train" for p in range(1, 11)})
    split = make_split(data, val_count=2, seed=0)
    assert split.settings["kind"] == "official"
    assert split.patients("test") == {"09", "10"}
    assert len(split.patients("val")) == 2 and not split.patients("val") & {"09", "10"}
    assert_no_patient_leak(split)


def test_a_ratio_split_refuses_to_drop_the_split_a_datalist_gives():
    data = records(10, splits={p: "test" if p > 8 else "train" for p in range(1, 11)})
    with pytest.raises(DataError, match="gives 20 of 20 cases a split .* data.split.kind=auto"):
        make_split(data, kind="ratio", seed=0)
    assert make_split(records(10), kind="ratio", seed=0).settings["kind"] == "ratio"  # none given: drawn


def test_official_val_records_are_used_as_they_are():
    data = records(4, splits={1: "train", 2: "train", 3: "val", 4: "test"})
    split = make_split(data, kind="official")
    assert (split.patients("train"), split.patients("val"), split.patients("test")) == ({"01", "02"}, {"03"}, {"04"})


def test_chasedb1_protocol_patient_lists():
    data = records(14)
    split = make_split(data, kind="patients", test_patients=["11", "12", "13", "14"], val_count=2, seed=0)
    assert split.patients("test") == {"11", "12", "13", "14"}
    assert len(split.val) == 4 and len(split.train) == 16
    assert split.patients("val") < {f"{p:02d}" for p in range(1, 11)}
    explicit = make_split(data, kind="patients", test_patients=["11", "12", "13", "14"], val_patients=["09", "10"])
    assert explicit.patients("val") == {"09", "10"}


def test_unknown_patient_id_hints_at_yaml_quoting():
    with pytest.raises(DataError, match=r"\['1'\] are not patient ids.*quote ids"):
        make_split(records(14), kind="patients", test_patients=[1])


def test_kfold_covers_every_non_test_patient_exactly_once():
    data = records(13, splits={13: "test"})
    folds = [make_split(data, kind="kfold", fold=k, num_folds=4, seed=7) for k in range(4)]
    val_patients = [p for split in folds for p in split.patients("val")]
    assert sorted(val_patients) == [f"{p:02d}" for p in range(1, 13)]
    for split in folds:
        assert split.patients("test") == {"13"}
        assert_no_patient_leak(split)
        assert split.settings["fold"] in range(4)
    assert make_split(data, kind="kfold", fold=2, num_folds=4, seed=7) == folds[2]


def test_kfold_with_explicit_test_patients():
    split = make_split(records(10), kind="kfold", fold=0, num_folds=3, test_patients=["10"])
    assert split.patients("test") == {"10"} and "10" not in split.patients("val") | split.patients("train")


@pytest.mark.parametrize(
    "options, message",
    [
        ({"kind": "ratio", "val_ratio": 0.0, "test_ratio": 0.2}, "val set"),
        ({"kind": "patients", "test_patients": ["01", "02"], "val_patients": ["01"]}, "not patient ids"),
        ({"kind": "patients", "test_patients": ["01"], "val_count": 1}, "train set"),
        ({"kind": "kfold", "fold": 3, "num_folds": 3}, "fold=3"),
        ({"kind": "kfold", "num_folds": 5}, "cannot fill"),
        ({"kind": "official"}, "val set"),
        ({"kind": "random"}, "kind 'random'"),
    ],
)
def test_impossible_or_empty_splits_are_errors(options, message):
    data = records(2, splits=None)
    if options.get("kind") == "official":
        data = records(2, splits={1: "train", 2: "test"})
        options = {**options, "val_ratio": 0.0}
    with pytest.raises(DataError, match=message):
        make_split(data, **options)


def test_config_with_unknown_option_is_rejected():
    with pytest.raises(DataError, match="test_patient"):
        split_from_config(records(5), {"kind": "patients", "test_patient": ["01"]})


def test_to_json_lists_ids_per_set():
    split = split_from_config(records(10), {"kind": "ratio", "seed": 2})
    content = json.loads(split.to_json())
    assert content["settings"]["seed"] == 2
    assert content["counts"] == {"train": len(split.train), "val": len(split.val), "test": len(split.test)}
    assert [row["case_id"] for row in content["test"]] == [r["case_id"] for r in split.test]


REAL_HIPPOCAMPUS = SHARED_DATA / "Task04_Hippocampus"


def write_cases(root: Path, names, image_suffix: str = "") -> list[dict]:
    """Empty image/label files (listing never opens them) and their datalist rows, paths relative to ``root``."""
    rows = []
    for name in names:
        for folder, suffix in (("imagesTr", image_suffix), ("labelsTr", "")):
            (root / folder).mkdir(parents=True, exist_ok=True)
            (root / folder / f"{name}{suffix}.nii.gz").touch()
        rows.append({"image": f"imagesTr/{name}{image_suffix}.nii.gz", "label": f"labelsTr/{name}.nii.gz"})
    return rows


def auto3dseg_datalist(root: Path, folds: dict[str, int]) -> Path:
    rows = write_cases(root, folds)
    for row, fold in zip(rows, folds.values(), strict=True):
        row["fold"] = fold
    path = root / "folds.json"
    path.write_text(json.dumps({"training": rows, "testing": [{"image": "imagesTs/unlabelled_900.nii.gz"}]}))
    return path


def ids(records) -> list[str]:
    return [r["case_id"] for r in records]


def test_auto3dseg_fold_key_gives_validation_and_training_sets(tmp_path):
    folds = {"c0": 0, "c1": 1, "c2": 2, "c3": 0, "c4": 1, "c5": 2, "c6": 2}
    auto3dseg_datalist(tmp_path, folds)
    records = build_datalist({"kind": "decathlon", "path": "folds.json"}, tmp_path)
    for fold in range(3):
        # num_folds and seed would draw other folds: provided folds must ignore them
        split = make_split(records, kind="kfold", fold=fold, num_folds=5, seed=3)
        assert ids(split.val) == [case for case, f in folds.items() if f == fold]
        assert ids(split.train) == [case for case, f in folds.items() if f != fold]
        assert split.test == []  # the unlabelled official test cases are not listed
        assert dict(split.settings) == {"kind": "kfold", "seed": 3, "fold": fold, "num_folds": 3, "folds": "provided"}


def test_nnunet_splits_final_matches_cases_with_or_without_the_channel_suffix(tmp_path):
    names = [f"case_{i:03d}" for i in range(6)]
    rows = write_cases(tmp_path, names, image_suffix="_0000")  # nnU-Net's raw layout: imagesTr/case_000_0000.nii.gz
    (tmp_path / "dataset.json").write_text(json.dumps({"training": rows}))
    val_lists = [["case_004", "case_001"], ["case_000", "case_005"], ["case_002", "case_003"]]
    splits = [{"train": sorted(set(names) - set(val)), "val": val} for val in val_lists]
    (tmp_path / "splits_final.json").write_text(json.dumps(splits))
    records = build_datalist({"kind": "decathlon", "path": "dataset.json", "folds_file": "splits_final.json"},
                             tmp_path)
    for fold, entry in enumerate(splits):
        split = make_split(records, kind="kfold", fold=fold)
        assert sorted(ids(split.val)) == sorted(f"{case}_0000" for case in entry["val"])
        assert sorted(ids(split.train)) == sorted(f"{case}_0000" for case in entry["train"])


@pytest.mark.parametrize("splits, message", [
    ([{"train": [], "val": ["a", "b"]}, {"train": [], "val": ["b", "c"]}], "case b is in the val list of folds 0 and 1"),
    ([{"train": ["a"], "val": ["b"]}, {"train": ["b"], "val": ["a"]}], "case c is in no val list"),
    ({"fold0": {"val": ["a"]}}, "not an nnU-Net splits_final.json"),
])
def test_bad_splits_final_is_one_clear_line(tmp_path, splits, message):
    rows = write_cases(tmp_path, ["a", "b", "c"])
    (tmp_path / "list.json").write_text(json.dumps(rows))
    (tmp_path / "splits_final.json").write_text(json.dumps(splits))
    with pytest.raises(DataError, match=message):
        build_datalist({"kind": "json", "path": "list.json", "folds_file": "splits_final.json"}, tmp_path)


def provided(folds: dict[str, object], patients: dict[str, str] | None = None) -> list[dict]:
    return [{"image": f"/d/{case}.nii.gz", "case_id": case, "patient_id": (patients or {}).get(case, case),
             "split": None, "fold": fold} for case, fold in folds.items()]


@pytest.mark.parametrize("records, fold, message", [
    (provided({"a": 0, "b": 1}), 7, r"fold=7 is not one of the datalist's folds \[0, 1\]"),
    (provided({"a": 0, "b": None, "c": 1}), 0, "case b has no fold while 2 other cases have one"),
    (provided({"a": 0, "b": 1, "c": 1}, patients={"a": "p", "b": "p"}), 0, "patient p has cases in folds 0 and 1"),
    (provided({"a": 0, "b": "first"}), 0, "case b has fold 'first'"),
    (provided({"a": 0, "b": 0}), 0, "provides only fold 0"),
])
def test_inconsistent_provided_folds_are_errors(records, fold, message):
    with pytest.raises(DataError, match=message):
        make_split(records, kind="kfold", fold=fold)


def test_folds_from_a_csv_column_are_read_as_numbers(tmp_path):
    write_cases(tmp_path, ["a", "b", "c"])
    (tmp_path / "list.csv").write_text("image,label,fold\n" + "".join(
        f"imagesTr/{n}.nii.gz,labelsTr/{n}.nii.gz,{f}\n" for n, f in (("a", 1), ("b", 0), ("c", 1))))
    split = make_split(build_datalist({"kind": "csv", "path": "list.csv"}, tmp_path), kind="kfold", fold=1)
    assert (ids(split.val), ids(split.train)) == (["a", "c"], ["b"])


@pytest.mark.skipif(not REAL_HIPPOCAMPUS.is_dir(), reason="shared Task04_Hippocampus not present")
def test_real_hippocampus_folds_partition_the_260_labelled_cases():
    records = build_datalist({"kind": "decathlon", "path": "msd_task04_hippocampus_folds.json"}, REAL_HIPPOCAMPUS)
    splits = [make_split(records, kind="kfold", fold=fold) for fold in range(5)]
    val_ids = [case for split in splits for case in ids(split.val)]
    assert len(records) == 260 and sorted(val_ids) == sorted(ids(records))  # each case validates exactly once
    assert [len(split.val) for split in splits] == [52] * 5
    for split in splits:
        assert not set(ids(split.train)) & set(ids(split.val)) and split.test == []
    # the official test cases (no public labels) stay out of every set
    assert not any("imagesTs" in r["image"] for r in records)


def test_data_fold_override_selects_the_provided_fold(make_cfg, tmp_path):
    """``data=hippocampus data.fold=k`` as Hydra composes it: the data module validates on fold k."""
    from hydra.utils import instantiate

    auto3dseg_datalist(tmp_path / "Task", {"c0": 0, "c1": 1, "c2": 0, "c3": 1})
    cfg = make_cfg("data=hippocampus", f"data.root={tmp_path / 'Task'}", "data.datalist.path=folds.json",
                   "data.fold=1", "+data.validate=false")
    datamodule = instantiate(cfg.data)
    datamodule.setup()
    assert (ids(datamodule.split.val), ids(datamodule.split.train)) == (["c1", "c3"], ["c0", "c2"])
