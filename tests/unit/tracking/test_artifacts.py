"""``medexp.tracking.artifacts``: the run a checkpoint belongs to, and the best checkpoints of a sweep's children."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from medexp.errors import ConfigError
from medexp.tracking.artifacts import find_sweep_parent, run_of_checkpoint
from medexp.tracking.store import RUN_ID_FILE


def test_the_run_of_a_checkpoint(tmp_path):
    assert run_of_checkpoint("runs:/abc123/model") == "abc123"
    best = tmp_path / "run" / "checkpoints" / "best.ckpt"
    best.parent.mkdir(parents=True)
    assert run_of_checkpoint(str(best)) is None  # not written by medexp-train with MLflow
    (tmp_path / "run" / RUN_ID_FILE).write_text("f" * 32 + "\n")
    assert run_of_checkpoint(str(best)) == "f" * 32


class Store:
    """The two searches ``find_sweep_parent`` makes, over a few runs."""

    def __init__(self, runs):
        self.runs = runs

    def search_runs(self, experiments, query, max_results=1000, order_by=None):
        if query.startswith("tags.`sweep.name`"):
            name = query.split("'")[1]
            return [r for r in self.runs if r.data.tags.get("sweep.name") == name]
        run_id = query.split("'")[1]
        return [r for r in self.runs if r.info.run_id == run_id]


def run(run_id, **tags):
    return SimpleNamespace(info=SimpleNamespace(run_id=run_id), data=SimpleNamespace(tags=tags))


def test_a_sweep_parent_by_name_or_id():
    parent = run("a" * 32, **{"sweep.name": "folds", "sweep.kind": "grid"})
    store = Store([parent, run("b" * 32, **{"sweep.name": "folds"})])  # a child carries the name, not the kind
    assert find_sweep_parent(store, "0", "folds") is parent
    assert find_sweep_parent(store, "0", "a" * 32) is parent
    with pytest.raises(ConfigError, match="no sweep 'other'"):
        find_sweep_parent(store, "0", "other")
