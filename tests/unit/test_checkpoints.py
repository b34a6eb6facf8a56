"""``medexp.checkpoints``: a checkpoint's config is checked as data before anything is built from it; checkpoints
are found by path, ``last``, MLflow URI or sweep; slimmed checkpoints keep only what inference needs.

Checkpoints: only trusted targets are instantiated, and a failed write leaves the previous file whole.

A checkpoint write that runs out of room (here a file size limit, as a full disk stops torch's zip writer)
fails in one line, leaves no ``.partial`` file and keeps the previous ``last.ckpt`` whole."""
from __future__ import annotations

import errno
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from medexp import checkpoints
from medexp.checkpoints import UntrustedCheckpointError, check_data
from medexp.errors import ConfigError, DataError

COPY = {"_target_": "shutil.copyfile", "_args_": ["/dev/null", "/tmp/victim"]}


@pytest.mark.parametrize("config", [
    {"evil": COPY, "model": {"_target_": "torch.nn.Identity", "size": "${evil}"}},
    {"model": {"_target_": "torch.nn.Identity", "size": "${oc.decode:'{_target_: shutil.copyfile}'}"}},
    {"data": {"class_names": ["${oc.env:HOME}", "b"]}},
    {"data": {"root": "/data/${oc.env:USER}/x"}},  # inside a longer text too
    {"data": {"root": "\\${escaped}"}},  # an escaped one resolves to text, but nothing medexp saves looks like it
    {"data": {"${key}": 1}},
    {"data": {"mean": torch.zeros(2)}},  # not a plain value
])
def test_a_config_that_is_not_plain_data_is_refused_in_one_line(config):
    with pytest.raises(UntrustedCheckpointError, match="not plain data") as refused:
        check_data(config, "e.ckpt")
    assert "\n" not in str(refused.value) and str(refused.value).startswith("e.ckpt: config key ")


def test_plain_configs_pass():
    check_data({"model": {"_target_": "medexp.models.cnn.ClassicCNN", "num_classes": 2, "sizes": [1, 2.5],
                          "name": "a $ sign and {braces}", "none": None, "flag": True}}, "ok.ckpt")


def save(tmp_path: Path, config: dict, name: str = "c.ckpt") -> Path:
    path = tmp_path / name
    torch.save({"state_dict": {"net.w": torch.ones(2)}, "hyper_parameters": {"config": config},
                "optimizer_states": [{}], "loops": {}, "MyData": {"mean": [0.5]}}, path)
    return path


def test_read_checks_data_even_when_the_classes_are_trusted(tmp_path):
    path = save(tmp_path, {"evil": COPY, "model": {"_target_": "torch.nn.Identity", "n": "${evil}"}})
    with pytest.raises(UntrustedCheckpointError, match=r"model\.n"):
        checkpoints.read(path, trust=True)


def test_read_refuses_untrusted_classes_unless_allowed(tmp_path):
    path = save(tmp_path, {"model": {"_target_": "mypkg.Net"}})
    with pytest.raises(UntrustedCheckpointError, match="trusted_targets"):
        checkpoints.read(path)
    assert checkpoints.read(path, trusted_targets=["mypkg"])["state_dict"]["net.w"].sum() == 2


def test_read_network_takes_only_the_network_and_checks_the_config(tmp_path):
    weights = checkpoints.read_network(str(save(tmp_path, {"data": {"in_channels": 3}})))
    assert list(weights.state) == ["w"] and weights.in_channels == 3
    evil = save(tmp_path, {"data": {"in_channels": "${oc.env:HOME}"}}, "e.ckpt")
    with pytest.raises(UntrustedCheckpointError, match="model.pretrained="):
        checkpoints.read_network(str(evil))
    with pytest.raises(DataError, match="no such file"):
        checkpoints.read_network(str(tmp_path / "missing.ckpt"))


def test_resolve_paths_and_last(tmp_path):
    assert checkpoints.resolve("some/file.ckpt") == "some/file.ckpt"
    with pytest.raises(DataError, match="ckpt_path=last"):
        checkpoints.resolve("last", tmp_path)
    last = tmp_path / "checkpoints" / "last.ckpt"
    last.parent.mkdir()
    last.write_bytes(b"")
    assert checkpoints.resolve("last", tmp_path) == str(last)
    assert checkpoints.resolve_resume("last", tmp_path) == str(last)
    with pytest.raises(DataError, match="does not exist"):
        checkpoints.resolve_resume(str(tmp_path / "nope.ckpt"), tmp_path)


