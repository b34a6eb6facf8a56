"""DDP shares of a file-based data set: evaluation cases once each over unequal shards, a seed per rank."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from medexp.data.segmentation import SegmentationDataModule
from medexp.data.sharding import evaluation_sampler, rank_seed
from medexp.errors import DataError
from tests.fixtures_data import CHASE_DATALIST, write_chase_like


def ddp_trainer(rank: int, ranks: int = 2) -> SimpleNamespace:
    return SimpleNamespace(global_rank=rank, distributed_sampler_kwargs={"num_replicas": ranks, "rank": rank},
                           num_devices=ranks)  # all ranks on one machine


def test_seven_cases_on_two_ranks_are_each_evaluated_once():
    cases = list(range(7))
    shares = [list(evaluation_sampler(cases, ddp_trainer(rank), "test")) for rank in range(2)]
    assert [len(share) for share in shares] == [4, 3]  # unequal, not padded to 4 + 4
    assert sorted(shares[0] + shares[1]) == cases


def test_one_process_keeps_the_loaders_own_order():
    assert evaluation_sampler(list(range(7)), None, "val") is None
    assert evaluation_sampler(list(range(7)), SimpleNamespace(distributed_sampler_kwargs=None), "val") is None


def test_fewer_cases_than_processes_is_one_line_naming_the_fix():
    with pytest.raises(DataError, match=r"the val split has 1 case\(s\) for 2 DDP processes.*trainer.devices=1"):
        evaluation_sampler([0], ddp_trainer(0), "val")


def test_rank_zero_keeps_the_seed_and_other_ranks_get_their_own():
    assert rank_seed(7, 0) == 7
    assert len({rank_seed(7, rank) for rank in range(4)}) == 4
    assert rank_seed(0, 1) != rank_seed(1, 0)  # a sweep over seeds does not replay one run's rank in another


def one_training_image_module(root) -> SegmentationDataModule:
    write_chase_like(root, patients=(1, 2, 3))
    for path in root.glob("Image_01R*"):
        path.unlink()  # patient 01 keeps one image: the only training case, so batches differ by their crops only
    return SegmentationDataModule(
        CHASE_DATALIST, root=str(root), split={"kind": "patients", "test_patients": ["03"], "val_patients": ["02"]},
        patch_size=[16, 16], samples_per_image=4, batch_size=1, in_channels=3, validate=False, seed=0)


def first_patches(datamodule: SegmentationDataModule, trainer) -> torch.Tensor:
    datamodule.trainer = trainer
    return torch.as_tensor(next(iter(datamodule.train_dataloader()))["image"])


def test_two_ranks_draw_different_crops_and_rank_zero_what_one_process_draws(tmp_path):
    datamodule = one_training_image_module(tmp_path / "chase")
    assert len(datamodule.split.train) == 1
    alone = first_patches(datamodule, None)
    rank0, rank1 = (first_patches(datamodule, ddp_trainer(rank)) for rank in range(2))
    assert torch.equal(rank0, alone)
    assert not torch.equal(rank0, rank1)


def test_evaluation_loaders_share_the_cases_out_without_repeats(tmp_path):
    datamodule = one_training_image_module(tmp_path / "chase")
    ids = []
    for rank in range(2):
        datamodule.trainer = ddp_trainer(rank)
        ids += [case for batch in datamodule.val_dataloader() for case in batch["case_id"]]
    assert sorted(ids) == sorted(record["case_id"] for record in datamodule.split.val)
