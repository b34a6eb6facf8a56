"""``medexp-train``: compose the config (Hydra), run the experiment, return its metrics to a sweeper.

Only Hydra is imported at module level, so ``--help`` and ``--cfg job`` stay fast.
"""
from __future__ import annotations

import sys
import time

LAUNCHED_AT = time.time()  # ~process start: this module is the first thing the console script imports

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from medexp.cli import user_errors  # noqa: E402
from medexp.hydra_setup import prepare_hydra  # noqa: E402
from medexp.planning.auto import auto_arguments  # noqa: E402 - light: the planner loads when asked

prepare_hydra()


@hydra.main(version_base="1.3", config_path="pkg://medexp.conf", config_name="train")
def train(cfg: DictConfig) -> dict:
    from medexp.workflows.train import run_experiment

    with user_errors():
        return run_experiment(cfg, launched_at=LAUNCHED_AT)


def main() -> None:
    """``experiment=auto`` plans first (``medexp.planning.auto``) and trains the written experiment; the budget then
    counts from the end of the planning."""
    global LAUNCHED_AT
    with user_errors():
        planned = auto_arguments(sys.argv[1:])
    if planned is not None:
        sys.argv[1:] = planned
        LAUNCHED_AT = time.time()
    train()


if __name__ == "__main__":
    main()
