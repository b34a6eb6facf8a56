"""Seeds derived from the sweep seed, so trials differ from each other yet every sweep is reproducible."""
from __future__ import annotations

import hashlib

_SEED_BOUND = 2**31 - 1  # accepted by numpy, torch and Optuna's samplers alike


def derive_seed(base_seed: int, *parts: object) -> int:
    """A seed in ``[0, 2**31 - 1)`` determined by ``base_seed`` and ``parts`` alone.

    A hash rather than ``base_seed + n``: neighbouring sweeps (seed 0 and seed 1) must not share trial seeds.
    """
    text = ":".join(str(p) for p in (int(base_seed), *parts))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") % _SEED_BOUND


def trial_seed(sweep_seed: int, trial_number: int) -> int:
    """The training seed of trial ``trial_number`` of a sweep seeded with ``sweep_seed``."""
    return derive_seed(sweep_seed, "trial", trial_number)


def sampler_seed(sweep_seed: int, n_existing_trials: int) -> int:
    """The sampler's seed for a (re)started study: a resumed study must not replay the parameters it began with."""
    return derive_seed(sweep_seed, "sampler", n_existing_trials)
