"""What each DDP rank of a file-based run reads and draws: its own share of the evaluation cases, its own seed.

Lightning gives a loader without a distributed sampler a ``DistributedSampler``, which pads the last shard with
repeated cases so that every rank takes as many steps: Dice, AUROC and mAP would then count those cases twice.
Evaluation loaders here come with Lightning's ``UnrepeatedDistributedSampler`` instead (shards differ by at most one
case, every case once; Lightning leaves a loader alone whose sampler is already a ``DistributedSampler``), and the
tasks gather per-case values or sum counts across ranks, never average per-rank means, so unequal shards reduce
exactly. Training keeps Lightning's padded sampler (every rank must take as many optimizer steps).
"""
from __future__ import annotations

import numpy as np
from torch.utils.data import Dataset, Sampler

from medexp.errors import DataError


def evaluation_sampler(dataset: Dataset, trainer, split: str) -> Sampler | None:
    """Every case of ``split`` once, in order, shared out across the DDP ranks of ``trainer``; None outside DDP."""
    kwargs = trainer.distributed_sampler_kwargs if trainer is not None else None
    ranks = kwargs.get("num_replicas", 1) if kwargs else 1
    if ranks <= 1:
        return None
    if 0 < len(dataset) < ranks:  # a rank without a case would skip the epoch's end, where the others gather
        raise DataError(f"the {split} split has {len(dataset)} case(s) for {ranks} DDP processes, which evaluate "
                        f"one case each at least: use trainer.devices={len(dataset)} or fewer, or more {split} cases")
    from pytorch_lightning.overrides.distributed import UnrepeatedDistributedSampler

    return UnrepeatedDistributedSampler(dataset, shuffle=False, **kwargs)


def rank_seed(seed: int, rank: int) -> int:
    """The seed of DDP rank ``rank``: ``seed`` itself on rank 0 (a one-process run draws what it always drew), a
    value mixed from both on the others, so ranks draw different crops and augmentations, and rank 1 of seed 0 does
    not replay rank 0 of seed 1 in a sweep over seeds."""
    if rank == 0:
        return int(seed)
    return int(np.random.SeedSequence([int(seed) % 2**32, int(rank)]).generate_state(1)[0])
