"""The GPU check's parts that run anywhere: both sides of a comparison at one precision and augmentation, the
wheel list gpu_site.sh downloads, and its folder kept out of git."""
from __future__ import annotations

import json
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO / "benchmarks"))
import bench_train  # noqa: E402


@pytest.mark.parametrize("precision", ["32", "bf16-mixed"])
@pytest.mark.parametrize("augmentation", ["none", "light"])
def test_plain_loop_and_medexp_run_at_the_same_precision_and_augmentation(tmp_path, monkeypatch, precision,
                                                                          augmentation):
    commands = []

    def fake_timed(command, env):  # records the command, answers as each side would
        commands.append(command)
        if "plain_loop.py" in command[1]:
            return 1.0, 100.0, json.dumps({"img_per_s": 10.0, "test_acc": 0.5})
        run_dir = Path(next(a for a in command if a.startswith("hydra.run.dir=")).split("=", 1)[1])
        (run_dir / "csv").mkdir(parents=True)
        (run_dir / "csv" / "metrics.csv").write_text("test/accuracy\n0.5\n")
        (run_dir / "timing.json").write_text(json.dumps({"first_step_at": 0.0, "train_images_per_second": 9.0}))
        return 1.0, 100.0, ""

    monkeypatch.setattr(bench_train, "timed", fake_timed)
    result = bench_train.bench(tmp_path / "x.npz", "resnet18", 1, "cpu", True, precision, tmp_path, "csv",
                               augmentation)
    plain, medexp = commands
    assert plain[plain.index("--precision") + 1] == precision
    assert plain[plain.index("--augmentation") + 1] == augmentation
    assert f"trainer.precision={precision}" in medexp and f"augmentation={augmentation}" in medexp
    assert "model.small_input=true" in medexp  # the plain loop's resnet18 has the 28 px stem too
    assert result["throughput_ratio"] == 0.9


def test_site_requirements_are_what_the_machine_lacks_at_this_checkouts_versions(tmp_path):
    present = tmp_path / "present.txt"
    present.write_text("# on the machine\ntorch\nnumpy\npytorch-lightning\n")
    script = [sys.executable, str(REPO / "benchmarks" / "gpu_site_requirements.py"), str(present)]
    wanted = dict(line.split("==") for line in subprocess.run(script, capture_output=True, text=True,
                                                                check=True).stdout.split())
    for name in ("hydra-core", "omegaconf", "antlr4-python3-runtime", "monai", "mlflow", "nibabel"):
        assert wanted[name] == version(name)
    assert not {"torch", "numpy", "pytorch-lightning"} & wanted.keys()
    stopped_at = subprocess.run([*script, "--present"], capture_output=True, text=True, check=True).stdout.split()
    assert set(stopped_at) == {"torch", "numpy", "pytorch-lightning"}


def test_the_gpu_site_folder_is_not_tracked():
    assert subprocess.run(["git", "check-ignore", "-q", ".gpu_site/wheels/x.whl"], cwd=REPO).returncode == 0
