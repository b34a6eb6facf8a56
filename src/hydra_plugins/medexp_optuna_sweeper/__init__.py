"""medexp's Optuna sweeper for Hydra (current Optuna, pruning, resumable studies). Logic: ``medexp.sweeps``."""
