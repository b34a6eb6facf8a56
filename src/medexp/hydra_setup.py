"""What Hydra must know before it composes medexp's configs; called by the entry points (and the tests).

- ``${medexp_cwd:}``: the working directory at launch, so paths are absolute even where Hydra's own
  ``${hydra:runtime.cwd}`` is not set yet (when a sweeper builds its sweep folder).
- medexp's Optuna sweeper: Hydra finds plugins by listing the ``hydra_plugins`` namespace, which an editable install
  hides; registering the class directly works for editable and regular installs alike.
"""
from __future__ import annotations

import os

from omegaconf import OmegaConf


def prepare_hydra() -> None:
    if not OmegaConf.has_resolver("medexp_cwd"):
        OmegaConf.register_new_resolver("medexp_cwd", os.getcwd, use_cache=True)
    from medexp.sweeps import register_optuna_sweeper

    register_optuna_sweeper()


def in_multirun() -> bool:
    """This job is one of a sweep (``-m``)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