def test_members_of_an_ensemble():
    assert checkpoints.members("a.ckpt") == ["a.ckpt"]
    assert checkpoints.members(["a.ckpt", Path("b.ckpt")]) == ["a.ckpt", "b.ckpt"]
    with pytest.raises(ConfigError, match="names no checkpoint"):
        checkpoints.members([])


def test_slim_keeps_weights_config_and_data_state(tmp_path):
    ckpt = checkpoints.read(save(tmp_path, {"model": {}}), trust=True)
    slimmed = checkpoints.slim(ckpt, tmp_path / "slim.ckpt", "MyData")
    kept = torch.load(slimmed, weights_only=True)
    assert set(kept) == {"state_dict", "hyper_parameters", "MyData"}


def test_the_model_checkpoint_name_matches_the_mlflow_model_files():
    from medexp.export import CHECKPOINT

    assert checkpoints.MODEL_CHECKPOINT == CHECKPOINT


def test_trusted_targets_and_allowlist(tmp_path):
    from medexp.checkpoints import check_targets, is_trusted_target
    from medexp.errors import MedexpError

    assert is_trusted_target("monai.networks.nets.UNet") and is_trusted_target("torch.optim.Adam")
    assert is_trusted_target("medexp.tasks.detection.build_retinanet")
    assert not is_trusted_target("medexp.data.medmnist.download")  # a medexp function, but no builder: it writes
    assert not is_trusted_target("os.system") and not is_trusted_target("torch.nn.not_there")
    config = {"model": {"_target_": "mypkg.nets.Net"}, "task": {"loss": {"_target_": "torch.nn.CrossEntropyLoss"}}}
    with pytest.raises(MedexpError, match="model._target_='mypkg.nets.Net'"):
        check_targets(config, "x.ckpt")
    check_targets(config, "x.ckpt", trusted_targets=["mypkg"])  # allowed by package


def test_a_full_disk_leaves_the_previous_checkpoint_whole(tmp_path, monkeypatch):
    from medexp.checkpoints import AtomicCheckpointIO, CheckpointWriteError

    io = AtomicCheckpointIO()
    last = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"weights": torch.arange(1000)}, last)
    before = last.read_bytes()

    def disk_full(obj, file):  # writes part of the file, then the disk is full
        file.write(b"\0" * 4096)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(CheckpointWriteError) as error:
        io.save_checkpoint({"weights": torch.arange(2000)}, last)
    message = str(error.value)
    assert str(last.parent) in message and "free" in message and "\n" not in message
    assert last.read_bytes() == before  # resume still works from the previous one
    assert [p.name for p in last.parent.iterdir()] == ["last.ckpt"]  # no partial file left behind


SCRIPT = """
import json, resource, signal, sys, torch
from pathlib import Path
from medexp.checkpoints import CheckpointWriteError, atomic_torch_save
folder = Path(sys.argv[1])
atomic_torch_save({"weights": torch.arange(10.0)}, folder / "last.ckpt")  # the previous epoch's, small
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # past the limit a write fails (EFBIG) instead of killing us
resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))
try:
    atomic_torch_save({"weights": torch.zeros(1_000_000)}, folder / "last.ckpt")
    outcome = "written"
except CheckpointWriteError as error:
    outcome = str(error)
print(json.dumps(outcome))
"""


def test_a_checkpoint_that_does_not_fit_fails_in_one_line_and_keeps_the_previous_one(tmp_path):
    import torch

    done = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    message = json.loads(done.stdout.strip().splitlines()[-1])
    assert message.startswith(f"cannot write checkpoint last.ckpt in {tmp_path} (the write stopped part way;"), message
    assert "\n" not in message and "the previous checkpoints there are intact" in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]  # no .last.ckpt.<pid>.partial
    kept = torch.load(tmp_path / "last.ckpt", weights_only=True)
    assert torch.equal(kept["weights"], torch.arange(10.0))
