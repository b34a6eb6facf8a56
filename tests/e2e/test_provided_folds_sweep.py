"""A sweep over the folds given with the data: one child per fold, the mean ± std on the parent."""
import json
from pathlib import Path

import pytest


@pytest.mark.slow
def test_sweep_over_provided_folds_runs_each_fold_and_summarises_on_the_parent(tmp_path, tracking_uri):
    """``-m data.fold=0,1,2`` on a datalist with 3 folds: one child per fold, mean ± std of the objective on the parent."""
    import os
    import statistics
    import subprocess
    import sys

    from mlflow.tracking import MlflowClient

    from tests.fixtures_data import write_decathlon_like

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
