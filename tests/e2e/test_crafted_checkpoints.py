"""A checkpoint's config is data: every command that reads a checkpoint (eval, predict, export, fine-tuning with
``model.pretrained=``, resuming with ``ckpt_path=``) refuses one that holds an interpolation, in one line, before
anything of it runs: ``${evil}`` pointing at a ``_target_: shutil.copyfile`` node, ``${oc.decode:...}`` decoding
one, ``${oc.env:...}`` reading a secret. Each of these ran the copy (or printed the secret) before the fix."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BIN = Path(sys.executable).parent
SECRET = "s3cret-token-value"
SMALL = ["data.num_train=64", "data.num_val=32", "data.num_test=32", "data.batch_size=32",
         "callbacks.progress_bar.refresh_rate=0"]


def run(command: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "MEDEXP_TEST_SECRET": SECRET, "MLFLOW_TRACKING_URI": f"sqlite:///{cwd / 'mlflow.db'}"}
    return subprocess.run([str(BIN / command), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def best_checkpoint(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("trained")
    done = run("medexp-train", "trainer.max_epochs=1", "logger=csv", *SMALL, f"hydra.run.dir={out / 'run'}", cwd=out)
    assert done.returncode == 0, done.stderr[-2000:]
    return next((out / "run" / "checkpoints").glob("best-*.ckpt"))


def craft(source: Path, kind: str, victim: Path, out: Path) -> Path:
    """``source`` with one interpolation planted in its config (the trust issue's reproductions)."""
    ckpt = torch.load(source, map_location="cpu", weights_only=True)
    config = ckpt["hyper_parameters"]["config"]
    copy = {"_target_": "shutil.copyfile", "_args_": ["/dev/null", str(victim)]}
    if kind == "reference":
        config["evil"] = copy
        config["model"]["image_size"] = "${evil}"
    elif kind == "decode":
        config["model"]["image_size"] = f"${{oc.decode:'{{_target_: shutil.copyfile, _args_: [/dev/null, {victim}]}}'}}"
    else:  # env
        config["data"]["class_names"] = ["${oc.env:MEDEXP_TEST_SECRET}", "other"]
    torch.save(ckpt, out)
    return out


def command_line(command: str, ckpt: Path, tmp_path: Path) -> tuple[str, list[str]]:
    if command == "eval":
        return "medexp-eval", [f"ckpt_path={ckpt}", "log_to=none"]
    if command == "predict":
        npz = tmp_path / "inputs.npz"
        import numpy as np

        np.savez(npz, test_images=np.zeros((2, 28, 28), np.uint8))
        return "medexp-predict", [f"ckpt_path={ckpt}", f"inputs={npz}", f"output_dir={tmp_path / 'predictions'}"]
    if command == "export":
        return "medexp-export", [f"ckpt_path={ckpt}", "format=torchscript", f"output={tmp_path / 'model.pt'}"]
    train = ["trainer.max_epochs=1", "logger=none", *SMALL, f"hydra.run.dir={tmp_path / 'run'}"]
    if command == "finetune":
        return "medexp-train", [f"model.pretrained={ckpt}", *train]
    return "medexp-train", [f"ckpt_path={ckpt}", *train]  # resume


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["reference", "decode", "env"])
@pytest.mark.parametrize("command", ["eval", "predict", "export", "finetune", "resume"])
def test_an_interpolation_in_a_checkpoint_is_refused_and_runs_nothing(best_checkpoint, tmp_path, command, kind):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    evil = craft(best_checkpoint, kind, victim, tmp_path / "evil.ckpt")
    executable, args = command_line(command, evil, tmp_path)
    done = run(executable, *args, cwd=tmp_path)
    output = done.stdout + done.stderr
    assert done.returncode == 2, output[-2000:]
    assert "Traceback" not in output, output[-2000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "not plain data" in errors[0] and "nothing was run" in errors[0], output[-2000:]
    assert victim.read_text() == "keep me"
    assert SECRET not in output
    assert not (tmp_path / "predictions" / "predictions.csv").exists() and not (tmp_path / "model.pt").exists()
