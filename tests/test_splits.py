"""Patient-grouped, deterministic splits."""

import json

import pytest

from medexp.data.splits import make_split, split_from_config
from medexp.errors import DataError


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
