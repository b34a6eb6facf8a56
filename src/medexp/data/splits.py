"""Deterministic train/val/test splits grouped by patient, so no patient's images leak across sets.

A split is chosen in two steps, the test set first (it must not move when validation changes), then
validation from what is left:

==========  =====================================  ===============================================
kind        test set                               validation set
==========  =====================================  ===============================================
official    records whose ``split`` is "test"      records whose ``split`` is "val", else carved
ratio       ``test_ratio`` of the patients         carved
patients    ``test_patients``                      ``val_patients``, else carved
kfold       ``test_patients``, else official test  the records of provided fold ``fold``, else fold
                                                   ``fold`` of ``num_folds`` drawn with ``seed`` over the rest
auto        official if any record has a split, else ratio
==========  =====================================  ===============================================

"Carved" means ``val_count`` patients (or else ``val_ratio`` of all patients) drawn with ``seed`` from those left
after the test set; the rest train. Ratios count patients, not images. With ``stratify`` (classification), random
draws (ratio test sets, carved validation sets, drawn folds) keep each class's share of patients: patients are
grouped by the label of their first record and drawn evenly over the groups.

Provided folds: when the datalist gives each case a ``fold`` (MONAI Auto3DSeg's datalist does; nnU-Net's
``splits_final.json`` is read into the same key by ``medexp.data.datalist``), kfold validates on the cases of fold
``fold`` and trains on all the others, exactly as the provider split them; ``num_folds`` and ``seed`` are then
not used. A patient's cases must all lie in one fold.
Pure Python (no torch/monai) so the split can be computed and inspected anywhere.
"""

from __future__ import annotations

import inspect
import json
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from medexp.errors import DataError

Record = dict
KINDS = ("auto", "official", "ratio", "patients", "kfold")


@dataclass(frozen=True)
class Split:
    """Train/val/test record lists plus the settings that produced them (logged beside the run)."""

    train: list[Record]
    val: list[Record]
    test: list[Record]
    settings: Mapping[str, Any] = field(default_factory=dict)

    def patients(self, name: str) -> set[str]:
        return {record["patient_id"] for record in getattr(self, name)}

    def to_dict(self) -> dict[str, Any]:
        """Case and patient ids per set: enough to trace a result to exactly the data it saw."""
        return {
            "settings": dict(self.settings),
            "counts": {name: len(getattr(self, name)) for name in ("train", "val", "test")},
            **{
                name: [
                    {"case_id": r["case_id"], "patient_id": r["patient_id"], "image": r["image"]}
                    for r in getattr(self, name)
                ]
                for name in ("train", "val", "test")
            },
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)


def make_split(
    records: Sequence[Record],
    kind: str = "auto",
    val_ratio: float = 0.1,
    test_ratio: float = 0.2,
    val_count: int | None = None,
    test_patients: Sequence[Any] = (),
    val_patients: Sequence[Any] = (),
    fold: int = 0,
    num_folds: int = 5,
    seed: int = 0,
    stratify: bool = False,
) -> Split:
    """Split ``records`` as the table in this module's docstring says. Train and val must end up non-empty, and
    test too whenever the settings ask for one (``test_patients``, or kind ratio with ``test_ratio > 0``)."""
    if kind not in KINDS:
        raise DataError(f"split kind {kind!r} is unknown: use one of {list(KINDS)}")
    given = sum(1 for r in records if r.get("split"))
    if kind == "auto":
        kind = "official" if given else "ratio"
    elif kind == "ratio" and given:  # drawing a split of its own would silently drop the one the user wrote
        raise DataError(f"the datalist gives {given} of {len(records)} cases a split (train/val/test) but "
                        "data.split.kind=ratio draws its own: set data.split.kind=auto to use it, or drop the split "
                        "column")
    settings = {"kind": kind, "seed": seed, **({"stratify": True} if stratify else {})}
    rng = random.Random(seed)
    order = _strata_order if stratify else (lambda patients, _records: patients)
    test, pool = _choose_test(records, kind, test_ratio, test_patients, rng, order)
    provided = _provided_folds(pool) if kind == "kfold" else None
    if provided is not None:
        settings.update(fold=fold, num_folds=len(set(provided.values())), folds="provided")
        val, train = _take_provided_fold(pool, provided, fold)
    elif kind == "kfold":
        settings.update(fold=fold, num_folds=num_folds)
        val, train = _take_fold(pool, fold, num_folds, seed, order)
    elif kind == "official" and any(r.get("split") == "val" for r in pool):
        val, train = _partition(pool, lambda r: r.get("split") == "val")
    elif kind == "patients" and val_patients:
        val, train = _take_patients(pool, val_patients, "val_patients")
    else:
        settings.update(val_ratio=val_ratio, val_count=val_count)
        count = val_count if val_count is not None else _ratio_count(val_ratio, len(_patient_ids(records)))
        val, train = _take_random_patients(pool, count, rng, order)
    split = Split(train=train, val=val, test=test, settings=settings)
    _check_not_empty(split, test_expected=bool(test_patients) or (kind == "ratio" and test_ratio > 0))
    return split


