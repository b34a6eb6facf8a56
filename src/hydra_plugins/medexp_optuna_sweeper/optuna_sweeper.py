"""The Hydra Sweeper class. Kept thin and free of Optuna imports: Hydra imports every plugin module at startup."""
from typing import Any

from hydra.plugins.launcher import Launcher
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

from .config import MedexpOptunaSweeperConf  # noqa: F401  (registers hydra/sweeper=medexp_optuna)


class MedexpOptunaSweeper(Sweeper):
    def __init__(self, **settings: Any) -> None:
        self.settings = {k: OmegaConf.to_container(v) if OmegaConf.is_config(v) else v for k, v in settings.items()}
        self.config: DictConfig | None = None
        self.launcher: Launcher | None = None
        self.hydra_context: HydraContext | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        from hydra.core.plugins import Plugins

        self.hydra_context = hydra_context
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> Any:
        from medexp.sweeps.optuna_loop import OptunaSweep

        assert self.config is not None and self.launcher is not None
        return OptunaSweep(self.settings, self.config, self.launcher, self.validate_batch_is_legal).run(arguments)
