"""A segmentation run without a test split (the hippocampus recipe's case) ends by listing the monitored Dice per
structure, from the epoch whose checkpoint is kept."""
from __future__ import annotations

import json

from tests.fixtures_data import write_decathlon_like
from tests.unit.workflows.test_predict import TINY_UNET, train


def test_a_run_without_test_ends_with_dice_per_structure(tmp_path, capsys):
    root = write_decathlon_like(tmp_path / "Task", n_cases=4).parent
    train(tmp_path, "data=decathlon", f"data.root={root}", *TINY_UNET, "data.num_classes=3",
          "+data.class_names=[background,anterior,posterior]", "data.preprocessing.spacing=[3.0,3.0,3.0]",
          "data.preprocessing.clip_percentiles=null", "data.patch_size=[8,8,8]", "data.split.val_ratio=0.25",
          "data.split.test_ratio=0.25", "trainer.max_epochs=2")
    out = capsys.readouterr().out
    block = out[out.index("medexp: run finished"):].splitlines()
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())["metrics"]
    assert block[1] == f"  val/dice: {saved['val/dice']:.4g}" and block[2] == "  per class (val/dice):"
    assert block[3:5] == [f"    val/dice_{name}: {saved[f'val/dice_{name}']:.4g}" for name in ("anterior", "posterior")]
    assert saved["val/dice"] == saved["best/val/dice"]  # the kept epoch's, with its per-structure values
