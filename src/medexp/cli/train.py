"""``medexp-train``: compose the config (Hydra), run the experiment, return its metrics to a sweeper.

Only Hydra is imported at module level, so ``--help`` and ``--cfg job`` stay fast.
"""
from __future__ import annotations

import time

LAUNCHED_AT = time.time()  # ~process start: this module is the first thing the console script imports

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from medexp.cli import user_errors  # noqa: E402
from medexp.hydra_setup import prepare_hydra  # noqa: E402

prepare_hydra()


@hydra.main(version_base="1.3", config_path="pkg://medexp.conf", config_name="train")
def main(cfg: DictConfig) -> dict:
    from medexp.workflows.train import run_experiment

    with user_errors():
        return run_experiment(cfg, launched_at=LAUNCHED_AT)


if __name__ == "__main__":
    main()
