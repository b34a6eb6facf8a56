"""Checkpoints: only trusted targets are instantiated, and a failed write leaves the previous file whole."""
from __future__ import annotations

import errno

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
