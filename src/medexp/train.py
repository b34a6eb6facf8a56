"""``medexp-train``: compose the config (Hydra), run the experiment, return its metrics to a sweeper.

Only Hydra is imported at module level, so ``--help`` and ``--cfg job`` stay fast.
"""
from __future__ import annotations

import hydra
from omegaconf import DictConfig

from medexp.cli import user_errors


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> dict:
    from medexp.pipeline import run_experiment

    with user_errors():
        return run_experiment(cfg)


if __name__ == "__main__":
    main()
