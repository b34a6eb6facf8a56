"""Two runs started in the same second never share a run folder: each prints and writes its own."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent


@pytest.mark.slow
def test_runs_started_together_in_a_taken_second_get_a_folder_each(tmp_path):
    out = tmp_path / "outputs"
    env = {**os.environ, "MEDEXP_OUTPUT_ROOT": str(out)}
    env.pop("MLFLOW_TRACKING_URI", None)
    now = time.time()
    taken = []  # the folders of the next two minutes' seconds are held by another run already
    for second in range(120):
        stamp = time.localtime(now + second)
        folder = out / "runs" / time.strftime("%Y-%m-%d", stamp) / f"{time.strftime('%H-%M-%S', stamp)}_clash"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "other_run.txt").write_text("not yours")
        taken.append(folder)
    common = ["name=clash", "trainer.max_epochs=1", "logger=none", "data.num_train=64", "data.num_val=32",
              "data.num_test=32"]
    runs = [subprocess.Popen([str(BIN / "medexp-train"), *common, *extra], cwd=tmp_path, env=env, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            for extra in (["seed=1"], ["seed=2", "model=resnet10"])]
    outputs = [run.communicate(timeout=600)[0] for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs[0][-2000:] + outputs[1][-2000:]
    folders = [Path(re.findall(r"Run folder: (.*)", text)[-1]) for text in outputs]
    assert folders[0] != folders[1]
    for folder, target in zip(folders, ("medexp.models.cnn.ClassicCNN", "monai.networks.nets.ResNet"), strict=True):
        assert re.fullmatch(r"\d\d-\d\d-\d\d_clash-\d+", folder.name), folder
        assert (folder / "checkpoints" / "last.ckpt").is_file()
        assert f"_target_: {target}" in (folder / ".hydra" / "config.yaml").read_text()
    for folder in taken:
        assert [p.name for p in folder.iterdir()] == ["other_run.txt"]
