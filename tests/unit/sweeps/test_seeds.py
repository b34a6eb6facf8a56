"""Per-trial seeds: distinct, reproducible, and different between sweeps."""
from __future__ import annotations

from medexp.sweeps.seeds import sampler_seed, trial_seed


def test_trial_seeds_are_distinct_reproducible_and_differ_between_sweeps():
    seeds = [trial_seed(0, n) for n in range(100)]
    assert len(set(seeds)) == 100 and seeds == [trial_seed(0, n) for n in range(100)]
    assert set(seeds).isdisjoint(trial_seed(1, n) for n in range(100))
    assert sampler_seed(0, 0) != sampler_seed(0, 3)  # a resumed study samples anew
    assert all(0 <= s < 2**31 - 1 for s in seeds)
