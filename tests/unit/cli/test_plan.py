"""``medexp-plan`` as a user meets it: a light --help, one-line errors, and overrides Hydra could not parse (datalist
patterns with braces, regular expressions) arriving as typed."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from medexp.hydra_setup import quote_unparsable_value
from tests.unit.cli.test_train import HEAVY, assert_clear_error

BIN = Path(sys.executable).parent


def plan(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "medexp-plan"), *args], cwd=cwd, capture_output=True, text=True, timeout=600,
                          env={**os.environ, **(env or {})})


def test_help_imports_nothing_heavy(tmp_path):
    done = plan("--help", cwd=tmp_path, env={"PYTHONPROFILEIMPORTTIME": "1"})
    assert done.returncode == 0, done.stderr
    assert not HEAVY.findall(done.stderr), sorted(set(HEAVY.findall(done.stderr)))
    assert "budget" in done.stdout and "data:" in done.stdout


def test_a_bad_budget_and_an_unplannable_data_module_are_one_line(tmp_path):
    assert_clear_error(plan("data=folder_photos", f"data.root={tmp_path}", "budget=soon", cwd=tmp_path), "20m")
    assert_clear_error(plan("data=synthetic", "data._target_=medexp.data.base.MedexpDataModule",
                            f"output={tmp_path / 'p'}", cwd=tmp_path), "neither")


@pytest.mark.parametrize("arg, expected", [
    ("data.datalist.label_pattern=training_set/{stem}_Annotation.png",
     "data.datalist.label_pattern='training_set/{stem}_Annotation.png'"),
    ("data.datalist.patient_regex=^(\\d+)_", "data.datalist.patient_regex='^(\\d+)_'"),
    ("optimizer.lr=1e-3,3e-3", "optimizer.lr=1e-3,3e-3"),  # a sweep parses: left alone
    ("data.preprocessing={normalize: zscore}", "data.preprocessing={normalize: zscore}"),  # a dictionary
    ("data.root=${oc.env:HOME}", "data.root=${oc.env:HOME}"),
    ("--config-dir", "--config-dir"),
])
def test_overrides_hydra_cannot_parse_are_quoted_and_others_left_alone(arg, expected):
    assert quote_unparsable_value(arg) == expected


@pytest.mark.parametrize("look", [["--cfg", "job"], ["--help"]])
def test_experiment_auto_plans_nothing_to_show_help_or_the_config(tmp_path, look):
    done = subprocess.run([str(BIN / "medexp-train"), "experiment=auto", "data=pneumoniamnist", "budget=5m", *look],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPROFILEIMPORTTIME": "1", "MEDEXP_OUTPUT_ROOT": str(tmp_path)})
    assert done.returncode == 0, done.stderr[-2000:]
    assert not HEAVY.findall(done.stderr), sorted(set(HEAVY.findall(done.stderr)))
    assert not (tmp_path / "plans").exists()