def split_from_config(records: Sequence[Record], config: Mapping[str, Any] | None) -> Split:
    """``make_split`` from a config mapping (Hydra's ``data.split``); unknown keys are an error."""
    options = dict(config or {})
    known = set(inspect.signature(make_split).parameters) - {"records"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise DataError(f"unknown split option(s) {unknown}: valid options are {sorted(known)}")
    return make_split(records, **options)


def _choose_test(records, kind, test_ratio, test_patients, rng, order) -> tuple[list[Record], list[Record]]:
    if test_patients:
        return _take_patients(records, test_patients, "test_patients")
    if kind in ("official", "kfold"):
        return _partition(records, lambda r: r.get("split") == "test")
    if kind == "ratio":
        return _take_random_patients(records, _ratio_count(test_ratio, len(_patient_ids(records))), rng, order)
    return [], list(records)


def _partition(records, belongs) -> tuple[list[Record], list[Record]]:
    chosen = [r for r in records if belongs(r)]
    return chosen, [r for r in records if not belongs(r)]


def _patient_ids(records: Sequence[Record]) -> list[str]:
    """Unique patient ids in sorted order: the fixed starting point every seeded shuffle draws from."""
    return sorted({r["patient_id"] for r in records})


def _take_patients(records, wanted: Sequence[Any], option: str) -> tuple[list[Record], list[Record]]:
    wanted_ids = {str(p) for p in wanted}
    known = _patient_ids(records)
    missing = sorted(wanted_ids - set(known))
    if missing:
        raise DataError(
            f"split.{option} {missing} are not patient ids of the remaining cases (e.g. {known[:4]}): "
            "fix the list (quote ids like '01' in YAML, or they become integers)"
        )
    return _partition(records, lambda r: r["patient_id"] in wanted_ids)


def _take_random_patients(records, count: int, rng: random.Random, order) -> tuple[list[Record], list[Record]]:
    patients = _patient_ids(records)
    rng.shuffle(patients)
    patients = order(patients, records)
    if count and order is _strata_order:  # evenly spaced over the class-sorted patients: each class its share
        step = len(patients) / count
        patients = [patients[int(i * step + step / 2)] for i in range(count)]
    return _take_patients(records, patients[:count], "val_count/val_ratio") if count else ([], list(records))


def _ratio_count(ratio: float, n_patients: int) -> int:
    """Patients for a ratio of the whole dataset; a positive ratio always gets at least one patient."""
    return max(1, round(ratio * n_patients)) if ratio > 0 else 0


def _strata_order(patients: list[str], records: Sequence[Record]) -> list[str]:
    """Shuffled patients regrouped by class (the label of their first record), shuffled order kept within each:
    dealing this list round-robin, or taking evenly spaced entries, gives every class its share."""
    label = {}
    for record in records:
        label.setdefault(record["patient_id"], str(record.get("label")))
    return sorted(patients, key=lambda patient: label[patient])


def _take_fold(records, fold: int, num_folds: int, seed: int, order) -> tuple[list[Record], list[Record]]:
    """Patients shuffled with ``seed`` and dealt round-robin into folds: each lands in exactly one val fold."""
    patients = _patient_ids(records)
    if not 0 <= fold < num_folds or num_folds < 2:
        raise DataError(
            f"split fold={fold} with num_folds={num_folds} is invalid: need 0 <= fold < num_folds, num_folds >= 2"
        )
    if len(patients) < num_folds:
        raise DataError(f"{len(patients)} patients cannot fill num_folds={num_folds} folds: lower split.num_folds")
    random.Random(seed).shuffle(patients)
    patients = order(patients, records)
    return _take_patients(records, patients[fold::num_folds], "fold")


def _provided_folds(records: Sequence[Record]) -> dict[str, int] | None:
    """Patient id -> fold given by the datalist, or None when no record carries a ``fold``."""
    with_fold = [r for r in records if r.get("fold") not in (None, "")]
    if not with_fold:
        return None
    if len(with_fold) < len(records):
        lacking = next(r for r in records if r.get("fold") in (None, ""))
        raise DataError(
            f"case {lacking['case_id']} has no fold while {len(with_fold)} other cases have one: give every "
            "non-test case a fold in the datalist (or none, to draw folds with split.seed)"
        )
    folds: dict[str, int] = {}
    for record in with_fold:
        fold = _fold_number(record)
        patient = record["patient_id"]
        if folds.setdefault(patient, fold) != fold:
            raise DataError(
                f"patient {patient} has cases in folds {folds[patient]} and {fold} of the datalist: put all of a "
                "patient's cases in one fold, or the fold leaks them into training"
            )
    return folds


def _fold_number(record: Record) -> int:
    try:
        return int(record["fold"])
    except (TypeError, ValueError):
        raise DataError(
            f"case {record['case_id']} has fold {record['fold']!r}: a fold is an integer (0, 1, ...)"
        ) from None


def _take_provided_fold(records, folds: Mapping[str, int], fold: int) -> tuple[list[Record], list[Record]]:
    numbers = sorted(set(folds.values()))
    if fold not in numbers:
        raise DataError(f"split fold={fold} is not one of the datalist's folds {numbers}: set data.fold to one of them")
    if len(numbers) < 2:
        raise DataError(f"the datalist provides only fold {numbers[0]}: give the cases at least two folds")
    return _partition(records, lambda r: folds[r["patient_id"]] == fold)


def _check_not_empty(split: Split, test_expected: bool) -> None:
    expected = ("train", "val", "test") if test_expected else ("train", "val")
    for name in expected:
        if not getattr(split, name):
            raise DataError(
                f"the {name} set of split {dict(split.settings)} is empty: give it cases (ratios, patient lists, "
                "or the datalist's split column)"
            )
