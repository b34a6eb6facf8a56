"""In-memory classification data: batching and DDP sharding."""
from __future__ import annotations

import torch

from medexp.data.inmemory import IndexBatches


def test_index_batches_cover_eval_once_and_train_in_equal_shares():
    images, labels = torch.arange(103).float().view(-1, 1), torch.arange(103)
    seen = torch.cat([y for rank in range(2) for _, y in IndexBatches(images, labels, 10, shuffle=False, rank=rank,
                                                                         world_size=2)])
    assert sorted(seen.tolist()) == list(range(103))  # no padding, no duplicates
    shares = [list(IndexBatches(images, labels, 10, shuffle=True, rank=r, world_size=2)) for r in range(2)]
    assert len(shares[0]) == len(shares[1]) == len(IndexBatches(images, labels, 10, True, world_size=2))
    first = torch.cat([y for _, y in shares[0]])
    second = torch.cat([y for _, y in shares[1]])
    assert len(set(first.tolist()) & set(second.tolist())) == 0  # ranks see disjoint samples


def test_index_batches_reshuffle_per_epoch_and_repeat_per_seed():
    images, labels = torch.zeros(50, 1), torch.arange(50)
    epoch = {"n": 0}
    batches = IndexBatches(images, labels, 50, shuffle=True, seed=1, epoch=lambda: epoch["n"])
    first = next(iter(batches))[1]
    epoch["n"] = 1
    second = next(iter(batches))[1]
    epoch["n"] = 0
    assert not torch.equal(first, second) and torch.equal(first, next(iter(batches))[1])
