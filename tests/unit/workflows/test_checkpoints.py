"""Checkpoints: only trusted targets are instantiated, and a failed write leaves the previous file whole.

A checkpoint write that runs out of room (here a file size limit, as a full disk stops torch's zip writer)
fails in one line, leaves no ``.partial`` file and keeps the previous ``last.ckpt`` whole."""
from __future__ import annotations

import errno
import json
import subprocess
import sys

import pytest
import torch


def test_trusted_targets_and_allowlist(tmp_path):
    from medexp.errors import MedexpError
    from medexp.workflows.checkpoints import check_targets, is_trusted_target

    assert is_trusted_target("monai.networks.nets.UNet") and is_trusted_target("torch.optim.Adam")
    assert is_trusted_target("medexp.tasks.detection.build_retinanet")
    assert not is_trusted_target("medexp.data.medmnist.download")  # a medexp function, but no builder: it writes
    assert not is_trusted_target("os.system") and not is_trusted_target("torch.nn.not_there")
    config = {"model": {"_target_": "mypkg.nets.Net"}, "task": {"loss": {"_target_": "torch.nn.CrossEntropyLoss"}}}
    with pytest.raises(MedexpError, match="model._target_='mypkg.nets.Net'"):
        check_targets(config, "x.ckpt")
    check_targets(config, "x.ckpt", trusted_targets=["mypkg"])  # allowed by package


def test_a_full_disk_leaves_the_previous_checkpoint_whole(tmp_path, monkeypatch):
    from medexp.workflows.checkpoints import AtomicCheckpointIO, CheckpointWriteError

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
from medexp.workflows.checkpoints import CheckpointWriteError, atomic_torch_save
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
