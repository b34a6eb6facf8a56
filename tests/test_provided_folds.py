"""Folds given with the data (MONAI Auto3DSeg's ``fold`` key, nnU-Net's ``splits_final.json``) drive ``data.fold``."""

import json
from pathlib import Path

import pytest

from medexp.data.datalist import build_datalist
from medexp.data.splits import make_split
from medexp.errors import DataError

REAL_HIPPOCAMPUS = Path(__file__).resolve().parents[2] / "shared" / "data" / "Task04_Hippocampus"


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


@pytest.mark.slow
def test_sweep_over_provided_folds_runs_each_fold_and_summarises_on_the_parent(tmp_path, tracking_uri):
    """``-m data.fold=0,1,2`` on a datalist with 3 folds: one child per fold, mean ± std of the objective on the parent."""
    import os
    import statistics
    import subprocess
    import sys

    from mlflow.tracking import MlflowClient

    from fixtures_data import write_decathlon_like

    root = write_decathlon_like(tmp_path / "Task", n_cases=6).parent
    rows = json.loads((root / "dataset.json").read_text())["training"]
    (root / "folds.json").write_text(json.dumps({"training": [{**row, "fold": i % 3} for i, row in enumerate(rows)]}))
    done = subprocess.run(
        [str(Path(sys.executable).parent / "medexp-train"), "-m", "experiment=hippocampus", f"data.root={root}",
         "data.datalist.path=folds.json", "data.fold=0,1,2", "data.patch_size=[16,16,8]", "model.filters=[4,8,16,32]",
         "trainer.max_epochs=1", "trainer.check_val_every_n_epoch=1", "+trainer.limit_train_batches=2",
         "trainer.precision=32", "callbacks.progress_bar.refresh_rate=0"],
        capture_output=True, text=True, timeout=600, env={**os.environ, "MEDEXP_OUTPUT_ROOT": str(tmp_path / "out")})
    assert done.returncode == 0, done.stderr[-3000:]
    client = MlflowClient(tracking_uri)
    runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    (parent,) = [r for r in runs if r.data.tags.get("sweep.kind") == "grid"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(r.data.tags["sweep.param.data.fold"] for r in children) == ["0", "1", "2"]
    for child in children:  # the provided folds (2 cases each), not 5 folds drawn over the 6 cases
        fingerprint = json.loads(Path(client.download_artifacts(child.info.run_id, "dataset_fingerprint.json",
                                                                 str(tmp_path))).read_text())
        assert fingerprint["cases_per_split"] == {"train": 4, "val": 2, "test": 0}
    objectives = [r.data.metrics["sweep/objective"] for r in children]
    assert objectives == pytest.approx([r.data.metrics["best/val/dice"] for r in children])
    assert parent.data.metrics["mean/val/dice"] == pytest.approx(statistics.mean(objectives))
    assert parent.data.metrics["std/val/dice"] == pytest.approx(statistics.stdev(objectives))
    # the terminal's last word is the spread over the folds, not a "best" fold
    mean, std = parent.data.metrics["mean/val/dice"], parent.data.metrics["std/val/dice"]
    assert f"Mean ± std over data.fold: val/dice {mean:.4f} ± {std:.4f} (3 runs)" in done.stdout
    assert "Best: data.fold" not in done.stdout
