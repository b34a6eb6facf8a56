"""``medexp.data.base``: every data module a config can choose declares the contract (its kind of task, whether it
holds stored arrays) and implements its methods, and its kind is the kind of the task its recipes pair it with."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hydra.utils import get_class

from medexp.data.base import TASK_KINDS, MedexpDataModule

CONF = Path(__file__).resolve().parents[3] / "conf"
DATA_CLASSES = sorted({yaml.safe_load(path.read_text()).get("_target_") for path in (CONF / "data").glob("*.yaml")} - {None})
CONTRACT = ("class_counts", "sample_count", "fingerprint", "prediction_loader")


@pytest.mark.parametrize("target", DATA_CLASSES)
def test_every_data_module_declares_and_implements_the_contract(target):
    data = get_class(target)
    assert issubclass(data, MedexpDataModule)
    assert data.task_kind in TASK_KINDS
    for method in CONTRACT:
        assert getattr(data, method) is not getattr(MedexpDataModule, method), f"{target} lacks {method}"


@pytest.mark.parametrize("target", DATA_CLASSES)
def test_only_in_memory_classification_sets_hold_arrays(target):
    data = get_class(target)
    assert data.holds_arrays == (data.task_kind == "classification")


def test_the_task_of_each_kind_declares_the_same_kind():
    for path in (CONF / "task").glob("*.yaml"):
        target = yaml.safe_load(path.read_text()).get("_target_")
        if target is not None:  # options that extend another take its class
            task = get_class(target)
            assert task.task_kind in TASK_KINDS and path.stem.startswith(task.task_kind), path.name
