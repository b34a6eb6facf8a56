"""A run's beginning and end: config values checked before anything opens, and a signal turned into a saved
checkpoint and a non-zero exit.

Schedulers stop jobs with SIGTERM (Slurm, Kubernetes, ``docker stop``), wait a grace period, then SIGKILL; Slurm can
warn with SIGUSR1 before a time limit (``--signal=USR1@90``). Lightning notices SIGTERM only at batch boundaries
and then ends the process with exit code 0. ``SaveOnSignal`` makes both signals stop the loops at the next batch
boundary (within one step), saves ``last.ckpt`` there so ``ckpt_path=last`` resumes, and the training flow exits
with ``128 + signal`` (143 for SIGTERM), as a killed process does, after the tracking closer ended the run KILLED.
"""
from __future__ import annotations

import signal
from collections.abc import Mapping
from numbers import Integral, Real
from pathlib import Path
from typing import Any

import pytorch_lightning as pl

from medexp.distributed import requeue_slurm_job, slurm_job_id
from medexp.errors import ConfigError

HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class RunSignalled(SystemExit):
    """The run stopped on a signal: ``code`` is the exit status a process killed by it reports."""

    def __init__(self, signum: int):
        super().__init__(128 + signum)
        self.signum = signum


class SaveOnSignal(pl.Callback):
    """Stop at the next batch boundary on SIGTERM/SIGUSR1 and save ``<dirpath>/last.ckpt`` there (see module)."""

    def __init__(self, dirpath: Path):
        self.dirpath = Path(dirpath)
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        def handle(signum, frame):
            self.signum = signum
            # Lightning's own flag: its training and evaluation loops raise SIGTERMException at the next boundary
            trainer._signal_connector.received_sigterm = True

        for signum in HANDLED_SIGNALS:
            self._previous[signum] = signal.signal(signum, handle)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        from pytorch_lightning.trainer.states import TrainerFn
        from pytorch_lightning.utilities.exceptions import SIGTERMException

        # while fitting (its validation included); a stop during the final test leaves the checkpoints as they are
        fitting = trainer.state.fn == TrainerFn.FITTING
        if self.signum is not None and isinstance(exception, SIGTERMException) and fitting:
            trainer.save_checkpoint(self.dirpath / "last.ckpt")
            if self.signum == signal.SIGUSR1 and trainer.is_global_zero and slurm_job_id() is not None:
                requeue_slurm_job()  # Slurm's pre-timeout warning: back in the queue, to resume from last.ckpt

    def exit_status(self, exception: BaseException) -> RunSignalled | None:
        """What the flow should raise instead of Lightning's ``SIGTERMException`` (which exits 0)."""
        from pytorch_lightning.utilities.exceptions import SIGTERMException

        if isinstance(exception, SIGTERMException):
            return RunSignalled(self.signum or signal.SIGTERM)
        return None


# -- config values ------------------------------------------------------------------------------------------------
def _get(cfg: Mapping, dotted: str) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def _integer(value: Any) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)


def _number(value: Any) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)


def _duration(value: Any) -> bool:
    from medexp.callbacks.budget import parse_duration

    try:
        parse_duration(value)
    except ConfigError:
        return False
    return True


# (key, test, what it must be); a key the config does not have is not checked
VALUE_RULES = (
    ("trainer.max_epochs", lambda v: _integer(v) and (v >= 1 or v == -1), "a whole number >= 1 (or -1: no limit)"),
    ("trainer.min_epochs", lambda v: _integer(v) and v >= 0, "a whole number >= 0"),
    ("trainer.accumulate_grad_batches", lambda v: _integer(v) and v >= 1, "a whole number >= 1"),
    ("trainer.gradient_clip_val", lambda v: _number(v) and v >= 0, "a number >= 0 (or null: no clipping)"),
    ("data.batch_size", lambda v: _integer(v) and v >= 1, "a whole number >= 1"),
    ("data.num_workers", lambda v: _integer(v) and v >= 0, "a whole number >= 0"),
    ("optimizer.lr", lambda v: _number(v) and v > 0, "a number > 0, e.g. 1e-3"),
    ("optimizer.weight_decay", lambda v: _number(v) and v >= 0, "a number >= 0"),
    ("seed", _integer, "a whole number"),
    ("trainer.budget", _duration, "a duration such as 20m, 1.5h, 1h30m or 900 (seconds)"),
)


def check_config_values(cfg: Mapping) -> None:
    """Types and ranges of the values every run uses, checked before the run opens anything (MLflow included), so
    a typo is one line and leaves no empty FAILED run behind."""
    for key, valid, meaning in VALUE_RULES:
        value = _get(cfg, key)
        if value is not None and not valid(value):
            raise ConfigError(f"{key}={value!r} is not valid: it must be {meaning}")


def check_run_mode(cfg: Mapping) -> None:
    """``hparams_search=optuna`` without ``-m`` would quietly train once with the defaults: say so instead. (A DDP
    rank of a trial also runs in single-run mode, but carries its trial number.)"""
    from medexp.hydra_setup import in_multirun
    from medexp.sweeps import optuna_sweeper_config

    if optuna_sweeper_config() is not None and not in_multirun() and cfg.get("optuna_trial") is None:
        raise ConfigError("hparams_search=optuna searches over many runs: add -m (medexp-train -m "
                          "hparams_search=optuna ...)")


def check_task_fits_data(cfg) -> None:
    """A data set of one kind (classification, segmentation, detection) with a task of another fails deep inside
    the model or the loss; name the task (and a model) to pick instead."""
    from hydra.utils import get_class

    from medexp.data.detection import DetectionDataModule
    from medexp.data.inmemory import InMemoryClassificationDataModule
    from medexp.data.segmentation import SegmentationDataModule
    from medexp.tasks.classification import ClassificationTask
    from medexp.tasks.detection import DetectionTask
    from medexp.tasks.segmentation import SegmentationTask

    kinds = [  # (data base class, task class, what to choose), the most specific data class first
        (DetectionDataModule, DetectionTask, "task=detection model=retinanet"),
        (SegmentationDataModule, SegmentationTask, "task=segmentation model=unet (or another segmentation model)"),
        (InMemoryClassificationDataModule, ClassificationTask, "task=classification model=cnn (or resnet18, ...)"),
    ]
    try:
        data, task = get_class(str(cfg.data._target_)), get_class(str(cfg.task._target_))
    except Exception:  # a target of the user's own: nothing to compare it with
        return
    for data_class, task_class, choice in kinds:
        if issubclass(data, data_class):
            if not issubclass(task, task_class):
                raise ConfigError(f"data={_choice('data', cfg.data.get('name'))} is a {task_class.prediction_kind} data "
                                  f"set but the task is {task.__name__}: add {choice}")
            return


def _choice(group: str, default) -> str:
    """The option of ``group`` on the command line (``data=chasedb1``), as the user wrote it."""
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        return str(HydraConfig.get().runtime.choices.get(group, default))
    return str(default)
